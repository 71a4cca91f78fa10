"""Twisted glue over a sans-IO `Session`: framing, transport, timers, backpressure, admission.

`RPCProtocol` cuts the byte stream into frames, hands each body to its connection's
`rpcd.session.Session` and acts on what it decides: pause or resume reading, lift the
pre-auth frame limit, close. It owns the timers (idle, write stall, abort, handshake), the
outbuf watch registered with the transport, and it tells the dispatcher when a peer that
lagged can take stream items again. `RPCFactory` admits connections (total and per peer).
It never runs method code and never blocks.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from os import write as _send  # a socket's send with no flags, argument parsing cheaper
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    ILoggingContext,
    IProtocol,
    IPushProducer,
)
from twisted.internet.protocol import Factory
from twisted.internet.tcp import Server as TCPServer
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from rpcd import auth, wire
from rpcd.dispatch import Call, Dispatcher
from rpcd.proxy import ProxyProtocol
from rpcd.session import AUTHENTICATED, CARRY_ON, CLOSE, DRAINED, PAUSE, RESUME, Session
from rpcd.wire import TOO_MANY_CONNECTIONS, Response, RPCError

log = Logger()

AUTH_DELAY_MAX = 10.0  # the longest a peer's next handshake waits after its failures
# One log line per peer per interval for its failed handshakes, and one per error code for
# frames that decoded to no request; the rest are counted in a line at the interval's end.
AUTH_LOG_INTERVAL = 60.0
AUTH_FORGET = 600.0  # failures older than this no longer slow the peer
_AUTH_PEERS = 4096  # peers whose failures are remembered, the oldest forgotten first
# The most reply bytes a connection holds back during a dispatcher burst (to write the replies
# of back-to-back calls at once) before it writes them; a quarter of max_outbuf if less.
HOLD_BYTES = 16384
# Replies shorter than this take their length prefix from a table made once per factory
# (about 23 KB) rather than packing one per reply.
SMALL_FRAME = 512


class _Tally:
    """Failures of one kind (a peer's handshakes, frames with one error code): how many in a
    row, and what was not logged yet."""

    __slots__ = ("count", "last", "logged_at", "unlogged", "reason", "peer", "flush")

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0
        self.logged_at = float("-inf")
        self.unlogged = 0
        self.reason = ""
        self.peer = "-"
        self.flush: Any = None  # the timer that logs the unlogged count


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
    # Unsent reply bytes past which the peer is no longer read and none of its calls starts:
    # a connection holds about max_outbuf plus the replies of the calls already running.
    max_outbuf: int = 1024 * 1024
    write_timeout: float = 30.0  # how long unsent replies may stay past max_outbuf
    auth_key: auth.Key | None = field(default=None, repr=False)  # None: no handshake
    max_method_bytes: int = 128  # longer method names are refused -32600, cut short
    max_reply_bytes: int = 0  # 0: max_frame_bytes; a larger result is answered -32603
    max_unauthenticated: int = 64  # connections still in the handshake; the oldest goes first
    auth_failure_delay: float = 0.1  # a peer's next handshake is read this late, doubled per
    # failure up to AUTH_DELAY_MAX (0: off)


class _NoBursts:
    bursting = False


_NO_BURSTS = _NoBursts()


@implementer(IProtocol, ILoggingContext, IHandshakeListener, IHalfCloseableProtocol, IPushProducer)
class RPCProtocol:
    """One client connection.

    It is also the producer of its replies, registered with its transport (no object of
    its own per connection): the transport pauses it when the peer's unsent replies pass
    max_outbuf and resumes it once they are written.

    Not derived from Twisted's `Protocol`, whose instances carry a `__dict__` (beside these
    slots): what Twisted calls on a protocol (IProtocol, ILoggingContext) is here.
    """

    __slots__ = (
        "__weakref__",
        "factory",
        "transport",
        "connected",
        "_session",
        "_decoder",
        "_closed",
        "_last_frame",
        "_idle_due",
        "peer_key",
        "peer",
        "opened_at",
        "announced",
        "unnamed",
        "_pauses",
        "_watching_outbuf",
        "_write_timer",
        "_abort_timer",
        "_auth_call",
        "_dispatcher",
        "_held",
        "_held_bytes",
        "_hold_limit",
        "_pack",
        "_small_prefixes",
        "_tcp",
        "_fd",
        "_spilled",
    )

    factory: RPCFactory

    def __init__(self) -> None:
        self.factory = None  # type: ignore[assignment]  # buildProtocol sets it
        self.transport: Any = None
        self.connected = 0
        # Both made at the first bytes received (at once when a handshake is due): a
        # connection that has sent nothing holds neither. Never made for one refused at
        # admission ("refused" in _pauses).
        self._session: Session | None = None
        self._decoder: wire.FrameDecoder | None = None
        self._closed = False  # nothing more in or out
        self._last_frame = 0.0  # when its last complete frame came, or its last call ended
        # Its place in the factory's idle heap, by when it may be idle_timeout idle at the
        # earliest; None: not in the heap (no idle timeout, refused, or taken out to close).
        self._idle_due: float | None = None
        self.peer_key: Any = None
        self.peer = "-"  # host:port, for log lines
        # The "opened" line waits for the first request that is not a health check, so a
        # balancer's checks (a connection a second) log at debug level only.
        self.opened_at = 0.0
        self.announced = False
        self.unnamed = False  # its PROXY header named no client (LOCAL: the balancer's check)
        # Why reading is paused ("inflight", "outbuf", "closing", "refused", "penalty"): one
        # reason lifting must not resume what another holds. Reading is paused iff non-empty.
        # A tuple, replaced on each change: the empty one is shared by every connection.
        self._pauses: tuple[str, ...] = ()
        self._watching_outbuf = False
        self._write_timer: Any = None
        self._abort_timer: Any = None  # running once close() began: flush or abort
        self._auth_call: Any = None
        self._dispatcher: Any = None
        self._held: list[bytes] | None = None  # frames held during a dispatcher burst
        self._held_bytes = 0
        self._hold_limit = 0
        # The TCP transport whose socket a reply may be sent on at once (see _write): the
        # transport itself or the one under the PROXY wrapper; None for TLS and the rest.
        self._tcp: TCPServer | None = None
        self._fd = -1  # its socket's descriptor, written with os.write while it is connected
        self._spilled = False  # the transport was handed bytes (that it may still hold)

    # -- connection lifecycle ----------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        self.connected = 1
        self.transport = transport
        self.connectionMade()

    def logPrefix(self) -> str:
        return type(self).__name__

    def connectionMade(self) -> None:
        tcp = self.transport
        if type(tcp) is ProxyProtocol:
            tcp = tcp.transport
        if type(tcp) is TCPServer:
            self._tcp, self._fd = tcp, tcp.fileno()
        # A reply is a small write that must leave now. With Nagle's algorithm on, the kernel
        # holds it while an earlier reply is unacknowledged, and the client's delayed ACK
        # rides on its next request: a call answered when the next one arrives (or after the
        # 40 ms delayed-ACK timer). Over TLS the wrapper passes this to the TCP transport; a
        # UNIX socket has no such option.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:  # the peer is already gone: the first read or write will say so
                pass
        factory = self.factory
        limits = factory.limits
        dispatcher = factory.dispatcher
        # A dispatcher that cannot hold output for a burst never has one.
        self._dispatcher = dispatcher if hasattr(dispatcher, "hold") else _NO_BURSTS
        self._pack = factory.pack_prefix  # a frame's 4-byte length
        self._small_prefixes = factory.small_prefixes
        self._hold_limit = factory.hold_limit
        refusal = factory.admit(self)
        if refusal is not None:
            self._pause("refused")  # read nothing from a refused peer: its one answer is this
            self.sendString(wire.encode_error(refusal))
            self._flush()
            self.transport.loseConnection()
            return
        # TLS pauses a registered producer while its handshake holds our writes back (the
        # rpc.auth challenge), and our reading paused then would stall that very handshake:
        # over TLS the watch starts in handshakeCompleted.
        if not isinstance(self.transport, TLSMemoryBIOProtocol):
            self._watch_outbuf()
        if limits.auth_key is not None:
            session = self._open_session()  # the challenge goes out now
            self._decoder.max_frame_bytes = min(auth.PREAUTH_MAX_FRAME, limits.max_frame_bytes)
            session.begin()
            clock = factory.clock
            delay = factory.auth_delay(self)
            if delay > 0:
                # This peer failed lately: its answer is read only after a growing delay,
                # and the handshake's own time starts then.
                self._pause("penalty")
                self._auth_call = clock.callLater(delay, self._penalty_over)
            else:
                self._auth_call = clock.callLater(auth.HANDSHAKE_TIMEOUT, self._handshake_timeout)
        if limits.idle_timeout > 0:
            factory.watch_idle(self)

    def _open_session(self) -> Session:
        """The decoder and the session: at the first bytes received, or at once for the
        handshake."""
        factory = self.factory
        limits = factory.limits
        key = limits.auth_key
        self._decoder = wire.FrameDecoder(limits.max_frame_bytes, limits.byteorder)
        session = self._session = Session(
            factory.dispatcher,
            self,
            self.sendString,
            max_inflight=limits.max_inflight,
            max_batch=limits.max_batch,
            max_method_bytes=limits.max_method_bytes,
            max_reply_bytes=limits.max_reply_bytes or limits.max_frame_bytes,
            handshake=auth.ServerHandshake(key) if key is not None else None,
            hooks=self,
        )
        return session

    def first_call(self) -> None:
        """The first request that is not a health check: the "opened" line, written now
        (the session's hook)."""
        self.announced = True
        age = self.factory.clock.seconds() - self.opened_at
        if age < 1.0:
            log.info("connection from {peer} opened", peer=self.peer)
        else:
            log.info("connection from {peer} opened {age:.1f} s ago", peer=self.peer, age=age)

    def _watch_outbuf(self) -> None:
        transport = self.transport
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = self.factory.limits.max_outbuf  # where it pauses its producer
        transport.registerProducer(self, True)
        self._watching_outbuf = True

    def handshakeCompleted(self) -> None:
        """TLS is up: from now on a full write buffer pauses reading (IHandshakeListener)."""
        if not self._closed and "refused" not in self._pauses and not self._watching_outbuf:
            self._watch_outbuf()

    def connectionLost(self, reason: Any = None) -> None:
        self._closed = True
        for timer in (self._write_timer, self._abort_timer, self._auth_call):
            if timer is not None and timer.active():
                timer.cancel()
        self._write_timer = self._abort_timer = self._auth_call = None
        session = self._session
        if session is not None:
            session.abandon()  # a stream waiting for this peer to read is cancelled too
            self.factory.dispatcher.writable(self)  # the dispatcher forgets this peer's lag
        elif "refused" in self._pauses:
            return  # never counted in
        self.factory.release(self)

    def readConnectionLost(self) -> None:
        """The peer half-closed (shutdown(SHUT_WR)): answer every frame already received,
        past the in-flight cap too, then close (IHalfCloseableProtocol)."""
        session = self._session
        if self._closed or "refused" in self._pauses:
            self._flush()
            self.transport.loseConnection()
            return
        if session is None:
            self.close()  # it sent nothing: nothing is owed
            return
        decoder = self._decoder
        try:
            while not self._closed and "closing" not in self._pauses:
                body = decoder.next_frame()
                if body is None:
                    break
                self.stringReceived(body)
        except wire.FrameTooLarge as error:
            self._frame_too_large(error)
            return
        decoder.clear()  # a partial frame is owed nothing
        if session.read_closed() == CLOSE:
            self.close()

    def writeConnectionLost(self) -> None:
        """Never for TCP (IHalfCloseableProtocol); rpcd does not half-close its side."""

    def drop(self, error: RPCError) -> None:
        """Answer `error` and close: the factory gave this unauthenticated slot to a newer one."""
        if self._closed or "closing" in self._pauses:
            return
        self.sendString(wire.encode_error(error))
        self.close()

    def __lt__(self, other: RPCProtocol) -> bool:
        # The order of the factory's idle heap (heapq compares with < only).
        return self._idle_due < other._idle_due

    def close(self) -> None:
        """Close once written replies are flushed; abort if the peer won't take them in time."""
        if self._closed or "closing" in self._pauses:
            return
        self._pause("closing")
        if self._watching_outbuf:
            # A registered producer keeps a transport open (Twisted waits for it to finish).
            self._watching_outbuf = False
            self.transport.unregisterProducer()
        self._flush()
        self.transport.loseConnection()
        timeout = self.factory.limits.write_timeout
        self._abort_timer = self.factory.clock.callLater(timeout, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        log.warn("aborting {peer}: it did not read its replies", peer=self.peer)
        self.transport.abortConnection()

    # -- reading paused, for one reason or several -------------------------------------------

    def _pause(self, reason: str) -> None:
        pauses = self._pauses
        if not pauses:
            self.transport.pauseProducing()
        if reason not in pauses:
            self._pauses = (*pauses, reason)

    def _resume(self, reason: str) -> None:
        pauses = self._pauses
        if reason not in pauses:
            return
        self._pauses = pauses = tuple(held for held in pauses if held != reason)
        if not pauses and not self._closed:
            self.transport.resumeProducing()
            self.dataReceived(b"")  # the frames already buffered first

    def pauseProducing(self) -> None:
        """The transport holds max_outbuf of unsent replies (IPushProducer)."""
        self._outbuf_full()

    def resumeProducing(self) -> None:
        """The transport wrote them (IPushProducer)."""
        self._outbuf_drained()

    def stopProducing(self) -> None:
        """The connection is gone; connectionLost does the rest (IPushProducer)."""

    def _outbuf_full(self) -> None:
        if self._closed or "outbuf" in self._pauses:
            return
        self._pause("outbuf")
        self.factory.dispatcher.lagging(self)  # no new call of ours starts until it reads
        self._write_timer = self.factory.clock.callLater(
            self.factory.limits.write_timeout, self._write_stalled
        )

    def _outbuf_drained(self) -> None:
        if self._write_timer is not None and self._write_timer.active():
            self._write_timer.cancel()
        self._write_timer = None
        self._resume("outbuf")
        self.factory.dispatcher.writable(self)

    def _write_stalled(self) -> None:
        self._write_timer = None
        log.warn(
            "aborting {peer}: its unsent replies stayed over max_outbuf for {timeout:g} s",
            peer=self.peer,
            timeout=self.factory.limits.write_timeout,
        )
        self.transport.abortConnection()

    # -- frames in ---------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # Frames are taken while reading is not paused (the in-flight cap); _resume calls
        # this again with b"" to go on with the frames already buffered.
        session = self._session
        if session is None:
            if not data or "refused" in self._pauses:
                return  # refused at admission: nothing is read
            session = self._open_session()
        decoder = self._decoder
        decoder.receive(data)
        # The exact class first (the usual case): one identity test, where reading a class
        # attribute (through the instance or the type) is an uncached lookup each time.
        cls = type(self)
        if cls is not RPCProtocol and cls.stringReceived is not RPCProtocol.stringReceived:
            self._frames_to_string_received()  # a subclass wraps the per-frame hook: keep it
            return
        taken = False
        try:
            # The session takes the chunk's frames itself, back to us at each decision (the
            # pauses and closing are looked at then); the idle clock is read at most once per
            # chunk, below.
            while not self._pauses and not self._closed:
                decision = session.receive_frames(decoder)
                if decision is None:
                    break
                taken = True
                if decision == DRAINED:
                    break
                if decision != CARRY_ON:
                    self._decided(decision)
        except wire.FrameTooLarge as error:  # the decoder dropped its buffer: nothing is kept
            self._frame_too_large(error)
        # With a call of its own pending the connection is not idle, and deliver reads the
        # clock when the last one is answered, later than now: the usual chunk (its calls
        # queued) needs no clock read.
        if taken and self._idle_due is not None and not session.calls:
            self._last_frame = self.factory.clock.seconds()

    def _frames_to_string_received(self) -> None:
        next_frame = self._decoder.next_frame
        try:
            while not self._pauses:
                body = next_frame()
                if body is None:
                    return
                self.stringReceived(body)
        except wire.FrameTooLarge as error:  # the decoder dropped its buffer: nothing is kept
            self._frame_too_large(error)

    def stringReceived(self, body: bytes) -> None:
        session = self._session
        if self._closed or "refused" in self._pauses:
            return
        if session is None:  # a frame handed in directly, before any bytes were read
            session = self._open_session()
        if self._idle_due is not None:
            self._last_frame = self.factory.clock.seconds()
        decision = session.receive(body)
        if decision is not None:
            self._decided(decision)

    def frame_error(self, error: RPCError) -> None:
        """A frame that decoded to no request (the session's hook): counted, maybe logged."""
        self.factory.frame_error(self, error.code, error.message)

    def _frame_too_large(self, error: wire.FrameTooLarge) -> None:
        session = self._session
        if session is None or self._closed:
            return
        authenticating = session.authenticating
        session.frame_too_large(error, error.likely_cause(self.factory.limits.byteorder))
        self.factory.frame_error(self, error.code, session.failure)
        if authenticating:
            self._decided(CLOSE)
            return
        self.close()
        self._closed = True  # nothing more in or out, not even replies still due

    def _decided(self, decision: int) -> None:
        if decision == PAUSE:
            self._pause("inflight")
        elif decision == RESUME:
            self._resume("inflight")
        elif decision == AUTHENTICATED:
            self._auth_call.cancel()
            self._auth_call = None
            self._decoder.max_frame_bytes = self.factory.limits.max_frame_bytes
            self.factory.authenticated(self)
            log.debug("{peer} authenticated", peer=self.peer)
        elif decision == CLOSE:
            reason = self._session.failure
            if reason is not None:
                # A failed handshake: answered, read nothing more, no second try.
                self.factory.auth_failed(self, reason)
                if self._auth_call is not None and self._auth_call.active():
                    self._auth_call.cancel()
                self._auth_call = None
                self._pause("closing")
                self._flush()
                self.transport.loseConnection()
            else:
                self.close()

    def _penalty_over(self) -> None:
        clock = self.factory.clock
        self._auth_call = clock.callLater(auth.HANDSHAKE_TIMEOUT, self._handshake_timeout)
        self._resume("penalty")

    def _handshake_timeout(self) -> None:
        self._auth_call = None
        self._decided(self._session.handshake_timed_out(auth.HANDSHAKE_TIMEOUT))

    # -- replies out (the dispatcher's sink) -------------------------------------------------

    def deliver(self, call: Call, response: Response) -> None:
        if self._closed:
            return
        session = self._session
        out = session.answered(call, response)
        if not session.calls and self._idle_due is not None:
            # Idleness starts when the last pending call is answered, not at its request.
            self._last_frame = self.factory.clock.seconds()
        if type(out) is bytes:
            # The usual reply, handed back to be framed and written here: sendString's way,
            # one Python call less; a subclass's (metrics wraps sendString) is called.
            if self._held is None and not self._dispatcher.bursting and type(self) is RPCProtocol:
                length = len(out)
                try:
                    data = self._small_prefixes[length] + out
                except IndexError:
                    data = self._pack(length) + out
                self._write(data)
            else:
                self.sendString(out)
        elif out is not None:
            self._decided(out)

    def stream(self, call: Call, item: Any) -> bool:
        """Send one stream item; say whether the peer can take more now (else the dispatcher
        holds the stream until `writable`)."""
        if self._closed:
            return True  # the call is being cancelled
        self.sendString(wire.encode_stream_item(call.request.id, item))
        return "outbuf" not in self._pauses

    def sendString(self, string: bytes) -> None:
        length = len(string)
        try:
            prefix = self._small_prefixes[length]  # the usual reply: made once per factory
        except IndexError:
            prefix = self._pack(length)
        held = self._held
        if held is not None:
            # After what is held already (the order is kept): prefix and body apart, so the
            # body is copied once, by the join at the flush.
            held.append(prefix)
            held.append(string)
            held_bytes = self._held_bytes = self._held_bytes + 4 + length
            if held_bytes >= self._hold_limit:
                self._flush()
        elif self._dispatcher.bursting and length + 4 < self._hold_limit:
            # A worker runs calls back to back: write their replies together at its end.
            # Only a little is held, so the transport still sees max_outbuf reached in time.
            self._held = [prefix, string]
            self._held_bytes = 4 + length
            self._dispatcher.hold(self._flush)
        else:
            # (The usual reply is written by deliver in line; this is for the rest.)
            self._write(prefix + string)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._closed:
            self._write(b"".join(held))

    def _write(self, data: bytes) -> None:
        """Send `data` at once when nothing waits before it; else queue it on the transport.

        Twisted's `write` only buffers: the bytes go out at the reactor's next turn, after an
        `epoll_ctl` to watch for writability, a wait that reports it, and one more
        `epoll_ctl` to stop watching. A reply almost always fits the socket's buffer, so one
        `send` now saves those three system calls and a loop turn per reply. Whatever the
        kernel does not take (or a send that fails) goes to the transport, which keeps the
        order, the write-buffer limit (`max_outbuf`) and the error handling as before. Only
        on plain TCP (`_tcp`, directly or behind the PROXY wrapper); TLS keeps Twisted's path.

        Whether the transport still holds bytes is asked of it only after it was handed some
        (`_spilled`): its `dataBuffer` is a class attribute until its first write, which
        CPython 3.11 looks up the slow way each time. (rpcd never half-closes its side, so
        the transport's `_writeDisconnected` stays False.)
        """
        tcp = self._tcp
        if tcp is not None and tcp.connected and not (self._spilled and self._spill_left(tcp)):
            try:
                sent = _send(self._fd, data)
            except OSError:  # EAGAIN, or the peer is gone: the transport's write finds out
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self._spilled = True
        self.transport.write(data)

    def _spill_left(self, tcp: TCPServer) -> bool:
        """Whether the transport still holds bytes it was handed (else it is not spilled)."""
        if tcp.dataBuffer or tcp._tempDataLen:
            return True
        self._spilled = False
        return False


def _names_no_client(transport: Any) -> bool:
    """Whether the connection's PROXY header named no client: v2 LOCAL (the balancer's own
    health check), or v1 UNKNOWN / an unspecified family, where the balancer's own address
    stands (rpcd.proxy keeps the socket's peer then)."""
    if not isinstance(transport, ProxyProtocol):
        return False
    return transport.getPeer() == transport.transport.getPeer()


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


def _failure_key(protocol: RPCProtocol) -> Any:
    # By address (a new port each attempt is the same peer); UNIX peers all count as one.
    return protocol.peer_key if protocol.peer_key is not None else protocol.peer


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
        self._unauthenticated: dict[RPCProtocol, None] = {}  # oldest first
        self._auth_failures: dict[Any, _Tally] = {}  # by peer address, oldest first
        self._frame_errors: dict[int, _Tally] = {}  # by error code: what to log when
        self.accepted = 0
        self.refused: Counter = Counter()
        self.frame_errors: Counter = Counter()  # frames that decoded to no request, by code
        self._all_closed: list[defer.Deferred] = []
        # What every connection shares, made once here rather than once per connection.
        self.pack_prefix = wire.frame_prefix(limits.byteorder).pack
        self.small_prefixes = tuple(self.pack_prefix(n) for n in range(SMALL_FRAME))
        self.hold_limit = min(HOLD_BYTES, limits.max_outbuf // 4)
        # The idle timeout, one timer for all connections (not a DelayedCall each): a heap of
        # connections by `_idle_due`, the earliest a connection can have been idle_timeout
        # idle (its activity since only makes the true deadline later, found when it comes
        # up); the timer fires at the first of them. A closed connection's entry stays until
        # it comes up or the heap is compacted (`_idle_closed` counts them).
        self._idle_heap: list[RPCProtocol] = []
        self._idle_closed = 0
        self._idle_timer: Any = None
        self._idle_timer_due = 0.0

    def admit(self, protocol: RPCProtocol) -> RPCError | None:
        """Count a new connection in, or say why it is refused."""
        limits = self.limits
        protocol.peer = _peer_text(protocol)
        unauthenticated = self._unauthenticated
        full = len(self.connections) >= limits.max_connections
        if full and not unauthenticated:
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
        if full:
            # Unauthenticated connections go first (sshd's MaxStartups): a client holding the
            # key gets in past sockets that never authenticate.
            self._drop_oldest_unauthenticated("max_connections", limits.max_connections)
        if limits.auth_key is not None:
            if len(unauthenticated) >= limits.max_unauthenticated:
                self._drop_oldest_unauthenticated("max_unauthenticated", limits.max_unauthenticated)
            unauthenticated[protocol] = None
        protocol.peer_key = key
        if key is not None:
            self._per_peer[key] += 1
        self.connections.add(protocol)
        self.accepted += 1
        protocol.opened_at = self.clock.seconds()  # its "opened" line waits for a call
        protocol.unnamed = _names_no_client(protocol.transport)
        return None

    # -- the idle timeout ----------------------------------------------------------------------

    def watch_idle(self, protocol: RPCProtocol) -> None:
        """Close `protocol` once it has been idle for idle_timeout: no complete frame received
        and no call of its own pending."""
        now = protocol._last_frame = protocol.opened_at  # one float for both: counted in now
        protocol._idle_due = now + self.limits.idle_timeout
        heapq.heappush(self._idle_heap, protocol)
        self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        """Have the timer fire when the first connection in the heap is due (none: no timer)."""
        heap, timer = self._idle_heap, self._idle_timer
        if not heap:
            if timer is not None and timer.active():
                timer.cancel()
            self._idle_timer = None
            return
        due = heap[0]._idle_due
        if timer is not None and timer.active():
            # The due it was armed for, not its getTime(): that reads the clock again, a
            # little later, and would seem late for the same first entry at every new
            # connection (a new timer each, the cancelled ones kept by the reactor a while).
            if self._idle_timer_due <= due:
                return  # it fires in time (a new connection is due last: the usual case)
            timer.cancel()
        self._idle_timer_due = due
        self._idle_timer = self.clock.callLater(max(due - self.clock.seconds(), 0), self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for idle_timeout; put the others back by their next due."""
        self._idle_timer = None
        clock, heap, connections = self.clock, self._idle_heap, self.connections
        timeout = self.limits.idle_timeout
        now = clock.seconds()
        while heap and heap[0]._idle_due <= now:
            protocol = heap[0]
            if protocol not in connections:  # closed (or given up for a newer connection)
                heapq.heappop(heap)
                protocol._idle_due = None
                self._idle_closed -= 1
                continue
            if protocol._closed or "closing" in protocol._pauses:
                heapq.heappop(heap)  # closing already: no idle line for it
                protocol._idle_due = None
                continue
            session = protocol._session
            if session is not None and session.calls:
                # Waiting on its own calls (or streaming) is not idleness: look again later.
                protocol._idle_due = now + timeout
                heapq.heapreplace(heap, protocol)
                continue
            due = protocol._last_frame + timeout
            if due > now:
                protocol._idle_due = due  # active since it was put in: back at its new place
                heapq.heapreplace(heap, protocol)
                continue
            heapq.heappop(heap)
            protocol._idle_due = None
            log.info("closing {peer}: idle for {timeout:g} s", peer=protocol.peer, timeout=timeout)
            protocol.close()
        self._arm_idle_timer()

    def _forget_idle(self, protocol: RPCProtocol) -> None:
        """`protocol` is counted out: its heap entry is dead. Compact the heap once a quarter
        of it is (so closed connections are not kept for up to idle_timeout)."""
        if protocol._idle_due is None:
            return
        self._idle_closed += 1
        heap = self._idle_heap
        if self._idle_closed * 4 > len(heap):
            connections = self.connections
            heap[:] = [entry for entry in heap if entry in connections]
            heapq.heapify(heap)
            self._idle_closed = 0
            self._arm_idle_timer()

    def _drop_oldest_unauthenticated(self, limit: str, value: int) -> None:
        oldest = next(iter(self._unauthenticated))
        self.refused[limit] += 1
        log.warn(
            "dropping unauthenticated {peer} for a newer connection: {limit} {value} reached",
            peer=oldest.peer,
            limit=limit,
            value=value,
        )
        self.release(oldest)  # counted out now: its slot is the newcomer's
        oldest.drop(
            RPCError(
                TOO_MANY_CONNECTIONS,
                f"too many connections: dropped while unauthenticated for a newer connection "
                f"({limit} {value} reached)",
                {"limit": limit},
            )
        )

    def authenticated(self, protocol: RPCProtocol) -> None:
        """`protocol` passed the handshake: it is never dropped for a newcomer, and its peer's
        failures are forgotten."""
        self._unauthenticated.pop(protocol, None)
        failures = self._auth_failures.pop(_failure_key(protocol), None)
        if failures is not None and failures.flush is not None and failures.flush.active():
            failures.flush.cancel()
            self._log_failures(failures)

    def auth_delay(self, protocol: RPCProtocol) -> float:
        """How long to wait before reading a new connection's handshake (its peer's failures)."""
        base = self.limits.auth_failure_delay
        failures = self._auth_failures.get(_failure_key(protocol))
        if base <= 0 or failures is None:
            return 0.0
        if self.clock.seconds() - failures.last > AUTH_FORGET:
            return 0.0
        return min(base * 2 ** min(failures.count - 1, 32), AUTH_DELAY_MAX)

    def auth_failed(self, protocol: RPCProtocol, reason: str) -> None:
        """Count a failed handshake against its peer; log one line per peer per interval."""
        key = _failure_key(protocol)
        table = self._auth_failures
        failures = table.pop(key, None)  # re-inserted last: the table is oldest first
        if failures is None:
            failures = _Tally()
            if len(table) >= _AUTH_PEERS:
                oldest = table.pop(next(iter(table)))
                if oldest.flush is not None and oldest.flush.active():
                    oldest.flush.cancel()
        table[key] = failures
        now = self.clock.seconds()
        failures.count += 1
        failures.last = now
        failures.reason = reason
        failures.peer = protocol.peer
        if now - failures.logged_at >= AUTH_LOG_INTERVAL:
            failures.logged_at = now
            log.warn("closing {peer}: {reason}", peer=protocol.peer, reason=reason)
            return
        failures.unlogged += 1
        if failures.flush is None or not failures.flush.active():
            wait = failures.logged_at + AUTH_LOG_INTERVAL - now
            failures.flush = self.clock.callLater(wait, self._log_failures, failures)

    def frame_error(self, protocol: RPCProtocol, code: int, message: str) -> None:
        """Count a frame that decoded to no request (rpc.stats); log it, one line per code per
        interval at most, the rest as a count at the interval's end."""
        self.dispatcher.stats.refused(code)
        self.frame_errors[code] += 1
        now = self.clock.seconds()
        entry = self._frame_errors.get(code)
        if entry is None:
            entry = self._frame_errors[code] = _Tally()
        entry.peer, entry.reason = protocol.peer, message
        if now - entry.logged_at >= AUTH_LOG_INTERVAL:
            entry.logged_at = now
            log.warn(
                "frame error {code} from {peer}: {message}",
                code=code,
                peer=protocol.peer,
                message=message,
            )
            return
        entry.unlogged += 1
        if entry.flush is None or not entry.flush.active():
            wait = entry.logged_at + AUTH_LOG_INTERVAL - now
            entry.flush = self.clock.callLater(wait, self._log_frame_errors, code, entry)

    def _log_frame_errors(self, code: int, entry: _Tally) -> None:
        entry.flush = None
        if entry.unlogged:
            log.warn(
                "{count} more frame errors {code} in {interval:g} s (the last from {peer}: "
                "{message})",
                count=entry.unlogged,
                code=code,
                interval=AUTH_LOG_INTERVAL,
                peer=entry.peer,
                message=entry.reason,
            )
            entry.unlogged = 0
            entry.logged_at = self.clock.seconds()

    def _log_failures(self, failures: _Tally) -> None:
        failures.flush = None
        if failures.unlogged:
            log.warn(
                "{count} more authentication failures from {peer} in {interval:g} s "
                "(the last: {reason})",
                count=failures.unlogged,
                peer=failures.peer,
                interval=AUTH_LOG_INTERVAL,
                reason=failures.reason,
            )
            failures.unlogged = 0
            failures.logged_at = self.clock.seconds()

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
        self._unauthenticated.pop(protocol, None)
        if protocol not in self.connections:
            return
        self.connections.discard(protocol)
        self._forget_idle(protocol)
        key = protocol.peer_key
        if key is not None:
            self._per_peer[key] -= 1
            if self._per_peer[key] <= 0:
                del self._per_peer[key]
        if protocol.announced:
            log.info("connection from {peer} closed", peer=protocol.peer)
        else:
            # Never opened in the log: one line now, at debug level for a balancer's check.
            seconds = self.clock.seconds() - protocol.opened_at
            session = protocol._session
            checked = session is not None and session.checked
            if checked or protocol.unnamed:
                log.debug(
                    "connection from {peer} opened and closed after {seconds:.3f} s: "
                    "health checks only",
                    peer=protocol.peer,
                    seconds=seconds,
                )
            else:
                log.info(
                    "connection from {peer} opened and closed after {seconds:.3f} s: no calls",
                    peer=protocol.peer,
                    seconds=seconds,
                )
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
