"""Sans-IO codec: frame bodies <-> typed JSON-RPC 2.0 and legacy messages, and the error codes.

Nothing here imports Twisted or gevent or touches a socket: bytes in, values out, values in,
bytes out. `decode` raises only `RPCError`; `encode` never raises on a value it was given
as a result (an unencodable result becomes an internal-error response).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

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

ERROR_NAMES = {
    PARSE_ERROR: "parse error",
    INVALID_REQUEST: "invalid request",
    METHOD_NOT_FOUND: "method not found",
    INVALID_PARAMS: "invalid params",
    INTERNAL_ERROR: "internal error",
    SERVER_BUSY: "server busy",
    CALL_TIMEOUT: "call timed out",
    TOO_MANY_CONNECTIONS: "too many connections",
    NOT_AUTHENTICATED: "not authenticated",
    FRAME_TOO_LARGE: "frame too large",
    SHUTTING_DOWN: "shutting down",
    CANCELLED: "call cancelled",
}

# Method name of the notifications that carry a streaming call's items.
STREAM_METHOD = "rpc.stream"

_NO_ID = object()  # marks a request that has no "id" member: a notification
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


@dataclass(frozen=True, slots=True)
class Request:
    """One call. `params` is a tuple (positional) or a dict (named)."""

    method: str
    params: tuple | dict
    id: Any = None
    notification: bool = False
    legacy: bool = False


@dataclass(frozen=True, slots=True)
class Batch:
    """A JSON-RPC batch: each item a Request, or the RPCError that its entry decoded to."""

    items: tuple[Request | RPCError, ...]


@dataclass(frozen=True, slots=True)
class Response:
    """The answer to one Request: exactly one of `result` and `error` is meaningful."""

    request: Request
    result: Any = None
    error: RPCError | None = None


Message = Request | Batch


def _load(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson refuses invalid UTF-8, unpaired surrogates, NaN/Infinity and nesting deeper
        # than 1024 here, so no RecursionError can escape. (Integers beyond 64 bits it reads
        # as floats, which JSON allows: RFC 8259 section 6.)
        raise RPCError(PARSE_ERROR, f"parse error: {exc}") from None


def decode(body: bytes, max_batch: int = 100) -> Message:
    """Decode one frame body to a Request or Batch; raise RPCError if it cannot be answered."""
    obj = _load(body)
    if isinstance(obj, dict):
        return _request(obj)
    if isinstance(obj, list):
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
                if not isinstance(entry, dict) or ("in" in entry and "jsonrpc" not in entry):
                    raise RPCError(INVALID_REQUEST, "invalid request: batch entry is not a request")
                items.append(_request(entry))
            except RPCError as err:
                items.append(err)
        return Batch(tuple(items))
    raise RPCError(
        INVALID_REQUEST, f"invalid request: expected an object, got {type(obj).__name__}"
    )


def _request(obj: dict) -> Request:
    if "jsonrpc" not in obj and "in" in obj:
        return _legacy_request(obj)
    rid = obj.get("id", _NO_ID)
    notification = rid is _NO_ID
    if notification:
        rid = None
    elif rid is not None and type(rid) not in _ID_TYPES:
        raise RPCError(INVALID_REQUEST, "invalid request: id must be a string, number or null")
    if obj.get("jsonrpc") != "2.0":
        raise RPCError(INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"', request_id=rid)
    method = obj.get("method")
    if type(method) is not str:
        raise RPCError(
            INVALID_REQUEST, 'invalid request: "method" must be a string', request_id=rid
        )
    params = obj.get("params", ())
    if type(params) is list:
        params = tuple(params)
    elif type(params) is not dict and params != ():
        raise RPCError(
            INVALID_REQUEST, 'invalid request: "params" must be an array or object', request_id=rid
        )
    return Request(method, params, rid, notification)


def _legacy_request(obj: dict) -> Request:
    method = obj["in"]
    if type(method) is not str:
        raise RPCError(INVALID_REQUEST, 'invalid request: "in" must be a string', legacy=True)
    params = (obj["params"],) if "params" in obj else ()
    return Request(method, params, None, False, True)


def _reply_name(request: Request) -> str:
    return "pong" if request.method == "ping" else request.method


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


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


def encode(response: Response) -> bytes:
    """Encode a Response to a frame body. A result JSON cannot carry becomes -32603."""
    try:
        return _dumps(response_object(response))
    except TypeError as exc:
        return _dumps(response_object(_unencodable(response, exc)))


def encode_batch(responses: list[Response]) -> bytes:
    """Encode the responses to one batch as a JSON array."""
    try:
        return _dumps([response_object(response) for response in responses])
    except TypeError:
        return b"[" + b",".join(encode(response) for response in responses) + b"]"


def _unencodable(response: Response, exc: Exception) -> Response:
    error = RPCError(
        INTERNAL_ERROR,
        f"internal error: result of {response.request.method} is not JSON-serializable ({exc})",
        {"type": "TypeError"},
    )
    return Response(response.request, error=error)


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
