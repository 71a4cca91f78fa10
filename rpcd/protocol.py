"""Connections: Int32 framing, connection limits, idle timeout, in-flight cap and reply ordering.

`RPCProtocol` turns frames into `Request`s for the dispatcher and writes back what it
delivers: JSON-RPC replies as soon as they are ready (in any order), legacy replies in
request order, batch replies as one array. It never runs method code.
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from gevent import getcurrent
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver

from rpcd import wire
from rpcd.dispatch import CANCELLED, Call, Dispatcher
from rpcd.wire import (
    FRAME_TOO_LARGE,
    INVALID_PARAMS,
    INVALID_REQUEST,
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


class RPCProtocol(Int32StringReceiver):
    """One client connection."""

    factory: RPCFactory

    def __init__(self) -> None:
        self._calls: set[Call] = set()
        self._legacy: deque[_LegacySlot] = deque()
        self._refused = False
        self._closed = False
        self._last_frame = 0.0
        self._idle_call: Any = None
        self.peer_key: Any = None
        self._out: list[bytes] | None = None  # replies from workers, written once per hub turn
        self._batching = False
        self._after_greenlets: Any = None  # the reactor's callAfterGreenlets, if it has one

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
            self.sendString(wire.encode_error(refusal))
            self.transport.loseConnection()
            return
        self._max_inflight = limits.max_inflight
        self._after_greenlets = getattr(factory.clock, "callAfterGreenlets", None)
        if limits.idle_timeout > 0:
            self._last_frame = factory.clock.seconds()
            self._idle_call = factory.clock.callLater(limits.idle_timeout, self._check_idle)

    def connectionLost(self, reason: Any = None) -> None:
        self._closed = True
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        if self._refused:
            return
        dispatcher = self.factory.dispatcher
        for call in list(self._calls):
            dispatcher.cancel(call)
        self._calls.clear()
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
        log.info("closing {peer}: idle for {timeout:g} s", peer=_peer_text(self), timeout=timeout)
        self.flush()
        self.transport.loseConnection()

    # -- frames in ---------------------------------------------------------------------------

    def lengthLimitExceeded(self, length: int) -> None:
        limit = self.MAX_LENGTH
        self._send_error(
            RPCError(FRAME_TOO_LARGE, f"frame too large: {length} bytes exceeds max_frame_bytes {limit}")
        )
        self._unprocessed = b""  # never buffer the oversized body
        self.transport.loseConnection()
        self.pauseProducing()

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
        if type(message) is Request:
            self._accept(message, None)
        else:
            self._accept_batch(message)
        if len(self._calls) >= self._max_inflight and not self.paused:
            self.pauseProducing()

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
            raise RPCError(INVALID_PARAMS, 'invalid params for rpc.cancel: expected {"id": CALL_ID}')
        for call in self._calls:
            if call.request.id == target and not call.request.legacy:
                error = RPCError(CANCELLED, "call cancelled by the client")
                return self.factory.dispatcher.cancel(call, Response(call.request, error=error))
        return False

    # -- replies out (the dispatcher's sink) -------------------------------------------------

    def deliver(self, call: Call, response: Response) -> None:
        self._calls.discard(call)
        if self._closed:
            return
        # From a worker greenlet, replies join this turn's batch (see sendString).
        self._batching = self._after_greenlets is not None and getcurrent().parent is not None
        context = call.context
        if context is None:
            if not response.request.notification:
                self.sendString(wire.encode(response))
        else:
            self._reply(response, context)
        self._batching = False
        if self.paused and len(self._calls) < self._max_inflight and not self._refused:
            self.resumeProducing()

    def stream(self, call: Call, item: Any) -> None:
        request = call.request
        if request.legacy or request.notification:
            raise RPCError(INVALID_REQUEST, "streaming needs a JSON-RPC 2.0 call with an id")
        if not self._closed:
            self.sendString(wire.encode_stream_item(request.id, item))

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
        frame = _PREFIXES[self.structFormat].pack(len(string)) + string
        if self._batching:
            # A worker's reply: gather the replies of this hub turn and write them with one
            # transport.write when the turn ends (a pipelining client gets many per turn).
            out = self._out
            if out is None:
                self._out = [frame]
                self._after_greenlets(self.flush)
            else:
                out.append(frame)
            return
        if self._out is not None:
            self.flush()  # what the workers wrote goes first
        self.transport.write(frame)

    def flush(self) -> None:
        """Write the replies gathered in this hub turn (before anything closes the connection)."""
        out = self._out
        if out is not None:
            self._out = None
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))


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
        return peer.host
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
        if len(self.connections) >= limits.max_connections:
            return self._refuse(
                protocol, "max_connections",
                f"too many connections: the server's limit of {limits.max_connections} is reached",
            )
        key = _peer_key(protocol)
        if limits.max_connections_per_peer and key is not None:
            if self._per_peer[key] >= limits.max_connections_per_peer:
                return self._refuse(
                    protocol, "max_connections_per_peer",
                    f"too many connections: {key} has reached the per-peer limit of "
                    f"{limits.max_connections_per_peer}",
                )
        protocol.peer_key = key
        if key is not None:
            self._per_peer[key] += 1
        self.connections.add(protocol)
        self.accepted += 1
        log.debug("connection from {peer}", peer=_peer_text(protocol))
        return None

    def _refuse(self, protocol: RPCProtocol, limit: str, message: str) -> RPCError:
        self.refused[limit] += 1
        log.warn("refused connection from {peer}: {limit} reached", peer=_peer_text(protocol), limit=limit)
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
        log.debug("connection from {peer} closed", peer=_peer_text(protocol))
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
            protocol.flush()
            protocol.transport.loseConnection()
        return d
