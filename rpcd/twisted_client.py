"""Twisted client: `connect(reactor, endpoint)` gives a connection whose calls return Deferreds.

Replies fail with the blocking client's exception classes (`RemoteError` and its
subclasses, `ConnectionLost`, `ConnectFailed`). Cancelling a call's Deferred sends
`rpc.cancel` for it, so the server stops the work too.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import orjson
from twisted.internet import error as netError
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from rpcd.client import (
    CANCEL_METHOD,
    ConnectFailed,
    ConnectionLost,
    RemoteError,
    make_params,
    make_request,
)
from rpcd.wire import STREAM_METHOD


class RPCConnection(Int32StringReceiver):
    """One connection to rpcd; calls are multiplexed on it by id."""

    MAX_LENGTH = 256 * 1024 * 1024

    def __init__(self, byteorder: str = "big") -> None:
        if byteorder not in ("big", "little"):
            raise ValueError("byteorder must be 'big' or 'little'")
        if byteorder == "little":
            self.structFormat = "<I"
        self._ids = itertools.count(1)
        self._pending: dict[int, Deferred] = {}
        self._streams: dict[int, Callable[[Any], None]] = {}
        self._closed: Deferred = Deferred()
        self._lost: Failure | None = None

    # -- calls -------------------------------------------------------------------------------

    def callRemote(self, method: str, /, *args: Any, **kwargs: Any) -> Deferred:
        """Call `method`; the Deferred fires with its result or fails with a RemoteError."""
        return self._call(method, make_params(args, kwargs), None)

    def streamRemote(
        self, on_item: Callable[[Any], None], method: str, /, *args: Any, **kwargs: Any
    ) -> Deferred:
        """Call a streaming method: `on_item(item)` for each item, then the Deferred fires
        with the final result. Cancel the Deferred to stop the stream."""
        return self._call(method, make_params(args, kwargs), on_item)

    def notifyRemote(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Send a notification (no reply)."""
        self._send(make_request(method, make_params(args, kwargs)))

    def close(self) -> Deferred:
        """Close the connection; the Deferred fires once it is closed."""
        if self.transport is not None and self._lost is None:
            self.transport.loseConnection()
        return self.whenClosed()

    def whenClosed(self) -> Deferred:
        """A Deferred that fires (with None) when the connection closes."""
        d: Deferred = Deferred()
        if self._lost is not None:
            d.callback(None)
        else:
            self._closed.addBoth(lambda _: d.callback(None))
        return d

    def _call(self, method: str, params: Any, on_item: Callable[[Any], None] | None) -> Deferred:
        if self._lost is not None:
            return fail(ConnectionLost(f"connection lost: {self._lost.getErrorMessage()}"))
        call_id = next(self._ids)
        d = Deferred(lambda _: self._cancel(call_id))
        self._pending[call_id] = d
        if on_item is not None:
            self._streams[call_id] = on_item
        self._send(make_request(method, params, call_id))
        return d

    def _cancel(self, call_id: int) -> None:
        # The Deferred fails with CancelledError; the server's -32006 reply is dropped.
        self._streams.pop(call_id, None)
        if self._pending.pop(call_id, None) is not None and self._lost is None:
            self._send(make_request(CANCEL_METHOD, {"id": call_id}))

    def _send(self, request: Any) -> None:
        self.sendString(orjson.dumps(request))

    # -- replies -----------------------------------------------------------------------------

    def stringReceived(self, body: bytes) -> None:
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.transport.loseConnection()
            return
        for item in message if type(message) is list else (message,):
            if type(item) is dict:
                self._dispatch(item)

    def _dispatch(self, message: dict) -> None:
        if "method" in message:
            params = message.get("params")
            if message["method"] == STREAM_METHOD and isinstance(params, dict):
                on_item = self._streams.get(params.get("id"))
                if on_item is not None:
                    on_item(params.get("item"))
            return
        call_id = message.get("id")
        if call_id is None:
            if "error" in message:
                # Answers no call (refused connection, frame too large): fail them all.
                self._fail_all(Failure(RemoteError.from_object(message["error"])))
            return
        d = self._pending.pop(call_id, None)
        self._streams.pop(call_id, None)
        if d is None:
            return
        if "error" in message:
            d.errback(RemoteError.from_object(message["error"]))
        else:
            d.callback(message.get("result"))

    def lengthLimitExceeded(self, length: int) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        self._lost = reason
        message = reason.getErrorMessage() if reason is not None else "closed"
        if reason is not None and reason.check(netError.ConnectionDone):
            message = "closed by the server"
        self._fail_all(Failure(ConnectionLost(f"connection lost: {message}")))
        closed, self._closed = self._closed, Deferred()
        closed.callback(None)

    def _fail_all(self, failure: Failure) -> None:
        pending, self._pending = self._pending, {}
        self._streams.clear()
        for d in pending.values():
            d.errback(failure)


def connect(
    reactor: Any, endpoint: str | IStreamClientEndpoint, *, byteorder: str = "big"
) -> Deferred:
    """Connect to rpcd; the Deferred fires with an `RPCConnection` or fails with ConnectFailed.

    `endpoint` is a Twisted client endpoint string (`tcp:127.0.0.1:5354`, `unix:PATH`,
    `ssl:HOST:PORT`, `tls:...`) or an endpoint object.
    """
    text = endpoint if isinstance(endpoint, str) else repr(endpoint)
    if isinstance(endpoint, str):
        endpoint = clientFromString(reactor, endpoint)
    d = connectProtocol(endpoint, RPCConnection(byteorder))

    def failed(failure: Failure) -> Failure:
        value = failure.trap(netError.ConnectError) and failure.value
        if isinstance(value, netError.ConnectionRefusedError):
            reason = "connection refused"
        elif isinstance(value.osError, int):
            reason = os.strerror(value.osError).lower()
        else:
            reason = value.string or failure.getErrorMessage()
        raise ConnectFailed(text, reason)

    return d.addErrback(failed)
