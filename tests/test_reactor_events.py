"""GeventReactor's descriptor events: what EPollReactor does for one (callWithLogger around
_doReadOrWrite), from the one callback per direction every io watcher shares.

A socket pair's one end, made ready to read by a byte written to the other, stands for a
transport; each case runs the reactor until the descriptor is disconnected.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
from twisted.internet import error, protocol
from twisted.internet.interfaces import (
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IReadDescriptor,
)
from twisted.logger import globalLogPublisher
from twisted.python import context, failure, log
from twisted.python.log import ILogContext
from zope.interface import implementer

from rpcd.reactor import GeventReactor
from tests.test_reactor_gevent import _run as run_reactor


@implementer(IReadDescriptor)
class Reader:
    """A descriptor whose doRead returns (or raises) what the test gives it, once."""

    def __init__(
        self, reactor: GeventReactor, sock: socket.socket, outcome: Any, raises: bool = False
    ) -> None:
        self.reactor, self.sock, self.outcome, self.raises = reactor, sock, outcome, raises
        self.systems: list[str] = []  # the log `system` seen in doRead
        self.lost: Any = None
        self.read_lost: Any = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "Reader,7,127.0.0.1"

    def doRead(self) -> Any:
        self.sock.recv(1)
        self.systems.append(context.get(ILogContext)["system"])
        if self.raises:
            raise self.outcome
        return self.outcome

    def connectionLost(self, reason: Any) -> None:
        self.lost = reason
        self.reactor.stop()


@implementer(IHalfCloseableDescriptor)
class HalfCloseableReader(Reader):
    def readConnectionLost(self, reason: Any) -> None:
        self.read_lost = reason
        self.reactor.removeReader(self)
        self.reactor.stop()

    def writeConnectionLost(self, reason: Any) -> None:
        raise AssertionError("never written")


@pytest.fixture
def events():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def _run_one(outcome: Any, kind: type = Reader, raises: bool = False) -> Reader:
    reactor = GeventReactor()
    ours, theirs = socket.socketpair()
    reader = kind(reactor, ours, outcome, raises)
    reactor.addReader(reader)
    theirs.send(b"x")
    try:
        assert run_reactor(reactor, []) == []  # stopped by the event, not the safety timer
    finally:
        ours.close()
        theirs.close()
    return reader


def test_an_exception_in_doRead_is_logged_under_the_prefix_and_disconnects(events):
    reader = _run_one(ValueError("boom"), raises=True)
    assert reader.systems == ["Reader,7,127.0.0.1"]
    assert reader.lost is not None and reader.lost.check(ValueError)
    (logged,) = [e for e in events if e.get("isError")]  # a legacy event: log.err's
    assert logged["failure"].check(ValueError)
    assert logged["system"] == "Reader,7,127.0.0.1"
    # The prefix held only during the event.
    assert context.get(ILogContext)["system"] == "-"


def test_a_clean_end_of_input_is_a_half_close_for_a_half_closeable_descriptor():
    reader = _run_one(error.ConnectionDone(), HalfCloseableReader)
    assert reader.read_lost is not None and reader.read_lost.check(error.ConnectionDone)
    assert reader.lost is None


def test_a_lost_connection_is_connectionLost():
    reader = _run_one(error.ConnectionLost())
    assert reader.lost is not None and reader.lost.check(error.ConnectionLost)


def test_every_watcher_shares_one_callback_and_keeps_only_its_descriptor():
    # A watcher keeps its start arguments: one tuple of one item per descriptor.
    reactor = GeventReactor()
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        readers = [Reader(reactor, ours, None) for ours, _ in pairs]
        for reader in readers:
            reactor.addReader(reader)
        watchers = [reactor._reads[reader.fileno()] for reader in readers]
        assert watchers[0].callback is watchers[1].callback
        assert [w.args for w in watchers] == [(reader,) for reader in readers]
    finally:
        reactor.removeAll()
        for pair in pairs:
            for sock in pair:
                sock.close()
    log.msg("reactor events test done")  # the legacy log works outside any event


class _InterruptedOnce(Reader):
    """Its first event ends in a KeyboardInterrupt (Ctrl-C with no signal handlers): gevent
    lets it through and stops the watcher, dropping its arguments."""

    interrupted = False

    def logPrefix(self) -> str:
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        return super().logPrefix()

    def connectionLost(self, reason: Any) -> None:
        self.lost = reason  # the reactor is iterated here, not run: nothing to stop


def _iterate_until(reactor: GeventReactor, done: Any) -> None:
    for _ in range(100):  # each turn waits at most 0.1 s: only a lost event takes them all
        if done():
            return
        try:
            reactor.iterate(0.1)
        except KeyboardInterrupt:
            pass


def test_a_watcher_stopped_by_an_interrupt_neither_breaks_the_tables_nor_the_descriptor():
    reactor = GeventReactor()
    ours, theirs = socket.socketpair()
    other_ours, other_theirs = socket.socketpair()
    try:
        reader = _InterruptedOnce(reactor, ours, error.ConnectionLost())
        other = Reader(reactor, other_ours, None)
        reactor.addReader(reader)
        reactor.addReader(other)
        theirs.send(b"x")
        # gevent stops the interrupted watcher at the hub's next turn.
        _iterate_until(reactor, lambda: reader.interrupted and reader not in reactor.getReaders())
        assert reader.interrupted and reader.lost is None
        # The tables still answer, and still list the other descriptor (shutdown's
        # removeAll disconnects what they list).
        assert other in reactor.getReaders() and reader not in reactor.getReaders()
        # Added again, the interrupted one is read again: its byte is still waiting.
        reactor.addReader(reader)
        _iterate_until(reactor, lambda: reader.lost is not None)
        assert reader.lost.check(error.ConnectionLost)
        assert other in reactor.removeAll()
    finally:
        for sock in (ours, theirs, other_ours, other_theirs):
            sock.close()


# -- a TCP server connection's read: on_event's outcome, doRead's steps in one callback ------


class _Server(protocol.Protocol):
    """Records what it is told, and the log `system` it is told it in."""

    def __init__(self, seen: dict, raises: BaseException | None = None) -> None:
        self.seen, self.raises = seen, raises

    def connectionMade(self) -> None:
        self.seen["transport"] = self.transport

    def dataReceived(self, data: bytes) -> None:
        self.seen.setdefault("data", b"")
        self.seen["data"] += data
        self.seen["system"] = context.get(ILogContext)["system"]
        if self.raises is not None:
            raise self.raises

    def connectionLost(self, reason: Any = None) -> None:
        self.seen["lost"] = reason


@implementer(IHalfCloseableProtocol)
class _HalfCloseableServer(_Server):
    def readConnectionLost(self) -> None:
        self.seen["read lost"] = True
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        raise AssertionError("never written")


def _serve(kind: type = _Server, raises: BaseException | None = None) -> tuple[Any, dict, Any]:
    reactor = GeventReactor()
    seen: dict = {}
    port = reactor.listenTCP(
        0, protocol.Factory.forProtocol(lambda: kind(seen, raises)), interface="127.0.0.1"
    )
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    _iterate_until(reactor, lambda: "transport" in seen)
    return reactor, seen, client


def _stop(reactor: GeventReactor, client: socket.socket) -> None:
    client.close()
    for selectable in reactor.removeAll():
        selectable.connectionLost(failure.Failure(error.ConnectionDone()))


def test_a_tcp_connection_is_read_by_its_own_callback_under_its_prefix():
    reactor, seen, client = _serve()
    try:
        transport = seen["transport"]
        assert reactor._reads[transport.fileno()].callback is reactor._on_tcp_read
        client.sendall(b"hello")
        _iterate_until(reactor, lambda: seen.get("data") == b"hello")
        assert seen["system"] == transport.logPrefix()
        assert context.get(ILogContext)["system"] == "-"  # the prefix held only during the event
        assert "lost" not in seen
    finally:
        _stop(reactor, client)


def test_a_tcp_peer_that_closes_is_connection_done():
    reactor, seen, client = _serve()
    try:
        client.close()
        _iterate_until(reactor, lambda: "lost" in seen)
        assert seen["lost"].check(error.ConnectionDone)
    finally:
        _stop(reactor, client)


def test_a_tcp_peer_that_half_closes_is_a_read_connection_lost_for_a_half_closeable_protocol():
    reactor, seen, client = _serve(_HalfCloseableServer)
    try:
        client.sendall(b"last")
        client.shutdown(socket.SHUT_WR)
        _iterate_until(reactor, lambda: "lost" in seen)
        assert seen["data"] == b"last" and seen["read lost"] is True
        assert seen["lost"].check(error.ConnectionDone)
    finally:
        _stop(reactor, client)


def test_a_tcp_reset_is_connection_lost():
    reactor, seen, client = _serve()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # an RST: recv fails with ECONNRESET
        _iterate_until(reactor, lambda: "lost" in seen)
        assert seen["lost"].check(error.ConnectionLost)
    finally:
        _stop(reactor, client)


def test_an_exception_in_dataReceived_is_logged_under_the_prefix_and_disconnects(events):
    reactor, seen, client = _serve(raises=ValueError("boom"))
    try:
        prefix = seen["transport"].logPrefix()
        client.sendall(b"x")
        _iterate_until(reactor, lambda: "lost" in seen)
        assert seen["lost"].check(ValueError)
        (logged,) = [e for e in events if e.get("isError")]
        assert logged["failure"].check(ValueError) and logged["system"] == prefix
        assert context.get(ILogContext)["system"] == "-"
    finally:
        _stop(reactor, client)


def test_a_tcp_connection_whose_doRead_is_replaced_is_read_through_it():
    # abortConnection replaces doRead (with one that reads nothing) once it stopped reading:
    # reading started again goes through the replacement, as on_event would.
    reactor, seen, client = _serve()
    try:
        transport = seen["transport"]
        transport.stopReading()
        transport.doRead = lambda: None
        transport.startReading()
        assert reactor._reads[transport.fileno()].callback is reactor._on_read
        client.sendall(b"ignored")
        reactor.iterate(0.1)
        assert "data" not in seen and "lost" not in seen
    finally:
        _stop(reactor, client)


def test_a_connection_done_raised_by_dataReceived_is_no_half_close():
    # As on_event: only what doRead returns can be a half-close, not what it raises.
    reactor, seen, client = _serve(_HalfCloseableServer, raises=error.ConnectionDone())
    try:
        client.sendall(b"x")
        _iterate_until(reactor, lambda: "lost" in seen)
        assert "read lost" not in seen and seen["lost"].check(error.ConnectionDone)
    finally:
        _stop(reactor, client)
