"""Access lines: one log line per finished or refused call, noted on the hot path and
formatted in batches when the log flushes."""

from __future__ import annotations

import time
from typing import Any

import orjson
from twisted.logger import Logger, LogLevel, globalLogPublisher

from rpcd.logs.observer import FLUSH_LINES, LogFile
from rpcd.wire import METHOD_NOT_FOUND, log_text

ACCESS_NAMESPACE = "rpcd.access"
_FRACTION = [f".{n:03d}" for n in range(1000)]
MAX_CACHED = 1024  # method names whose line text is kept (registered ones: few)
_time = time.time

log = Logger(namespace="rpcd.logs")


class AccessLog:
    """The dispatcher's `on_complete` and `on_refused` hooks, writing into a `LogFile`.

    Access lines reach twistd's own observer (the terminal under `twistd -n`) once per
    flush, as one event: its formatting costs ~30 us a line, more than a whole ping call.
    Calls to a method in `quiet` (the health checks) get no line: rpc.stats counts them.
    """

    def __init__(self, out: LogFile, quiet: frozenset[str] = frozenset()) -> None:
        self.out = out
        self.quiet = quiet
        self._buffer = out.buffer  # the same list: flush empties it in place
        self._tick_starts = self._tick_ends = 0.0  # the millisecond `_head` was made for
        self._head = ""  # a text line's time, level and namespace
        # Method name -> its text in a line. Bounded: unknown names (a client can send many)
        # are escaped each time and never kept.
        self._methods: dict[str, str] = {}
        out.render = self.line
        out.on_flush = self._echo

    def access(self, call: Any, response: Any, duration: float) -> None:
        """One line per finished call: peer, method, id, duration in ms, outcome.

        The hot path: it only notes the facts; the flush formats them, in a batch. Calls run
        in the loop's thread, so there is no thread check.
        """
        try:
            request = call.request
            if request.method in self.quiet:
                return
            buffer = self._buffer
            buffer.append((_time(), call.sink.peer, request, duration, response.error))
            if self.out._timer is None or len(buffer) >= FLUSH_LINES:
                self.out.kick()
        except Exception:  # a log line must never fail a call
            log.failure("cannot write an access line")

    def refused(self, request: Any, sink: Any, error: Any) -> None:
        """The access line of a call refused before it ran (no such method, server busy)."""
        try:
            self.out.add((_time(), getattr(sink, "peer", "-"), request, 0.0, error))
        except Exception:
            log.failure("cannot write an access line")

    def line(self, facts: tuple) -> str:
        """The access line of noted facts, in the log file's format."""
        now, peer, request, duration, error = facts
        try:
            name = request.method
            method = self._methods.get(name)
            if method is None:
                method = self._method_text(name, error)
            rid = request.id
            if type(rid) is not int:
                rid = "-" if rid is None else log_text(orjson.dumps(rid).decode())
            us = int(duration * 1e6)
            if self.out.json:
                return self._json_line(facts, method, rid, us)
            if not self._tick_starts <= now < self._tick_ends:  # a time string per millisecond
                self._new_tick(now)
            if error is None:
                return (
                    f"{self._head}{peer} {method} id={rid} "
                    f"{us // 1000}{_FRACTION[us % 1000]} ms ok\n"
                )
            return (
                f"{self._head}{peer} {method} id={rid} "
                f"{us // 1000}{_FRACTION[us % 1000]} ms {error.code}\n"
            )
        except Exception as exc:
            return f"{self.out.time_text(now)} error [rpcd.logs] bad access line: {exc!r}\n"

    def _new_tick(self, now: float) -> None:
        tick = int(now * 1000)
        self._tick_starts, self._tick_ends = tick / 1000, (tick + 1) / 1000
        self._head = f"{self.out.time_text(now)} info [rpcd.access] "

    def _json_line(self, facts: tuple, method: str, rid: Any, us: int) -> str:
        now, peer, request, _, error = facts
        outcome = "ok" if error is None else error.code
        extra = {
            "peer": peer,
            "method": request.method,
            "id": request.id,
            "ms": us / 1000,
            "outcome": str(outcome),
        }
        text = f"{peer} {method} id={rid} {us // 1000}{_FRACTION[us % 1000]} ms {outcome}"
        return self.out.line(now, "info", ACCESS_NAMESPACE, text, extra)

    def _method_text(self, name: str, error: Any) -> str:
        """A method name as a line shows it; kept for the next line if the name is a
        registered method's (a refusal for an unknown name is the only way others arrive)."""
        text = name
        if not name.isprintable() or " " in name:
            # A client's name must not forge a line: JSON-quoted, and the line breaks JSON
            # leaves raw (U+2028, U+2029, U+0085) escaped too.
            text = log_text(orjson.dumps(name).decode())
        if (error is None or error.code != METHOD_NOT_FOUND) and len(self._methods) < MAX_CACHED:
            self._methods[name] = text
        return text

    def _echo(self, lines: list[str]) -> None:
        """Hand the access lines of this flush to the other observers, as one event."""
        globalLogPublisher(
            {
                "log_level": LogLevel.info,
                "log_namespace": ACCESS_NAMESPACE,
                "log_format": "{calls}",
                "log_time": time.time(),
                "log_source": None,
                "calls": "".join(lines).rstrip("\n"),
                "rpcd_written": True,  # already in the file, line by line
            }
        )
