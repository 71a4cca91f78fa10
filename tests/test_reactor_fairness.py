"""The gevent-hosted reactor under a steady stream of I/O still lets sleeping greenlets wake."""

from __future__ import annotations

import socket
import time

import gevent
from twisted.internet.abstract import FileDescriptor

from rpcd.reactor import GeventReactor


class AlwaysReadable(FileDescriptor):
    """A socket with unread data that is never consumed: every poll reports it ready."""

    def __init__(self, reactor, sock: socket.socket) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.reads = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        self.reads += 1


def test_sleeping_greenlet_wakes_while_io_never_stops():
    reactor = GeventReactor()
    left, right = socket.socketpair()
    right.send(b"x")
    busy = AlwaysReadable(reactor, left)
    reactor.addReader(busy)
    woke = []

    def sleeper() -> None:
        started = time.perf_counter()
        gevent.sleep(0.01)
        woke.append(time.perf_counter() - started)

    greenlet = gevent.spawn(sleeper)
    try:
        started = time.perf_counter()
        while not woke and time.perf_counter() - started < 2:
            reactor.doPoll(1.0)  # events are always ready: the reactor never waits
        # Without its periodic full hub turn, the timer fires only by accident, if ever.
        assert woke and woke[0] < 0.2, (woke, busy.reads)
    finally:
        reactor.removeReader(busy)
        greenlet.kill()
        left.close()
        right.close()
        reactor._poller.close()
