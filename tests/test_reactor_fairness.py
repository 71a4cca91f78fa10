"""The gevent-hosted reactor under a steady stream of I/O still lets sleeping greenlets wake."""

from __future__ import annotations

import socket

import gevent
from twisted.internet.abstract import FileDescriptor

from rpcd.reactor import GeventReactor

# Reads after which the test gives up on the sleeper (only reached when it never wakes).
GIVE_UP = 200_000


class AlwaysReadable(FileDescriptor):
    """A socket with unread data that is never consumed: the loop reports it ready each turn."""

    def __init__(self, reactor, sock: socket.socket) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.reads = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        self.reads += 1
        if self.reads == GIVE_UP:
            self.reactor.stop()


def test_sleeping_greenlet_wakes_while_io_never_stops():
    reactor = GeventReactor()
    left, right = socket.socketpair()
    right.send(b"x")
    busy = AlwaysReadable(reactor, left)
    reactor.addReader(busy)
    woke_after: list[int] = []  # the reads the flood had made by then

    def sleeper() -> None:
        gevent.sleep(0.01)
        woke_after.append(busy.reads)
        if busy.reads < GIVE_UP:
            reactor.stop()

    reactor.callWhenRunning(gevent.spawn, sleeper)
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        reactor.removeReader(busy)
        left.close()
        right.close()
    assert woke_after, f"the sleeping greenlet never woke in {busy.reads} reads"
    # It slept while the flood ran, and woke before the flood had to be given up on.
    assert 0 < woke_after[0] < GIVE_UP, woke_after
