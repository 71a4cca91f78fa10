"""Connections: Int32 framing, connection limits, idle timeout, in-flight cap and reply ordering.

`RPCProtocol` turns frames into `Request`s for the dispatcher and writes back what it
delivers: JSON-RPC replies as soon as they are ready (in any order), legacy replies in
request order, batch replies as one array. It never runs method code.
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from gevent.event import Event
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from rpcd import auth, wire
from rpcd.dispatch import Call, Dispatcher
from rpcd.wire import (
    CANCELLED,
    FRAME_TOO_LARGE,
    INVALID_PARAMS,
    INVALID_REQUEST,
    NOT_AUTHENTICATED,
    TOO_MANY_CONNECTIONS,
    Batch,
    Request,
    Response,
    RPCError,
)

log = Logger()

CANCEL_METHOD = "rpc.cancel"

# The length prefix by Int32StringReceiver.structFormat ("!I" big-endian, "<I" little).
_PREFIXES = {fmt: struct.Struct(fmt) for fmt in ("!I", ">I", "<I")}


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The per-listener policy a factory enforces; every field is an operator setting."""

    max_connections: int = 1024
    max_connections_per_peer: int = 0  # 0: no per-peer limit
    max_frame_bytes: int = 4 * 1024 * 1024
    idle_timeout: float = 300.0  # 0: never
    max_inflight: int = 128
    max_batch: int = 100
    byteorder: str = "big"
    max_outbuf: int = 1024 * 1024  # unsent reply bytes before the peer is no longer read
    write_timeout: float = 30.0  # how long unsent replies may stay past max_outbuf
    auth_key: auth.Key | None = field(default=None, repr=False)  # None: no handshake


class _LegacySlot:
    """A legacy reply's place in its connection's order; filled when its call finishes."""

    __slots__ = ("frame",)

    def __init__(self) -> None:
        self.frame: bytes | None = None


class _BatchReply:
    """Collects the responses to one batch and sends them as one array when all are in."""

    __slots__ = ("responses", "waiting")

    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.waiting = 0


@implementer(IPushProducer)
class _OutbufWatch:
    """Registered with the transport, which pauses it when the peer's unsent replies pass
    max_outbuf and resumes it once they are written."""

    __slots__ = ("protocol",)

    def __init__(self, protocol: RPCProtocol) -> None:
        self.protocol = protocol

    def pauseProducing(self) -> None:
        self.protocol._outbuf_full()

    def resumeProducing(self) -> None:
        self.protocol._outbuf_drained()

    def stopProducing(self) -> None:
        pass


@implementer(IHandshakeListener)
class RPCProtocol(Int32StringReceiver):
    """One client connection."""

    factory: RPCFactory

    def __init__(self) -> None:
        self._calls: set[Call] = set()
        self._held: deque[tuple[Request, Any]] = deque()  # batch entries past max_inflight
        self._legacy: deque[_LegacySlot] = deque()
        self._refused = False
        self._closed = False
        self._last_frame = 0.0
        self._idle_call: Any = None
        self.peer_key: Any = None
        self.peer = "-"  # host:port, for log lines
        # Why reading is paused ("inflight", "outbuf", "closing"): one reason lifting must
        # not resume what another still holds.
        self._pauses: set[str] = set()
        self._watching_outbuf = False
        self._writable = Event()  # clear while unsent replies are past max_outbuf
        self._writable.set()
        self._write_timer: Any = None
        self._abort_timer: Any = None
        self._auth_nonce: str | None = None  # set while the auth handshake is pending
        self._auth_call: Any = None

    # -- connection lifecycle ----------------------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        limits = factory.limits
        if limits.byteorder == "little":
            self.structFormat = "<I"
        self.MAX_LENGTH = limits.max_frame_bytes
        refusal = factory.admit(self)
        if refusal is not None:
            self._refused = True
            self.pauseProducing()  # read nothing from a refused peer: its one answer is this frame
            self.sendString(wire.encode_error(refusal))
            self.transport.loseConnection()
            return
        self._max_inflight = limits.max_inflight
        # TLS pauses a registered producer while its handshake holds our writes back (the
        # rpc.auth challenge), and our reading paused then would stall that very handshake:
        # over TLS the watch starts in handshakeCompleted.
        if not isinstance(self.transport, TLSMemoryBIOProtocol):
            self._watch_outbuf()
        if limits.auth_key is not None:
            self._start_handshake()
        if limits.idle_timeout > 0:
            self._last_frame = factory.clock.seconds()
            self._idle_call = factory.clock.callLater(limits.idle_timeout, self._check_idle)

    def _watch_outbuf(self) -> None:
        transport = self.transport
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = self.factory.limits.max_outbuf  # where it pauses its producer
        transport.registerProducer(_OutbufWatch(self), True)
        self._watching_outbuf = True

    def handshakeCompleted(self) -> None:
        """TLS is up: from now on a full write buffer pauses reading (IHandshakeListener)."""
        if not self._closed and not self._refused and not self._watching_outbuf:
            self._watch_outbuf()

    def connectionLost(self, reason: Any = None) -> None:
        self._closed = True
        for timer in (self._idle_call, self._write_timer, self._abort_timer, self._auth_call):
            if timer is not None and timer.active():
                timer.cancel()
        self._idle_call = self._write_timer = self._abort_timer = self._auth_call = None
        self._writable.set()  # wake any stream waiting to write; its call is cancelled below
        if self._refused:
            return
        dispatcher = self.factory.dispatcher
        for call in list(self._calls):
            dispatcher.cancel(call)
        self._calls.clear()
        self._held.clear()
        self.factory.release(self)

    def _check_idle(self) -> None:
        clock = self.factory.clock
        timeout = self.factory.limits.idle_timeout
        if self._calls:
            # Waiting on our own calls (or streaming) is not idleness.
            self._idle_call = clock.callLater(timeout, self._check_idle)
            return
        remaining = self._last_frame + timeout - clock.seconds()
        if remaining > 0:
            self._idle_call = clock.callLater(remaining, self._check_idle)
            return
        self._idle_call = None
        log.info("closing {peer}: idle for {timeout:g} s", peer=self.peer, timeout=timeout)
        self.close()

    def close(self) -> None:
        """Close once written replies are flushed; abort if the peer won't take them in time."""
        if self._closed or self._abort_timer is not None:
            return
        self._pause("closing")
        if self._watching_outbuf:
            # A registered producer keeps a transport open (Twisted waits for it to finish).
            self._watching_outbuf = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()
        timeout = self.factory.limits.write_timeout
        self._abort_timer = self.factory.clock.callLater(timeout, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        log.warn("aborting {peer}: it did not read its replies", peer=self.peer)
        self.transport.abortConnection()

    # -- reading paused, for one reason or several -------------------------------------------

    def _pause(self, reason: str) -> None:
        if not self._pauses:
            self.pauseProducing()
        self._pauses.add(reason)

    def _resume(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and not self._closed:
            self.resumeProducing()

    def _outbuf_full(self) -> None:
        if self._closed or "outbuf" in self._pauses:
            return
        self._writable.clear()
        self._pause("outbuf")
        self._write_timer = self.factory.clock.callLater(
            self.factory.limits.write_timeout, self._write_stalled
        )

    def _outbuf_drained(self) -> None:
        if self._write_timer is not None and self._write_timer.active():
            self._write_timer.cancel()
        self._write_timer = None
        self._writable.set()
        self._resume("outbuf")

    def _write_stalled(self) -> None:
        self._write_timer = None
        log.warn(
            "aborting {peer}: its unsent replies stayed over max_outbuf for {timeout:g} s",
            peer=self.peer,
            timeout=self.factory.limits.write_timeout,
        )
        self.transport.abortConnection()

    # -- frames in ---------------------------------------------------------------------------

    def lengthLimitExceeded(self, length: int) -> None:
        limit = self.MAX_LENGTH
        if self._auth_nonce is not None:
            self._unprocessed = b""
            reason = f"frame too large: {length} bytes exceeds {limit} before authentication"
            self._fail_handshake(reason, code=FRAME_TOO_LARGE)
            return
        self._send_error(
            RPCError(
                FRAME_TOO_LARGE, f"frame too large: {length} bytes exceeds max_frame_bytes {limit}"
            )
        )
        self._unprocessed = b""  # never buffer the oversized body
        self.close()
        self._closed = True  # nothing more in or out, not even replies still due

    def dataReceived(self, data: bytes) -> None:
        # Int32StringReceiver's loop, leaner per frame: one buffer walked by offset with a
        # prebuilt Struct, and no per-frame attribute writes. It stops while paused (the
        # in-flight cap); resumeProducing calls it again with b"" to go on.
        buffer = self._unprocessed + data if self._unprocessed else data
        offset = 0
        end = len(buffer)
        unpack = _PREFIXES[self.structFormat].unpack_from
        limit = self.MAX_LENGTH
        while end - offset >= 4 and not self.paused:
            (length,) = unpack(buffer, offset)
            if length > limit:
                self._unprocessed = buffer[offset:]
                self.lengthLimitExceeded(length)
                return
            start = offset + 4
            offset = start + length
            if offset > end:
                offset = start - 4
                break
            self.stringReceived(buffer[start:offset])
        self._unprocessed = buffer[offset:] if offset else buffer

    def stringReceived(self, body: bytes) -> None:
        if self._refused or self._closed:
            return
        if self._idle_call is not None:
            self._last_frame = self.factory.clock.seconds()
        try:
            message = wire.decode(body, self.factory.limits.max_batch)
        except RPCError as error:
            self._send_error(error)
            return
        if self._auth_nonce is not None:
            self._handshake(message)
            return
        if type(message) is Request:
            self._accept(message, None)
        else:
            self._accept_batch(message)
        if len(self._calls) >= self._max_inflight:
            self._pause("inflight")

    def _accept_batch(self, batch: Batch) -> None:
        reply = _BatchReply()
        reply.waiting = len(batch.items)
        for item in batch.items:
            if isinstance(item, RPCError):
                self._reply(Response(_error_request(item), error=item), reply)
            else:
                self._accept(item, reply)

    def _accept(self, request: Request, batch: _BatchReply | None) -> None:
        context: Any = batch
        if request.legacy:
            context = _LegacySlot()
            self._legacy.append(context)
        if request.method == CANCEL_METHOD:
            try:
                response = Response(request, self._cancel(request))
            except RPCError as error:
                response = Response(request, error=error)
            self._reply(response, context)
            return
        if len(self._calls) >= self._max_inflight:
            # Only a batch gets here: its entries past the cap wait for this connection's calls.
            self._held.append((request, context))
            return
        self._submit(request, context)

    def _submit(self, request: Request, context: Any) -> None:
        try:
            call = self.factory.dispatcher.submit(request, self)
        except RPCError as error:
            self._reply(Response(request, error=error), context)
            return
        call.context = context
        self._calls.add(call)

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
        for call in self._calls:
            if call.request.id == target and not call.request.legacy:
                error = RPCError(CANCELLED, "call cancelled by the client")
                return self.factory.dispatcher.cancel(call, Response(call.request, error=error))
        return False

    # -- the auth handshake (rpcd.auth has the message shapes) -------------------------------

    def _start_handshake(self) -> None:
        self._auth_nonce = auth.new_nonce()
        self.MAX_LENGTH = min(auth.PREAUTH_MAX_FRAME, self.MAX_LENGTH)
        self.sendString(wire.encode_request(auth.METHOD, auth.challenge(self._auth_nonce)))
        clock = self.factory.clock
        self._auth_call = clock.callLater(auth.HANDSHAKE_TIMEOUT, self._handshake_timeout)

    def _handshake(self, message: Request | Batch) -> None:
        if type(message) is not Request or message.method != auth.METHOD:
            error = RPCError(NOT_AUTHENTICATED, f"not authenticated: call {auth.METHOD} first")
            if type(message) is Request:
                self._answer_now(Response(message, error=error))
            else:
                self.sendString(wire.encode_error(error))
            return
        try:
            result = auth.verify(self.factory.limits.auth_key, self._auth_nonce, message.params)
        except auth.AuthFailed as exc:
            self._fail_handshake(f"authentication failed: {exc}", message)
            return
        self._auth_nonce = None
        self._auth_call.cancel()
        self._auth_call = None
        self.MAX_LENGTH = self.factory.limits.max_frame_bytes
        log.debug("{peer} authenticated", peer=self.peer)
        self._answer_now(Response(message, result))

    def _answer_now(self, response: Response) -> None:
        # Before authentication nothing else is in flight, so no ordering to keep.
        if not response.request.notification:
            self.sendString(wire.encode(response))

    def _handshake_timeout(self) -> None:
        self._auth_call = None
        self._fail_handshake(f"authentication timed out after {auth.HANDSHAKE_TIMEOUT:g} s")

    def _fail_handshake(
        self, reason: str, request: Request | None = None, code: int = NOT_AUTHENTICATED
    ) -> None:
        """Answer -32003 and close: a failed handshake gets no second try on this connection."""
        log.warn("closing {peer}: {reason}", peer=self.peer, reason=reason)
        if self._auth_call is not None and self._auth_call.active():
            self._auth_call.cancel()
        self._auth_call = None
        error = RPCError(code, reason)
        if request is not None:
            self._answer_now(Response(request, error=error))
        else:
            self.sendString(wire.encode_error(error))
        self.pauseProducing()  # read nothing more from it
        self.transport.loseConnection()

    # -- replies out (the dispatcher's sink) -------------------------------------------------

    def deliver(self, call: Call, response: Response) -> None:
        calls = self._calls
        calls.discard(call)
        if self._closed:
            return
        if not calls and self._idle_call is not None:
            # Idleness starts when the last pending call is answered, not at its request.
            self._last_frame = self.factory.clock.seconds()
        self._reply(response, call.context)
        held = self._held
        while held and len(self._calls) < self._max_inflight:
            self._submit(*held.popleft())
        if len(self._calls) < self._max_inflight:
            self._resume("inflight")

    def stream(self, call: Call, item: Any) -> None:
        request = call.request
        if request.legacy or request.notification:
            raise RPCError(INVALID_REQUEST, "streaming needs a JSON-RPC 2.0 call with an id")
        if not self._closed:
            self.sendString(wire.encode_stream_item(request.id, item))
            # Runs in the call's worker greenlet: a stream waits there while the peer lags.
            self._writable.wait()

    def _reply(self, response: Response, context: Any) -> None:
        if context is None:
            if not response.request.notification:
                self.sendString(wire.encode(response))
        elif type(context) is _LegacySlot:
            context.frame = wire.encode(response)
            self._flush_legacy()
        else:
            if not response.request.notification:
                context.responses.append(response)
            context.waiting -= 1
            if context.waiting == 0 and context.responses:
                self.sendString(wire.encode_batch(context.responses))

    def _flush_legacy(self) -> None:
        legacy = self._legacy
        while legacy and legacy[0].frame is not None:
            self.sendString(legacy.popleft().frame)

    def _send_error(self, error: RPCError) -> None:
        if error.legacy:
            # Keep its place in the legacy order.
            slot = _LegacySlot()
            slot.frame = wire.encode_error(error)
            self._legacy.append(slot)
            self._flush_legacy()
        else:
            self.sendString(wire.encode_error(error))

    def sendString(self, string: bytes) -> None:
        self.transport.write(_PREFIXES[self.structFormat].pack(len(string)) + string)


def _error_request(error: RPCError) -> Request:
    """A stand-in request so an invalid batch entry's error carries that entry's id."""
    return Request("", (), error.request_id)


def _peer_text(protocol: RPCProtocol) -> str:
    peer = protocol.transport.getPeer()
    if isinstance(peer, (IPv4Address, IPv6Address)):
        return f"{peer.host}:{peer.port}"
    return str(peer)


def _peer_key(protocol: RPCProtocol) -> Any:
    peer = protocol.transport.getPeer()
    if isinstance(peer, (IPv4Address, IPv6Address)):
        # An IPv4 peer reaching a dual-stack listener counts as itself, not as a new address.
        host = peer.host
        return host[7:] if host.startswith("::ffff:") and "." in host else host
    return None  # UNIX sockets and the like have no address to limit by


class RPCFactory(Factory):
    """Builds connections and enforces the connection limits across them."""

    protocol = RPCProtocol
    noisy = False

    def __init__(self, dispatcher: Dispatcher, limits: ConnectionLimits, clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.dispatcher = dispatcher
        self.limits = limits
        self.clock = clock
        self.connections: set[RPCProtocol] = set()
        self._per_peer: Counter = Counter()
        self.accepted = 0
        self.refused: Counter = Counter()
        self._all_closed: list[defer.Deferred] = []

    def admit(self, protocol: RPCProtocol) -> RPCError | None:
        """Count a new connection in, or say why it is refused."""
        limits = self.limits
        protocol.peer = _peer_text(protocol)
        if len(self.connections) >= limits.max_connections:
            return self._refuse(
                protocol,
                "max_connections",
                limits.max_connections,
                f"too many connections: the server's limit of {limits.max_connections} is reached",
            )
        key = _peer_key(protocol)
        if limits.max_connections_per_peer and key is not None:
            if self._per_peer[key] >= limits.max_connections_per_peer:
                return self._refuse(
                    protocol,
                    "max_connections_per_peer",
                    limits.max_connections_per_peer,
                    f"too many connections: {key} has reached the per-peer limit of "
                    f"{limits.max_connections_per_peer}",
                )
        protocol.peer_key = key
        if key is not None:
            self._per_peer[key] += 1
        self.connections.add(protocol)
        self.accepted += 1
        log.info("connection from {peer} opened", peer=protocol.peer)
        return None

    def _refuse(self, protocol: RPCProtocol, limit: str, value: int, message: str) -> RPCError:
        self.refused[limit] += 1
        log.warn(
            "connection from {peer} refused: {limit} {value} reached",
            peer=protocol.peer,
            limit=limit,
            value=value,
        )
        return RPCError(TOO_MANY_CONNECTIONS, message, {"limit": limit})

    def release(self, protocol: RPCProtocol) -> None:
        """Count a closed connection out."""
        if protocol not in self.connections:
            return
        self.connections.discard(protocol)
        key = protocol.peer_key
        if key is not None:
            self._per_peer[key] -= 1
            if self._per_peer[key] <= 0:
                del self._per_peer[key]
        log.info("connection from {peer} closed", peer=protocol.peer)
        if not self.connections:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def close_all(self) -> defer.Deferred:
        """Close every connection once its written replies are flushed; fire when all are gone."""
        if not self.connections:
            return defer.succeed(None)
        d = defer.Deferred()
        self._all_closed.append(d)
        for protocol in list(self.connections):
            protocol.close()
        return d
