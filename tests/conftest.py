"""Helpers and fakes shared by every test module: a free port, a poll with a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; a race with another process
    binding it before the test does is possible but rare)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 5.0,
    interval: float = 0.01,
    message: str | Callable[[], str] = "",
) -> float:
    """Poll `predicate()` until it is true; return the seconds it took.

    At the deadline the test fails with `message` (a string or a callable giving one, e.g. a
    daemon's log) instead of hanging the suite. `predicate` is tried once more at the deadline
    so a slow machine that gets there just in time still passes.
    """
    started = time.monotonic()
    deadline = started + timeout
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            if predicate():
                return time.monotonic() - started
            text = message() if callable(message) else message
            name = getattr(predicate, "__name__", repr(predicate))
            detail = f": {text}" if text else ""
            raise AssertionError(f"{name} not true within {timeout} s{detail}")
        time.sleep(interval)


# -- connection and dispatcher fakes (rpcd.session, rpcd.protocol, rpcd.dispatch tests) -------

import json  # noqa: E402
import struct  # noqa: E402

from twisted.internet.testing import StringTransport  # noqa: E402

from rpcd.dispatch import Call  # noqa: E402
from rpcd.stats import CallStats  # noqa: E402
from rpcd.wire import Response  # noqa: E402


class RecordingDispatcher:
    """Takes every call and holds it until the test finishes it; records cancels and wakes."""

    def __init__(self) -> None:
        self.submitted: list[Call] = []
        self.cancelled: list[Call] = []
        self.woken: list[Any] = []  # sinks passed to writable()
        self.lagged: list[Any] = []  # sinks passed to lagging()
        self.stats = CallStats()

    def submit(self, request: Any, sink: Any) -> Call:
        call = Call(request, None, sink)
        self.submitted.append(call)
        return call

    def cancel(self, call: Call, response: Response | None = None) -> bool:
        if call.done:
            return False
        self.cancelled.append(call)
        call.done = True
        if response is not None:
            call.sink.deliver(call, response)
        return True

    def writable(self, sink: Any) -> None:
        self.woken.append(sink)

    def lagging(self, sink: Any) -> None:
        self.lagged.append(sink)

    def finish(self, call: Call, result: Any = "ok") -> None:
        call.done = True
        call.sink.deliver(call, Response(call.request, result))

    def running(self) -> list[Call]:
        return [c for c in self.submitted if not c.done]

    def requests(self) -> list[tuple]:
        return [(c.request.method, c.request.params, c.request.id) for c in self.submitted]


class CollectingSink:
    """A dispatcher's sink that keeps what it is given: responses by request id, in order,
    and streamed items; `accept` says what stream() answers (False: the peer lags)."""

    peer = "127.0.0.1:4242"  # what the access line names

    def __init__(self) -> None:
        import gevent.event

        self.responses: dict[Any, Response] = {}
        self.delivered: list[Response] = []
        self.items: list[tuple[Any, Any]] = []
        self.accept = True
        self._arrived = gevent.event.Event()

    def deliver(self, call: Call, response: Response) -> None:
        assert call.request.id not in self.responses, "delivered twice"
        self.responses[call.request.id] = response
        self.delivered.append(response)
        self._arrived.set()

    def stream(self, call: Call, item: Any) -> bool:
        self.items.append((call.request.id, item))
        return self.accept

    def wait(self, rid: Any, timeout: float = 5.0) -> Response:
        import gevent

        with gevent.Timeout(timeout):
            while rid not in self.responses:
                self._arrived.clear()
                self._arrived.wait()
        return self.responses[rid]

    def wait_count(self, n: int, timeout: float = 5.0) -> list[Response]:
        import gevent

        with gevent.Timeout(timeout):
            while len(self.delivered) < n:
                self._arrived.clear()
                self._arrived.wait()
        return self.delivered


class BufferingTransport(StringTransport):
    """A StringTransport that, like Twisted's TCP transport, pauses its registered producer
    when unsent bytes pass `bufferSize` and resumes it once everything is written."""

    bufferSize = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unsent = 0
        self.producer_paused = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unsent += len(data)
        if self.producer is not None and not self.producer_paused and self.unsent > self.bufferSize:
            self.producer_paused = True
            self.producer.pauseProducing()

    def flush(self) -> None:
        """The peer read everything."""
        self.unsent = 0
        if self.producer is not None and self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def frame(obj: Any, fmt: str = "!I") -> bytes:
    """A length-prefixed frame of `obj` (bytes as they are, anything else as JSON)."""
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack(fmt, len(body)) + body


def unframe(data: bytes, fmt: str = "!I") -> list[Any]:
    """The JSON values of the whole frames in `data` (a partial frame fails the test)."""
    out = []
    while data:
        (n,) = struct.unpack(fmt, data[:4])
        assert len(data) >= 4 + n, "a partial frame was written"
        out.append(json.loads(data[4 : 4 + n]))
        data = data[4 + n :]
    return out
