"""Sans-IO connection state: which calls to dispatch or hold, and which frame bodies go out when.

A `Session` is one connection's RPC state with no sockets, timers or event loop: frame
bodies and finished responses in; calls submitted to the dispatcher, frame bodies handed
to `send`, and a decision for the glue (`PAUSE`, `RESUME`, `AUTHENTICATED`, `CLOSE`) out.
It keeps JSON-RPC replies direct (any order), legacy replies in request order (an error
for a frame that could not be decoded takes its place in that order too), a batch's
replies as one array, requests past the in-flight cap held until a slot frees, `rpc.cancel`
lookup, the `rpc.auth` phase and the bookkeeping of a peer that half-closed.

Each accepted request carries a *route* (`call.route`): a small object whose one method,
`reply(response)`, puts the answer where it belongs. Direct replies share one route per
session, so the per-call path allocates nothing of its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from rpcd import auth, wire
from rpcd.health import CHECK_METHODS
from rpcd.wire import (
    CANCELLED,
    FRAME_TOO_LARGE,
    INVALID_PARAMS,
    NOT_AUTHENTICATED,
    Batch,
    Request,
    Response,
    RPCError,
    decode,
    encode,
)

CANCEL_METHOD = "rpc.cancel"

# Decisions for the glue, returned by the methods that take input (None: carry on).
PAUSE = 1  # the in-flight cap is reached: stop reading frames
RESUME = 2  # a slot freed below the cap: read frames again
AUTHENTICATED = 3  # the handshake succeeded: the full frame limit applies
CLOSE = 4  # close the connection once what was sent is written; `failure` says why (or None)
# What `receive_frames` says besides a decision: it took frames and the decoder has no whole
# one left (DRAINED), or it took one that needs the glue to look at its state before the
# next (CARRY_ON: a reply was written, which may have filled the outbuf).
DRAINED = 5
CARRY_ON = 6


class Dispatcher(Protocol):
    """What the session needs of the dispatcher: submit a call, cancel one."""

    def submit(self, request: Request, sink: Any) -> Any: ...

    def cancel(self, call: Any, response: Response | None = None) -> bool: ...


class Handshake(Protocol):
    """The server side of the rpc.auth handshake (rpcd.auth.ServerHandshake)."""

    challenge_params: dict

    def verify(self, params: Any) -> dict: ...


class Hooks(Protocol):
    """What the glue is told of, as methods of one object (rpcd.protocol.RPCProtocol), so
    that a connection holds no bound method per hook."""

    def frame_error(self, error: RPCError) -> None:
        """A frame decoded to no request (before its error is answered)."""

    def first_call(self) -> None:
        """Once: the first request that is not a health check arrived."""


class _Direct:
    """A JSON-RPC call's route: its reply goes out as soon as it is ready."""

    __slots__ = ("send", "max_bytes")

    def __init__(self, send: Callable[[bytes], None], max_bytes: int | None) -> None:
        self.send = send
        self.max_bytes = max_bytes

    def reply(self, response: Response) -> None:
        if not response.request.notification:
            self.send(wire.encode(response, self.max_bytes))


class _LegacySlot:
    """A legacy request's place in its connection's reply order; filled when it is answered."""

    __slots__ = ("session", "frame")

    def __init__(self, session: Session, frame: bytes | None = None) -> None:
        self.session = session
        self.frame = frame

    def reply(self, response: Response) -> None:
        session = self.session
        self.frame = wire.encode(response, session._max_reply_bytes)
        session._flush_legacy()


class _Batch:
    """The route of every member of one batch: their replies go out as one array."""

    __slots__ = ("send", "parts", "waiting", "max_bytes")

    def __init__(self, send: Callable[[bytes], None], waiting: int, max_bytes: int | None) -> None:
        self.send = send
        self.parts: list[bytes] = []
        self.waiting = waiting
        self.max_bytes = max_bytes  # per entry: each result over it is answered -32603

    def reply(self, response: Response) -> None:
        if not response.request.notification:
            self.parts.append(wire.encode(response, self.max_bytes))
        self._one_done()

    def refuse(self, error: RPCError) -> None:
        """An entry that did not decode to a request: its error, under the id it had."""
        self.parts.append(wire.encode_error(error))
        self._one_done()

    def _one_done(self) -> None:
        self.waiting -= 1
        if self.waiting == 0 and self.parts:
            self.send(b"[" + b",".join(self.parts) + b"]")


class Session:
    """One connection's calls and replies; `send` takes each frame body to write, in order."""

    __slots__ = (
        "calls",
        "failure",
        "_dispatcher",
        "_sink",
        "_send",
        "_max_inflight",
        "_max_batch",
        "_max_method_bytes",
        "_max_reply_bytes",
        "_handshake",
        "_direct",
        "_held",
        "_legacy",
        "_legacy_peer",
        "_read_closed",
        "_hooks",
        "_awaiting_first_call",
        "checked",
    )

    def __init__(
        self,
        dispatcher: Dispatcher,
        sink: Any,
        send: Callable[[bytes], None],
        *,
        max_inflight: int = 128,
        max_batch: int = 100,
        max_method_bytes: int = wire.MAX_METHOD_BYTES,
        max_reply_bytes: int | None = None,
        handshake: Handshake | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        # Submitted and not yet answered, as a dict's keys: an empty dict is 64 bytes, an
        # empty set 216 (and a dict's store and pop cost no more than a set's add, discard).
        self.calls: dict[Any, None] = {}
        self.failure: str | None = None  # why the last CLOSE was decided, for the log
        self._dispatcher = dispatcher
        self._sink = sink  # passed on to the dispatcher: where responses are delivered
        self._send = send
        self._max_inflight = max_inflight
        self._max_batch = max_batch
        self._max_method_bytes = max_method_bytes
        self._max_reply_bytes = max_reply_bytes  # None: replies of any size
        self._handshake = handshake  # None once authenticated (or when there is no key)
        self._direct = _Direct(send, max_reply_bytes)
        # Made when first needed (most connections never need them; an empty deque is 760
        # bytes): requests past the in-flight cap, and legacy replies in request order.
        self._held: deque[tuple[Request, Any]] | None = None
        self._legacy: deque[_LegacySlot] | None = None
        self._legacy_peer = False  # the last request decoded used the legacy envelope
        self._read_closed = False
        self._hooks = hooks
        # The hooks until their first_call is called, at the first request that is not a
        # health check (the connection's "opened" line waits for it); None after.
        self._awaiting_first_call = hooks
        self.checked = False  # a health check came before any other request

    # -- state the glue reads ---------------------------------------------------------------

    @property
    def authenticating(self) -> bool:
        return self._handshake is not None

    @property
    def owes_replies(self) -> bool:
        """Whether a request received is still unanswered (in flight or held)."""
        return bool(self.calls or self._held)

    # -- input ------------------------------------------------------------------------------

    def begin(self) -> None:
        """The connection is up: send the rpc.auth challenge if a handshake is due."""
        if self._handshake is not None:
            self._send(wire.encode_request(auth.METHOD, self._handshake.challenge_params))

    def receive_frames(self, frames: wire.FrameDecoder) -> int | None:
        """Every frame `frames.messages()` decodes, until one calls for a decision.

        One call per received chunk for the glue rather than two per frame: the usual
        request (JSON-RPC, under the in-flight cap, past the handshake and the first call)
        is decoded and submitted here in line. Returns None if there was no whole frame,
        DRAINED once frames were taken and none is left, else after the first frame that
        needs the glue: a decision (PAUSE as soon as the cap is reached: no frame is taken
        past it) or CARRY_ON. The decoder may raise (wire.FrameTooLarge): it goes through.
        """
        if self._awaiting_first_call is not None or self._handshake is not None:
            body = frames.next_frame()
            if body is None:
                return None
            decision = self.receive(body)
            return CARRY_ON if decision is None else decision
        calls = self.calls
        cap = self._max_inflight
        dispatcher = self._dispatcher  # its submit called as a method: no bound method made
        sink = self._sink
        direct = self._direct
        taken = False
        for message in frames.messages(self._max_batch, self._max_method_bytes):
            taken = True
            inflight = len(calls)
            if (
                type(message) is not Request
                or inflight >= cap
                or message.legacy
                or message.method == CANCEL_METHOD
            ):
                if isinstance(message, RPCError):
                    self._refuse_frame(message)
                    return CARRY_ON
                decision = self._received(message)
                return CARRY_ON if decision is None else decision
            # The usual call, in line: what _accept and _submit would do for it.
            self._legacy_peer = False
            try:
                call = dispatcher.submit(message, sink)
            except RPCError as error:
                direct.reply(Response(message, error=error))
                return CARRY_ON
            call.route = direct
            calls[call] = None
            if inflight >= cap - 1:  # the new call counted
                return PAUSE
        return DRAINED if taken else None

    def receive(self, body: bytes) -> int | None:
        """One frame body from the peer."""
        try:
            message = decode(body, self._max_batch, self._max_method_bytes)
        except RPCError as error:
            self._refuse_frame(error)
            return None
        return self._received(message)

    def _received(self, message: Request | Batch) -> int | None:
        if self._awaiting_first_call is not None:
            self._first_calls(message)
        if self._handshake is not None:
            return self._authenticate(message)
        # The usual call's in-line path is receive_frames' (the per-chunk hot path); frames
        # that come this way (until the first call, or one by one from the glue) take the
        # general one, which does the same for them.
        if type(message) is Request:
            self._legacy_peer = message.legacy
            self._accept(message, self._direct)
        else:
            self._legacy_peer = False
            self._accept_batch(message)
        if len(self.calls) >= self._max_inflight:
            return PAUSE
        return None

    def finished(self, call: Any, response: Response) -> int | None:
        """The dispatcher answered `call` (or cancelled it with this response)."""
        out = self.answered(call, response)
        if type(out) is bytes:
            self._send(out)
            return None
        return out

    def answered(self, call: Any, response: Response) -> bytes | int | None:
        """`finished`, except that the usual reply (a direct route, no slot awaited, nothing
        held, still reading) comes back as its frame body, for the glue to write itself: the
        reply path's one call to `send` less. Anything else is sent and decided as `finished`
        does (bytes are never a decision)."""
        calls = self.calls
        was_full = len(calls) >= self._max_inflight
        try:
            del calls[call]  # not a method call, as pop would be
        except KeyError:
            pass
        route = call.route
        if route is self._direct:  # _Direct.reply, in line for the usual call
            if was_full or self._held or self._read_closed:
                if not response.request.notification:
                    self._send(encode(response, self._max_reply_bytes))
                return self._slot_freed(was_full)
            if response.request.notification:
                return None
            return encode(response, self._max_reply_bytes)
        route.reply(response)
        if was_full or self._held or self._read_closed:
            return self._slot_freed(was_full)
        return None

    def _slot_freed(self, was_full: bool) -> int | None:
        """After a reply: submit what the cap held, and say whether to resume or close."""
        calls, held, cap = self.calls, self._held, self._max_inflight
        while held and len(calls) < cap:
            self._submit(*held.popleft())
        if self._read_closed and not calls and not held:
            return CLOSE
        if was_full and len(calls) < cap:
            return RESUME
        return None

    def frame_too_large(self, error: wire.FrameTooLarge, cause: str | None = None) -> int:
        """The peer announced a frame past the decoder's limit: answer -32004 and close.
        `cause` names what the prefix most likely is (an HTTP request, the wrong byte order)."""
        suffix = f": {cause}" if cause else ""
        if self._handshake is not None:
            reason = (
                f"frame too large: {error.length} bytes exceeds {error.limit} "
                f"before authentication{suffix}"
            )
            return self._fail_handshake(reason, None, FRAME_TOO_LARGE)
        self.failure = error.message + suffix
        self._send(wire.encode_error(RPCError(FRAME_TOO_LARGE, self.failure)))
        return CLOSE

    def handshake_timed_out(self, seconds: float) -> int:
        return self._fail_handshake(f"authentication timed out after {seconds:g} s")

    def read_closed(self) -> int | None:
        """The peer sent its last byte (half-close): close once every reply owed is out."""
        self._read_closed = True
        self.failure = None
        return None if self.calls or self._held else CLOSE

    def abandon(self) -> None:
        """The connection is gone: cancel what is in flight, deliver nothing more."""
        calls = list(self.calls)
        self.calls.clear()
        self._held = self._legacy = None
        cancel = self._dispatcher.cancel
        for call in calls:
            cancel(call)

    # -- calls ------------------------------------------------------------------------------

    def _first_calls(self, message: Request | Batch) -> None:
        """Until a request that is not a health check arrives: note checks, call the hook."""
        items = (message,) if type(message) is Request else message.items
        for item in items:
            if type(item) is Request and item.method in CHECK_METHODS:
                self.checked = True
            else:
                hooks, self._awaiting_first_call = self._awaiting_first_call, None
                hooks.first_call()
                return

    def _accept_batch(self, batch: Batch) -> None:
        route = _Batch(self._send, len(batch.items), self._max_reply_bytes)
        for item in batch.items:
            if type(item) is RPCError:
                route.refuse(item)
            else:
                self._accept(item, route)

    def _accept(self, request: Request, route: Any) -> None:
        if request.legacy:
            route = _LegacySlot(self)
            self._legacy_slots().append(route)
        if request.method == CANCEL_METHOD:
            try:
                response = Response(request, self._cancel(request))
            except RPCError as error:
                response = Response(request, error=error)
            route.reply(response)
            return
        if len(self.calls) >= self._max_inflight:
            # A batch's entries past the cap, or frames read after a half-close: they wait
            # for this connection's calls.
            if self._held is None:
                self._held = deque()
            self._held.append((request, route))
            return
        self._submit(request, route)

    def _submit(self, request: Request, route: Any) -> None:
        try:
            call = self._dispatcher.submit(request, self._sink)
        except RPCError as error:
            route.reply(Response(request, error=error))
            return
        call.route = route
        self.calls[call] = None

    def _cancel(self, request: Request) -> bool:
        params = request.params
        if isinstance(params, dict) and "id" in params:
            target = params["id"]
        elif isinstance(params, tuple) and len(params) == 1:
            target = params[0]
        else:
            raise RPCError(
                INVALID_PARAMS, 'invalid params for rpc.cancel: expected {"id": CALL_ID}'
            )
        for call in self.calls:
            if call.request.id == target and not call.request.legacy:
                error = RPCError(CANCELLED, "call cancelled by the client")
                # Returns at once: a queued call's answer comes back through finished().
                return self._dispatcher.cancel(call, Response(call.request, error=error))
        return False

    # -- replies out ------------------------------------------------------------------------

    def _refuse_frame(self, error: RPCError) -> None:
        """A frame that decoded to no request: its error, in the envelope the peer speaks."""
        if self._hooks is not None:
            self._hooks.frame_error(error)
        if not error.legacy and self._legacy_peer and error.code == wire.PARSE_ERROR:
            # Not JSON, so no envelope of its own: a legacy client pairs replies by order.
            error = RPCError(error.code, error.message, error.data, legacy=True)
        if error.legacy:
            self._legacy_slots().append(_LegacySlot(self, wire.encode_error(error)))
            self._flush_legacy()
        else:
            self._send(wire.encode_error(error))

    def _legacy_slots(self) -> deque[_LegacySlot]:
        if self._legacy is None:
            self._legacy = deque()
        return self._legacy

    def _flush_legacy(self) -> None:
        legacy, send = self._legacy, self._send
        while legacy and legacy[0].frame is not None:
            send(legacy.popleft().frame)

    # -- the auth phase ---------------------------------------------------------------------

    def _authenticate(self, message: Request | Batch) -> int | None:
        if type(message) is not Request or message.method != auth.METHOD:
            error = RPCError(NOT_AUTHENTICATED, f"not authenticated: call {auth.METHOD} first")
            if type(message) is Request:
                self._answer_now(Response(message, error=error))
            else:
                self._send(wire.encode_error(error))
            return None
        try:
            result = self._handshake.verify(message.params)
        except auth.AuthFailed as exc:
            return self._fail_handshake(f"authentication failed: {exc}", message)
        self._handshake = None
        self._answer_now(Response(message, result))
        return AUTHENTICATED

    def _answer_now(self, response: Response) -> None:
        # Before authentication nothing else is in flight, so no order to keep.
        if not response.request.notification:
            self._send(wire.encode(response))

    def _fail_handshake(
        self, reason: str, request: Request | None = None, code: int = NOT_AUTHENTICATED
    ) -> int:
        """Answer -32003 (or `code`) and close: a failed handshake gets no second try."""
        self.failure = reason
        error = RPCError(code, reason)
        if request is not None:
            self._answer_now(Response(request, error=error))
        else:
            self._send(wire.encode_error(error))
        return CLOSE
