"""The reactor hands the calls its reads queued straight to parked workers, and gets control back.

`after_io` runs a function from the reactor's greenlet once an iteration's I/O is done; the
Dispatcher uses it to switch to a parked worker without a round trip through the hub. A
worker that blocks, or exits, while the reactor waits on it must give control back through
the hub, or the reactor would stop serving.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import gevent
from twisted.internet.abstract import FileDescriptor

from rpcd.dispatch import Dispatcher, _Worker
from rpcd.methods import Registry
from rpcd.reactor import GeventReactor
from rpcd.wire import Request
from tests.conftest import CollectingSink as Sink

DEADLINE = 5.0  # only reached when control never comes back to the reactor


class Reader(FileDescriptor):
    """One end of a socketpair; each read runs `on_read` (as a connection's dataReceived)."""

    def __init__(self, reactor: GeventReactor, sock: socket.socket, on_read: Callable) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.on_read = on_read

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        self.sock.recv(100)
        self.on_read()


def _reactor_reading(on_read: Callable) -> tuple[GeventReactor, Reader, socket.socket]:
    reactor = GeventReactor()
    left, right = socket.socketpair()
    reader = Reader(reactor, left, on_read)
    reactor.addReader(reader)
    return reactor, reader, right


def _poll_once(reactor: GeventReactor) -> None:
    with gevent.Timeout(DEADLINE):
        reactor.doPoll(1.0)


def _dispatcher(reactor: GeventReactor, **methods: Callable) -> Dispatcher:
    registry = Registry()
    for name, func in methods.items():
        registry.add(name, func)
    dispatcher = Dispatcher(registry)
    dispatcher._after_io = reactor.after_io  # as when the GeventReactor is the installed one
    dispatcher._workers += 1
    _Worker.spawn(dispatcher._work)
    gevent.idle()  # the worker parks
    assert len(dispatcher._parked) == 1
    return dispatcher


def test_after_io_runs_in_the_reactor_greenlet_once_the_reads_are_done():
    order: list[object] = []
    reactor, reader, peer = _reactor_reading(
        lambda: order.append(("read", reactor.after_io(lambda: order.append("after"))))
    )
    try:
        assert reactor.after_io(lambda: order.append("outside")) is False
        peer.send(b"x")
        _poll_once(reactor)
        assert order == [("read", True), "after"]
    finally:
        reactor.removeReader(reader)


def test_a_call_read_is_answered_before_the_hub_runs():
    sink = Sink()
    reactor, reader, peer = _reactor_reading(
        lambda: dispatcher.submit(Request("echo", ("hi",), 1), sink)
    )
    dispatcher = _dispatcher(reactor, echo=lambda value: value)
    try:
        peer.send(b"x")
        _poll_once(reactor)
        # Answered within the iteration that read it: the worker ran from the reactor's
        # greenlet, and the hub has not run since the read.
        assert sink.responses[1].result == "hi"
        assert dispatcher.workers == 1 and len(dispatcher._parked) == 1
    finally:
        reactor.removeReader(reader)
        dispatcher.stop_workers()
        gevent.idle()


def test_a_worker_that_blocks_gives_control_back_to_the_reactor():
    sink = Sink()

    def slow(value):
        gevent.sleep(0.05)
        return value

    reactor, reader, peer = _reactor_reading(
        lambda: dispatcher.submit(Request("slow", ("late",), 1), sink)
    )
    dispatcher = _dispatcher(reactor, slow=slow)
    try:
        peer.send(b"x")
        _poll_once(reactor)
        # The worker sleeps in the hub: the reactor got control back and runs on meanwhile.
        assert 1 not in sink.responses and dispatcher.busy == 1
        started = time.perf_counter()
        while 1 not in sink.responses and time.perf_counter() - started < DEADLINE:
            _poll_once(reactor)
        assert sink.responses[1].result == "late"
        assert len(dispatcher._parked) == 1  # and parked again, in the hub
    finally:
        reactor.removeReader(reader)
        dispatcher.stop_workers()
        gevent.idle()


def test_a_worker_that_exits_gives_control_back_to_the_reactor():
    reactor, reader, peer = _reactor_reading(lambda: dispatcher.stop_workers())
    dispatcher = _dispatcher(reactor)
    try:
        peer.send(b"x")
        _poll_once(reactor)  # the worker took its exit from the reactor's greenlet
        assert dispatcher.workers == 0 and not dispatcher._parked
    finally:
        reactor.removeReader(reader)
