"""Sans-IO codec: frame bodies <-> typed JSON-RPC 2.0 and legacy messages, and the error codes.

Nothing here imports Twisted or gevent or touches a socket: bytes in, values out, values in,
bytes out. `decode` raises only `RPCError`; `encode` never raises on a value it was given
as a result (an unencodable result becomes an internal-error response).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from typing import Any

import orjson
from orjson import JSONDecodeError
from orjson import dumps as _orjson_dumps
from orjson import loads as _loads

# JSON-RPC 2.0 standard codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# rpcd server codes (the -32000..-32099 range JSON-RPC leaves to servers).
SERVER_BUSY = -32000
CALL_TIMEOUT = -32001
TOO_MANY_CONNECTIONS = -32002
NOT_AUTHENTICATED = -32003
FRAME_TOO_LARGE = -32004
SHUTTING_DOWN = -32005
# Not a JSON-RPC standard code: the final answer of a call the client cancelled.
CANCELLED = -32006

# Method name of the notifications that carry a streaming call's items.
STREAM_METHOD = "rpc.stream"

_NO_ID = object()  # marks a request that has no "id" member: a notification
# Method names longer than this (in UTF-8 bytes) are refused, the name cut short (Redis: 128).
MAX_METHOD_BYTES = 128
# Integers orjson reads exactly; beyond them it reads a float, which would change an id.
_INT_IDS = "an integer from -9223372036854775808 to 18446744073709551615"
# The spec allows any Number as an id (fractions are discouraged, not forbidden); not a bool.
_ID_TYPES = (str, int, float)


class RPCError(Exception):
    """A JSON-RPC error: what went wrong, as the peer will see it.

    `request_id` is the id of the request it answers, when the request got far enough to have
    one; `legacy` says the request used the legacy envelope, so the error goes back in it.
    """

    def __init__(
        self,
        code: int,
        message: str,
        data: Any = None,
        request_id: Any = None,
        legacy: bool = False,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.data = data
        self.request_id = request_id
        self.legacy = legacy

    def __repr__(self) -> str:
        return f"RPCError({self.code}, {self.message!r})"

    def to_object(self) -> dict:
        error = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class FrameTooLarge(RPCError):
    """A length prefix over the decoder's limit; `length` is what the prefix said.

    `prefix` keeps the four raw bytes, so the side that reports it can name the likely
    cause (`likely_cause`): a byte-order mismatch, or a peer that is not speaking rpcd.
    """

    def __init__(self, length: int, limit: int, prefix: bytes = b"") -> None:
        super().__init__(
            FRAME_TOO_LARGE, f"frame too large: {length} bytes exceeds max_frame_bytes {limit}"
        )
        self.length = length
        self.limit = limit
        self.prefix = prefix

    def likely_cause(self, byteorder: str = "big") -> str | None:
        """What the oversized prefix most likely means, or None if it looks like a real size."""
        return prefix_cause(self.prefix, self.limit, byteorder)


# Prefixes of other protocols that a confused peer sends (an HTTP probe, a TLS handshake).
_FOREIGN_PREFIXES = (
    (b"GET ", "an HTTP request"),
    (b"POST", "an HTTP request"),
    (b"HEAD", "an HTTP request"),
    (b"PUT ", "an HTTP request"),
    (b"OPTI", "an HTTP request"),
    (b"DELE", "an HTTP request"),
    (b"PATC", "an HTTP request"),
    (b"CONN", "an HTTP request"),
    (b"PRI ", "an HTTP/2 preface"),
    (b"HTTP", "an HTTP response"),
    (b"PROX", "a PROXY protocol v1 header"),
    (b"\r\n\r\n", "a PROXY protocol v2 header"),
    (b"SSH-", "an SSH banner"),
)


def foreign_prefix(prefix: bytes) -> str | None:
    """What another protocol's first four bytes are ("an HTTP request", "TLS"), or None."""
    for start, what in _FOREIGN_PREFIXES:
        if prefix.startswith(start):
            return what
    # A TLS record: handshake, alert or application data, version 3.x.
    if len(prefix) >= 2 and prefix[0] in (0x15, 0x16, 0x17) and prefix[1] == 3:
        return "TLS"
    return None


def swapped_prefix(prefix: bytes, limit: int, byteorder: str = "big") -> bool:
    """Whether an oversized prefix reads as a size within `limit` in the other byte order.

    A small size packed the other way round puts its low byte first: the reading in our
    order is then at least 2**24, and the reading the other way a size within the limit.
    """
    if len(prefix) < 4:
        return False
    other = "little" if byteorder == "big" else "big"
    return (
        int.from_bytes(prefix[:4], byteorder) >= 1 << 24
        and int.from_bytes(prefix[:4], other) <= limit
    )


def prefix_cause(prefix: bytes, limit: int, byteorder: str = "big") -> str | None:
    """Name what an oversized 4-byte length prefix most likely is, for an error message.

    "looks like an HTTP request, not an rpcd frame" when the bytes spell one; "looks like
    TLS ..." for a TLS record; "the length prefix looks little-endian ..." (or big-endian)
    when, read the other way round, it is a size within `limit`. None: no better guess.
    """
    foreign = foreign_prefix(prefix)
    if foreign == "TLS":
        return "looks like TLS: one side uses ssl: and the other does not"
    if foreign is not None:
        return f"looks like {foreign}, not an rpcd frame"
    if swapped_prefix(prefix, limit, byteorder):
        other = "little" if byteorder == "big" else "big"
        return f"the length prefix looks {other}-endian: set the byte order to match the peer"
    return None


_PREFIX = {"big": struct.Struct("!I"), "little": struct.Struct("<I")}
# Each Struct's unpack_from, made once: every decoder shares it instead of holding a bound
# method of its own (72 bytes a connection).
_UNPACK_FROM = {byteorder: prefix.unpack_from for byteorder, prefix in _PREFIX.items()}


def frame_prefix(byteorder: str = "big") -> struct.Struct:
    """The 4-byte length prefix of a frame in `byteorder`, as a Struct (to pack it per frame)."""
    try:
        return _PREFIX[byteorder]
    except KeyError:
        raise ValueError("byteorder must be 'big' or 'little'") from None


def encode_frame(body: bytes, byteorder: str = "big") -> bytes:
    """A frame: the 4-byte length prefix in `byteorder`, then `body`."""
    return frame_prefix(byteorder).pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder of length-prefixed frames: bytes in (`receive`), bodies out.

    Used by the server's connections and every client. Received chunks are queued and
    joined only when the frame they complete needs them, so a large frame arriving in many
    pieces is copied once (not once per piece), and a chunk holding many whole frames is
    walked by offset without copying the rest. A chunk that arrives with nothing else
    buffered becomes the buffer as it is, and the buffer is let go once every frame in it is
    taken: an idle connection's decoder holds no bytes and no list. `max_frame_bytes` may
    be changed at any time (the auth phase lowers it); it applies to the next prefix read.
    """

    __slots__ = ("max_frame_bytes", "_unpack", "_buffer", "_offset", "_parts", "_queued")

    def __init__(self, max_frame_bytes: int, byteorder: str = "big") -> None:
        self.max_frame_bytes = max_frame_bytes
        frame_prefix(byteorder)  # a ValueError for an unknown byte order
        self._unpack = _UNPACK_FROM[byteorder]
        self._buffer = b""  # walked from _offset
        self._offset = 0
        self._parts: list[bytes] | None = None  # received after _buffer, not yet joined to it
        self._queued = 0  # their total length

    def receive(self, data: bytes) -> None:
        """Buffer `data`; take the frames it completes with `next_frame`."""
        if not data:
            return
        parts = self._parts
        if parts is None:
            if self._offset == len(self._buffer):
                # Nothing else buffered (the usual case): the chunk is the buffer.
                self._buffer = data
                self._offset = 0
                return
            self._parts = [data]
        else:
            parts.append(data)
        self._queued += len(data)

    def next_frame(self) -> bytes | None:
        """The next whole frame body, or None until more bytes arrive.

        Raises FrameTooLarge, and drops everything buffered, as soon as a prefix says more
        than `max_frame_bytes`: the body is never waited for.
        """
        # The common case first, with nothing but locals: a whole frame already joined.
        buffer = self._buffer
        offset = self._offset
        start = offset + 4  # where the body begins (the prefix is 4 bytes)
        if start <= len(buffer):
            (length,) = self._unpack(buffer, offset)
            end = start + length
            if end <= len(buffer) and length <= self.max_frame_bytes:
                self._offset = end
                return buffer[start:end]
        return self._next_frame_slow()

    def messages(
        self, max_batch: int = 100, max_method_bytes: int = MAX_METHOD_BYTES
    ) -> Iterator[Message | RPCError]:
        """What `decode` makes of each whole frame buffered, in order: the Request or Batch,
        or the RPCError a body decoded to (given, not raised: the loop can go on). Raises
        FrameTooLarge as `next_frame` does. For the server's loop over a chunk's frames: a
        generator resumed costs less than a call per frame, and the usual call is decoded in
        line, decode's own fast path over again (tests hold the two to the same answers).
        The loop may stop after any message: the next frame stays buffered."""
        unpack = self._unpack
        short = max_method_bytes >> 2  # a name of at most this many characters fits
        while True:
            buffer = self._buffer
            offset = self._offset
            size = len(buffer)
            start = offset + 4
            while start <= size:
                (length,) = unpack(buffer, offset)
                end = start + length
                if end > size or length > self.max_frame_bytes:
                    break
                self._offset = offset = end
                body = buffer[start:end]
                try:
                    obj = _loads(body)
                except JSONDecodeError as exc:
                    message = _parse_error(exc)
                else:
                    message = None
                    if type(obj) is dict and len(obj) == 4:
                        try:
                            rid = obj["id"]
                            method = obj["method"]
                            params = obj["params"]
                            version = obj["jsonrpc"]
                        except KeyError:
                            pass
                        else:
                            kind = type(rid)
                            if (
                                (kind is int or kind is str)
                                and version == "2.0"
                                and type(method) is str
                                and len(method) <= short
                            ):
                                kind = type(params)
                                if kind is list or kind is dict:
                                    message = _new(Request)
                                    message.method = method
                                    message.params = tuple(params) if kind is list else params
                                    message.id = rid
                                    message.notification = False
                                    message.legacy = False
                    if message is None:
                        try:
                            message = _message(obj, max_batch, max_method_bytes)
                        except RPCError as error:
                            message = error
                yield message
                if self._offset != offset or self._buffer is not buffer:
                    # Read, cleared or refilled meanwhile (the offset alone may match by
                    # chance in a new buffer): start again from where the decoder is.
                    break
                start = offset + 4
            else:
                if offset == size and self._parts is None:
                    # Every frame taken and nothing queued (the usual end of a chunk): let
                    # the chunk go, as _next_frame_slow would, without the call.
                    self._buffer = b""
                    self._offset = 0
                    return
            body = self._next_frame_slow()
            if body is None:
                return
            try:
                message = decode(body, max_batch, max_method_bytes)
            except RPCError as error:
                message = error
            yield message

    def _next_frame_slow(self) -> bytes | None:
        while True:
            buffer = self._buffer
            offset = self._offset
            available = len(buffer) - offset
            if available >= 4:
                (length,) = self._unpack(buffer, offset)
                if length > self.max_frame_bytes:
                    prefix = bytes(buffer[offset : offset + 4])
                    self.clear()
                    raise FrameTooLarge(length, self.max_frame_bytes, prefix)
                end = offset + 4 + length
                if end <= len(buffer):
                    self._offset = end
                    return buffer[offset + 4 : end]
                needed = 4 + length
            else:
                if available == 0 and self._parts is None:
                    if buffer:
                        self._buffer = b""  # every frame taken: let the chunk go
                        self._offset = 0
                    return None
                needed = 4
            if available + self._queued < needed:
                return None
            self._join(buffer, offset)

    def _join(self, buffer: bytes, offset: int) -> None:
        parts = self._parts  # not None: what is queued completes the frame needed
        if offset < len(buffer):
            parts.insert(0, buffer[offset:])
        self._buffer = parts[0] if len(parts) == 1 else b"".join(parts)
        self._offset = 0
        self._parts = None
        self._queued = 0

    def buffered(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self._buffer) - self._offset + self._queued

    def take_buffered(self) -> bytes:
        """Everything received and not yet returned, emptying the decoder (to hand it on)."""
        data = self._buffer[self._offset :] + b"".join(self._parts or ())
        self.clear()
        return data

    def clear(self) -> None:
        """Drop everything buffered."""
        self._buffer = b""
        self._offset = 0
        self._parts = None
        self._queued = 0


class Request:
    """One call. `params` is a tuple (positional) or a dict (named).

    Plain `__slots__` classes, not frozen dataclasses: these are built once per call, and a
    frozen dataclass's `__init__` (through `object.__setattr__`) costs about a microsecond.
    Treat them as immutable all the same.
    """

    __slots__ = ("method", "params", "id", "notification", "legacy")

    def __init__(
        self,
        method: str,
        params: tuple | dict,
        id: Any = None,
        notification: bool = False,
        legacy: bool = False,
    ) -> None:
        self.method = method
        self.params = params
        self.id = id
        self.notification = notification
        self.legacy = legacy

    def _key(self) -> tuple:
        return (self.method, self.params, self.id, self.notification, self.legacy)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Request:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Request(method={self.method!r}, params={self.params!r}, id={self.id!r}, "
            f"notification={self.notification!r}, legacy={self.legacy!r})"
        )


# Builds a Request (or a dispatcher's Call) without calling its __init__, the per-call path
# setting the slots itself: a class with a Python __init__ is called through type.__call__
# and slot_tp_init, which under callgrind cost about 1,500 instructions an object.
_new = object.__new__


class Batch:
    """A JSON-RPC batch: each item a Request, or the RPCError that its entry decoded to."""

    __slots__ = ("items",)

    def __init__(self, items: tuple[Request | RPCError, ...]) -> None:
        self.items = items

    def __eq__(self, other: object) -> bool:
        if type(other) is not Batch:
            return NotImplemented
        return self.items == other.items

    def __hash__(self) -> int:
        return hash(self.items)

    def __repr__(self) -> str:
        return f"Batch(items={self.items!r})"


class Response:
    """The answer to one Request: exactly one of `result` and `error` is meaningful."""

    __slots__ = ("request", "result", "error")

    def __init__(self, request: Request, result: Any = None, error: RPCError | None = None) -> None:
        self.request = request
        self.result = result
        self.error = error

    def __eq__(self, other: object) -> bool:
        if type(other) is not Response:
            return NotImplemented
        return (self.request, self.result, self.error) == (other.request, other.result, other.error)

    def __hash__(self) -> int:
        return hash((self.request, self.error))

    def __repr__(self) -> str:
        return f"Response(request={self.request!r}, result={self.result!r}, error={self.error!r})"


Message = Request | Batch


def decode(body: bytes, max_batch: int = 100, max_method_bytes: int = MAX_METHOD_BYTES) -> Message:
    """Decode one frame body to a Request or Batch; raise RPCError if it cannot be answered.

    A method name over `max_method_bytes` (UTF-8) is refused -32600 with the name cut short.
    """
    try:
        obj = _loads(body)
    except JSONDecodeError as exc:
        raise _parse_error(exc) from None
    if type(obj) is dict:  # orjson makes plain dicts and lists: no isinstance needed
        if len(obj) == 4:
            # The usual call has exactly these four members: read by subscript (cheaper than
            # .get), checked in as few steps as it can be; anything else takes _request.
            try:
                rid = obj["id"]
                method = obj["method"]
                params = obj["params"]
                version = obj["jsonrpc"]
            except KeyError:
                return _request(obj, max_method_bytes)
            kind = type(rid)
            if (
                (kind is int or kind is str)  # a bool is neither; an int orjson read is in range
                and version == "2.0"
                and type(method) is str
                and len(method) <= max_method_bytes >> 2  # a character is at most 4 bytes
            ):
                kind = type(params)
                if kind is list or kind is dict:
                    # Request(method, params, rid) without its __init__ (see _new).
                    request = _new(Request)
                    request.method = method
                    request.params = tuple(params) if kind is list else params
                    request.id = rid
                    request.notification = False
                    request.legacy = False
                    return request
    return _message(obj, max_batch, max_method_bytes)


def _parse_error(exc: JSONDecodeError) -> RPCError:
    # orjson refuses invalid UTF-8, unpaired surrogates, NaN/Infinity and nesting deeper than
    # 1024, so no RecursionError can escape. (Integers beyond 64 bits it reads as floats,
    # which JSON allows: RFC 8259 section 6.)
    return RPCError(PARSE_ERROR, f"parse error: {exc}")


def _message(obj: Any, max_batch: int, max_method_bytes: int) -> Message:
    """What decode makes of a parsed body that is not the usual call."""
    if type(obj) is dict:
        return _request(obj, max_method_bytes)
    if type(obj) is list:
        if not obj:
            raise RPCError(INVALID_REQUEST, "invalid request: empty batch")
        if len(obj) > max_batch:
            raise RPCError(
                INVALID_REQUEST,
                f"invalid request: batch of {len(obj)} exceeds max_batch {max_batch}",
            )
        items: list[Request | RPCError] = []
        for entry in obj:
            try:
                if type(entry) is not dict or ("in" in entry and "jsonrpc" not in entry):
                    raise RPCError(INVALID_REQUEST, "invalid request: batch entry is not a request")
                items.append(_request(entry, max_method_bytes))
            except RPCError as err:
                items.append(err)
        return Batch(tuple(items))
    raise RPCError(
        INVALID_REQUEST, f"invalid request: expected an object, got {type(obj).__name__}"
    )


def _request(obj: dict, max_method_bytes: int) -> Request:
    # A request without params or id, or with other members, first in as few steps as it can
    # be checked; anything else takes the checks of _odd_request, in the order that decides
    # which error an odd request gets.
    version = obj.get("jsonrpc")
    if version is None and "in" in obj and "jsonrpc" not in obj:
        return _legacy_request(obj, max_method_bytes)
    rid = obj.get("id", _NO_ID)
    method = obj.get("method")
    kind = type(rid)
    if (
        (kind is int or kind is str)
        and version == "2.0"
        and type(method) is str
        and len(method) <= max_method_bytes >> 2  # a character is at most 4 bytes
    ):
        params = obj.get("params", ())
        if type(params) is list:
            return Request(method, tuple(params), rid)
        if type(params) is dict or params == ():
            return Request(method, params, rid)
    return _odd_request(obj, max_method_bytes)


def _odd_request(obj: dict, max_method_bytes: int) -> Request:
    rid = obj.get("id", _NO_ID)
    notification = rid is _NO_ID
    if notification:
        rid = None
    elif rid is not None and type(rid) not in _ID_TYPES:
        raise RPCError(INVALID_REQUEST, "invalid request: id must be a string, number or null")
    elif type(rid) is float and not -(2**63) < rid < 2**64 and rid.is_integer():
        # orjson read an integer beyond 64 bits as this float: answering it changes the id.
        raise RPCError(
            INVALID_REQUEST,
            f"invalid request: id {rid:.0f} is out of range; rpcd accepts a string, {_INT_IDS}, "
            "or a fraction",
        )
    if obj.get("jsonrpc") != "2.0":
        raise RPCError(INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"', request_id=rid)
    method = obj.get("method")
    if type(method) is not str:
        raise RPCError(
            INVALID_REQUEST, 'invalid request: "method" must be a string', request_id=rid
        )
    if len(method) > max_method_bytes >> 2:  # cheap first: a character is at most 4 bytes
        _check_method(method, max_method_bytes, rid, False)
    params = obj.get("params", ())
    if type(params) is list:
        params = tuple(params)
    elif type(params) is not dict and params != ():
        raise RPCError(
            INVALID_REQUEST, 'invalid request: "params" must be an array or object', request_id=rid
        )
    return Request(method, params, rid, notification)


def _legacy_request(obj: dict, max_method_bytes: int) -> Request:
    method = obj["in"]
    if type(method) is not str:
        raise RPCError(INVALID_REQUEST, 'invalid request: "in" must be a string', legacy=True)
    if len(method) > max_method_bytes >> 2:
        _check_method(method, max_method_bytes, None, True)
    params = (obj["params"],) if "params" in obj else ()
    return Request(method, params, None, False, True)


def _check_method(method: str, limit: int, rid: Any, legacy: bool) -> None:
    size = len(method.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise RPCError(
            INVALID_REQUEST,
            f"invalid request: method name over max_method_bytes {limit}: "
            f"{log_text(method, limit)}",
            request_id=rid,
            legacy=legacy,
        )


# -- text bound for answers and log lines -------------------------------------------------------


def cut(text: str, limit: int = MAX_METHOD_BYTES) -> str:
    """`text` if it fits in `limit` UTF-8 bytes, else its first `limit` bytes (never half a
    character) and a visible marker giving the full size: `abc...[6 bytes, cut]`."""
    if len(text) <= limit >> 2:
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    head = data[:limit].decode("utf-8", "ignore")
    return f"{head}...[{len(data)} bytes, cut]"


def _escape(char: str) -> str:
    code = ord(char)
    if char in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def log_text(text: str, limit: int | None = None) -> str:
    """Client text made safe for one log line: cut to `limit` bytes (see `cut`), and every
    character that is not printable escaped (`\\n`, `\\x0b`, `\\u2028`...), so no line break
    of any kind (those `str.splitlines` splits at included) can forge a line.

    Call it on anything a client chose (method names, string ids, PROXY addresses, error
    messages that quote them) before it reaches a log line.
    """
    if limit is not None:
        text = cut(text, limit)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _reply_name(request: Request) -> str:
    return "pong" if request.method == "ping" else request.method


_NON_STR_KEYS = orjson.OPT_NON_STR_KEYS


def _dumps(obj: Any) -> bytes:
    return _orjson_dumps(obj, option=_NON_STR_KEYS)


def response_object(response: Response) -> dict:
    """The JSON object for a Response, in the envelope its request used."""
    request = response.request
    if request.legacy:
        if response.error is not None:
            return {"out": "error", "result": response.error.to_object()}
        return {"out": _reply_name(request), "result": response.result}
    if response.error is not None:
        return {"jsonrpc": "2.0", "error": response.error.to_object(), "id": request.id}
    return {"jsonrpc": "2.0", "result": response.result, "id": request.id}


def encode(response: Response, max_bytes: int | None = None) -> bytes:
    """Encode a Response to a frame body. A result JSON cannot carry becomes -32603: not
    serializable, NaN or Infinity, or (with `max_bytes`) a body over the reply limit."""
    request = response.request
    if response.error is None and not request.legacy:
        # The usual answer, in as few steps as it can be checked; the rest take _encode.
        result = response.result
        try:
            # Without OPT_NON_STR_KEYS first: orjson writes dicts with only string keys
            # faster so, and refuses any other key (TypeError), which _encode writes.
            body = _orjson_dumps({"jsonrpc": "2.0", "result": result, "id": request.id})
        except TypeError:
            return _encode(response, max_bytes)
        # orjson writes NaN and Infinity as null: look for them only where a null was written,
        # in a result that can hold a float. (bytes.find, not `in`: `in` first tries its
        # operand as an int, and the TypeError it raises and formats inside costs as much as
        # the dumps.)
        if type(result) in _FLOAT_FREE or body.find(b"null") < 0 or not _non_finite(result):
            if max_bytes is None or len(body) <= max_bytes:
                return body
    return _encode(response, max_bytes)


def _encode(response: Response, max_bytes: int | None) -> bytes:
    try:
        body = _dumps(response_object(response))
    except TypeError as exc:
        return _dumps(response_object(_unencodable(response, exc)))
    if (
        response.error is None
        and type(response.result) not in _FLOAT_FREE
        and body.find(b"null") >= 0
        and _non_finite(response.result)
    ):
        return _dumps(response_object(_non_finite_error(response)))
    if max_bytes is not None and len(body) > max_bytes:
        return _dumps(response_object(_too_large(response, len(body), max_bytes)))
    return body


def encode_batch(responses: list[Response], max_bytes: int | None = None) -> bytes:
    """Encode the responses to one batch as a JSON array.

    With `max_bytes`, results are replaced by -32603, largest first, until the array fits.
    """
    bodies = [encode(response, max_bytes) for response in responses]
    if max_bytes is not None:
        total = sum(map(len, bodies)) + len(bodies) + 1
        for i in sorted(range(len(bodies)), key=lambda i: len(bodies[i]), reverse=True):
            if total <= max_bytes:
                break
            if responses[i].error is not None:
                continue
            smaller = _dumps(
                response_object(_too_large(responses[i], len(bodies[i]), max_bytes, batch=True))
            )
            total -= len(bodies[i]) - len(smaller)
            bodies[i] = smaller
    return b"[" + b",".join(bodies) + b"]"


# Results that cannot hold a NaN or an infinity (exact types: a subclass may be anything).
_FLOAT_FREE = frozenset({str, int, bool, type(None)})


def _non_finite(value: Any) -> bool:
    """Whether a NaN or an infinity is anywhere in `value` (orjson bounds the nesting)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    kind = type(value)
    if kind is list or kind is tuple:
        return any(map(_non_finite, value))
    if kind is dict:
        return any(map(_non_finite, value.values()))
    return False


def _internal(response: Response, message: str, kind: str) -> Response:
    return Response(response.request, error=RPCError(INTERNAL_ERROR, message, {"type": kind}))


def _unencodable(response: Response, exc: Exception) -> Response:
    method = cut(response.request.method)
    message = f"internal error: result of {method} is not JSON-serializable ({exc})"
    return _internal(response, message, "TypeError")


def _non_finite_error(response: Response) -> Response:
    method = cut(response.request.method)
    message = (
        f"internal error: result of {method} holds NaN or Infinity, "
        "and JSON has no NaN or Infinity number"
    )
    return _internal(response, message, "ValueError")


def _too_large(response: Response, size: int, limit: int, batch: bool = False) -> Response:
    method = cut(response.request.method)
    where = "in a batch over" if batch else "over"
    message = (
        f"internal error: result of {method} is {size} bytes, {where} the reply limit of "
        f"{limit} bytes"
    )
    return _internal(response, message, "ReplyTooLarge")


def encode_error(error: RPCError) -> bytes:
    """Encode an error that answers no decoded Request (bad frame, refused connection)."""
    if error.legacy:
        return _dumps({"out": "error", "result": error.to_object()})
    return _dumps({"jsonrpc": "2.0", "error": error.to_object(), "id": error.request_id})


def encode_stream_item(call_id: Any, item: Any) -> bytes:
    """Encode one item of a streaming call as an `rpc.stream` notification."""
    return _dumps(
        {"jsonrpc": "2.0", "method": STREAM_METHOD, "params": {"id": call_id, "item": item}}
    )


def encode_request(method: str, params: Any = (), id: Any = _NO_ID) -> bytes:
    """Encode a JSON-RPC 2.0 request (a notification when `id` is omitted)."""
    obj: dict = {"jsonrpc": "2.0", "method": method}
    if params != () and params is not None:
        obj["params"] = list(params) if isinstance(params, tuple) else params
    if id is not _NO_ID:
        obj["id"] = id
    return _dumps(obj)
