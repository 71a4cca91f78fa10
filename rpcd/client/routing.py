"""Shared reply routing for every client: bytes -> messages -> the pending call each one answers.

Sans-IO: a client feeds received bytes to a `MessageReader` and hands each message to
`route` with its table of pending calls; nothing here reads a socket, waits or locks. A
pending call is any object with `on_item`, `on_result` and `on_error` (the blocking client's
slot, the Twisted client's Deferred holder, an asyncio future's).
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from rpcd import wire
from rpcd.client.errors import RemoteError

CANCEL_METHOD = "rpc.cancel"
# A reply larger than this is taken as a corrupt stream (the server's own limit is far lower).
MAX_REPLY_BYTES = 256 * 1024 * 1024
NOTHING: Any = object()  # `next_message` has no whole message yet


class Pending(Protocol):
    """A call waiting for its reply: what `route` hands that reply (or its items) to."""

    def on_item(self, item: Any) -> None: ...

    def on_result(self, result: Any) -> None: ...

    def on_error(self, error: RemoteError) -> None: ...


class BadReply(Exception):
    """The server sent what no rpcd server sends: the message names the likely cause."""


class ReplyTooLarge(BadReply):
    """A length prefix over the reader's limit; `length` is what it said."""

    def __init__(self, message: str, length: int, cause: str) -> None:
        super().__init__(message)
        self.length = length
        self.cause = cause  # the likely cause and its fix, or ""


def make_params(args: tuple, kwargs: dict) -> Any:
    """JSON-RPC params from a call's arguments: a list, an object, or None for none."""
    if args and kwargs:
        raise TypeError("JSON-RPC params are either positional or named, not both")
    if kwargs:
        return kwargs
    return list(args) if args else None


# What rpcd.wire encodes a request with (dict keys that are not strings become strings).
_DUMPS_OPTION = orjson.OPT_NON_STR_KEYS


def encode_call(method: str, params: Any, call_id: int | None = None) -> bytes:
    """The body of a request (`call_id` None: a notification): the bytes
    `rpcd.wire.encode_request` makes, built straight from `params` as `make_params` gives
    them (None, a list or tuple, or a dict) without that encoder's generic argument checks:
    it runs on every call a client makes."""
    if call_id is None:
        obj: dict = {"jsonrpc": "2.0", "method": method}
        if params is not None and params != ():
            obj["params"] = params
    elif params is None or params == ():
        obj = {"jsonrpc": "2.0", "method": method, "id": call_id}
    else:
        obj = {"jsonrpc": "2.0", "method": method, "params": params, "id": call_id}
    return orjson.dumps(obj, option=_DUMPS_OPTION)


def encode_cancel(call_id: int) -> bytes:
    """The body of the `rpc.cancel` notification for `call_id`."""
    return wire.encode_request(CANCEL_METHOD, {"id": call_id})


class MessageReader:
    """One connection's incoming side: frames (`rpcd.wire.FrameDecoder`) decoded as JSON."""

    __slots__ = ("decoder", "byteorder", "_unpack_from", "_drained")

    def __init__(self, max_frame_bytes: int = MAX_REPLY_BYTES, byteorder: str = "big") -> None:
        self.decoder = wire.FrameDecoder(max_frame_bytes, byteorder)
        self.byteorder = byteorder
        self._unpack_from = wire.frame_prefix(byteorder).unpack_from
        self._drained = True  # the decoder holds nothing (False: it may hold part of a frame)

    def receive(self, data: bytes) -> None:
        self._drained = False
        self.decoder.receive(data)

    def next_message(self) -> Any:
        """The next whole message, or NOTHING; BadReply if the stream cannot be rpcd's."""
        try:
            body = self.decoder.next_frame()
        except wire.FrameTooLarge as exc:
            cause = self._cause(exc)
            text = f"a reply of {exc.length} bytes exceeds the client's max_frame_bytes"
            raise ReplyTooLarge(f"{text}: {cause}" if cause else text, exc.length, cause) from None
        if body is None:
            return NOTHING
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadReply("the server sent a frame that is not JSON") from None

    def feed(self, data: bytes) -> list[Any]:
        """Buffer `data` and return every message it completes."""
        self._drained = False
        self.decoder.receive(data)
        messages = []
        while (message := self.next_message()) is not NOTHING:
            messages.append(message)
        self._drained = not self.decoder.buffered()
        return messages

    def feed_from(self, buffer: bytearray, size: int) -> list[Any]:
        """`feed` of the first `size` bytes of `buffer` (a receive buffer used again and again).

        A chunk that is exactly one whole frame with nothing buffered before it, as a reply to
        a serial caller is, is decoded straight from the buffer, without the decoder.
        """
        if self._drained and size >= 4:
            (length,) = self._unpack_from(buffer, 0)
            if length + 4 == size and length <= self.decoder.max_frame_bytes:
                try:
                    # A bytearray slice: orjson reads it twice as fast as a memoryview's.
                    return [orjson.loads(buffer[4:size])]
                except orjson.JSONDecodeError:
                    raise BadReply("the server sent a frame that is not JSON") from None
        return self.feed(memoryview(buffer)[:size].tobytes())

    def _cause(self, exc: wire.FrameTooLarge) -> str:
        foreign = wire.foreign_prefix(exc.prefix)
        if foreign == "TLS":
            return "it looks like TLS, so the server wants an ssl: endpoint"
        if foreign is not None:
            return f"it looks like {foreign}, so this is not an rpcd server"
        if wire.swapped_prefix(exc.prefix, exc.limit, self.byteorder):
            other = "little" if self.byteorder == "big" else "big"
            return (
                f"the length prefix looks {other}-endian, so the server runs with --byteorder "
                f"{other}; connect with byteorder={other!r} (rpcd-call --byteorder {other})"
            )
        return ""


def route(pending: dict[Any, Pending], message: Any) -> RemoteError | None:
    """Hand one message (a reply, a stream item, or a batch of replies) to its pending call.

    A reply is popped from `pending`; a reply for no pending call (one that timed out or was
    cancelled) is dropped. Returns the error of a reply that answers no call (the server
    refused the connection, or a frame was too large): it concerns every call, and the
    server closes the connection after it. Notifications other than `rpc.stream` are the
    caller's (the auth challenge); here they are ignored.
    """
    if type(message) is list:
        error = None
        for item in message:
            error = route(pending, item) or error
        return error
    if type(message) is not dict:
        return None
    if "method" in message:
        params = message.get("params")
        if message["method"] == wire.STREAM_METHOD and type(params) is dict:
            call_id = params.get("id")
            call = pending.get(call_id) if type(call_id) is int else None
            if call is not None:
                call.on_item(params.get("item"))
        return None
    call_id = message.get("id")
    if call_id is None:
        return RemoteError.from_object(message["error"]) if "error" in message else None
    call = pending.pop(call_id, None) if type(call_id) is int else None  # our ids are ints
    if call is None:
        return None
    if "error" in message:
        call.on_error(RemoteError.from_object(message["error"]))
    else:
        call.on_result(message.get("result"))
    return None
