"""The gevent-hosted reactor: Twisted's EPollReactor whose blocking wait yields to gevent's hub.

One OS thread runs both loops. The reactor lives in the main greenlet; whenever it has
nothing ready it waits on its epoll descriptor *through* the hub, so every greenlet that is
ready (the method calls) runs meanwhile. Everything else is stock Twisted.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import types
import warnings
from time import perf_counter
from typing import Any

import gevent
import gevent.monkey
from gevent import get_hub
from gevent.hub import Waiter
from twisted.internet._resolver import GAIResolver
from twisted.python.log import callWithLogger

_EPOLL_EVENTS = ("epoll", "EPOLLIN", "EPOLLOUT", "EPOLLERR", "EPOLLHUP")

# Longest the reactor runs I/O without letting the hub run its timers and watchers: under a
# steady stream of I/O (a flood) a sleeping call would otherwise never wake.
HUB_SLICE = 0.01


def monkey_patch() -> None:
    """Apply gevent's monkey-patching, quietly, before Twisted's reactor exists.

    `twistd` has imported `ssl` before any plugin can run; no SSL object exists yet, so the
    patch is sound and gevent's warning about it is noise an operator should not see.
    """
    if not gevent.monkey.is_module_patched("socket"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gevent.monkey.MonkeyPatchWarning)
            gevent.monkey.patch_all()
    # twisted.python.threadpool bound threading.Thread before the patch (twistd imports it
    # first). A thread of that class started by the patched _start_new_thread is a greenlet
    # whose join() never returns, so stopping any ThreadPool (the reactor's, adbapi's) would
    # end in LoopExit. Pool threads become the patched kind: greenlets.
    from twisted.python import threadpool

    threadpool.ThreadPool.threadFactory = threading.Thread
    # gevent's os.close is a Python function: as the class attribute `_close = os.close` of
    # Twisted's adopted-socket endpoint (systemd:) it would become a method, called with the
    # endpoint as its first argument. The original close, unbound, as Twisted meant it.
    from twisted.internet.endpoints import AdoptedStreamServerEndpoint

    AdoptedStreamServerEndpoint._close = staticmethod(gevent.monkey.get_original("os", "close"))


def _import_epollreactor():
    # Aggressive patching removes select.epoll; Twisted's epollreactor looks it up at import,
    # so lend it the original for the import and take it back afterwards.
    removed = {}
    for name in _EPOLL_EVENTS:
        if not hasattr(select, name):
            removed[name] = gevent.monkey.get_original("select", name)
            setattr(select, name, removed[name])
    try:
        from twisted.internet import epollreactor
    finally:
        for name in removed:
            delattr(select, name)
    return epollreactor


_epollreactor = _import_epollreactor()

# The standard library's socket class, as it was before any patching.
_OriginalSocket = gevent.monkey.get_original("socket", "socket")


class ReactorSocket(_OriginalSocket):
    """The unpatched socket class, for the descriptors the reactor itself reads and writes.

    Twisted calls send and recv only once epoll said the descriptor is ready, so gevent's
    cooperative wrappers around them (Python code that would wait in the hub on EAGAIN) are
    pure cost on every call. `accept` is redefined because the standard library's builds the
    accepted socket from the `socket` module's global, which patching made gevent's.
    """

    __slots__ = ()

    def accept(self) -> tuple[ReactorSocket, Any]:
        fd, address = self._accept()
        return ReactorSocket(self.family, self.type, self.proto, fileno=fd), address


def _reactor_fromfd(fd: int, family: int, type: int, proto: int = 0) -> ReactorSocket:
    # As socket.fromfd: the new object owns a duplicate of the descriptor.
    return ReactorSocket(family, type, proto, os.dup(fd))


class _ReactorSocketModule(types.ModuleType):
    """The `socket` module as Twisted's transports see it: the real (patched) module, except
    that the sockets they create, adopt or accept are `ReactorSocket`s."""

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__(real.__name__, real.__doc__)
        self._real = real
        self.socket = ReactorSocket
        self.fromfd = _reactor_fromfd

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _unpatch_reactor_sockets() -> None:
    """Have Twisted's listening, connecting, adopted and accepted sockets be `ReactorSocket`s.

    Only the modules that make the reactor's own sockets (tcp, udp, unix, and base for
    ports) see the swap; methods, their client libraries and gevent keep the patched module.
    """
    from twisted.internet import base, tcp, udp, unix

    for module in (base, tcp, udp, unix):
        if not isinstance(module.socket, _ReactorSocketModule):
            module.socket = _ReactorSocketModule(module.socket)


class GeventReactor(_epollreactor.EPollReactor):
    """EPollReactor whose wait is a gevent wait, so greenlets run while the reactor idles."""

    def __init__(self) -> None:
        _unpatch_reactor_sockets()
        super().__init__()
        self._hub = get_hub()
        self._watcher = self._hub.loop.io(self._poller.fileno(), 1)
        self._pending_callbacks = self._hub.loop._callbacks
        self._waiter: Waiter | None = None  # set while the reactor is blocked in _wait
        self._wait_until: float | None = None
        self._hub_due = 0.0

    def doPoll(self, timeout: float | None) -> None:
        poller = self._poller
        if self._newTimedCalls:
            # Scheduled since the reactor computed `timeout` (by a greenlet that ran in the
            # last hub turn): due sooner than that wait would last.
            timeout = 0
        # Poll first: under load events are already waiting and no hub round-trip is needed.
        events = poller.poll(0, len(self._selectables))
        if not events and timeout != 0 and self._pending_callbacks:
            # Greenlets are ready (the calls the last reads handed to workers): let them run
            # and look again. What they wrote is then ready to send, without the whole blocking
            # wait (a Waiter, an io watcher and a timer, a hub loop iteration) to learn so.
            gevent.sleep(0)
            events = poller.poll(0, len(self._selectables))
            if not events:
                # Those greenlets may have scheduled a timed call, moved one sooner or stopped
                # the reactor: what `timeout` was computed before does not know.
                timeout = self.timeout() if self.running and not self._justStopped else 0
        if events or timeout == 0:
            if perf_counter() >= self._hub_due:
                self._turn()
            elif self._pending_callbacks:
                gevent.sleep(0)  # greenlets are ready: let them run before more I/O
        else:
            self._wait(timeout)
            self._hub_due = perf_counter() + HUB_SLICE
            events = poller.poll(0, len(self._selectables))
        drdw = self._doReadOrWrite
        selectables = self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                # As EPollReactor does: the transport's logPrefix becomes the log `system`.
                callWithLogger(selectable, drdw, selectable, fd, event)

    doIteration = doPoll

    def _initThreads(self) -> None:
        super()._initThreads()
        # GAIResolver took socket.getaddrinfo as a default argument before gevent patched it:
        # that blocking C call, run in a pool thread that is really a greenlet, would freeze
        # the whole loop for a DNS lookup. Use the getaddrinfo socket has now (gevent's).
        self.installNameResolver(GAIResolver(self, self.getThreadPool, socket.getaddrinfo))

    # An adopted port (a systemd: listener) gets its socket from socket.fromfd, and Twisted
    # counts on the descriptor already being non-blocking. A supervisor or systemd may hand
    # over a blocking one: an accept() on it would then freeze the reactor. Make sure.
    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: object):
        port = super().adoptStreamPort(fileDescriptor, addressFamily, factory)
        port.socket.setblocking(False)
        return port

    def adoptDatagramPort(
        self, fileDescriptor: int, addressFamily: int, protocol: object, maxPacketSize: int = 8192
    ):
        port = super().adoptDatagramPort(fileDescriptor, addressFamily, protocol, maxPacketSize)
        port.socket.setblocking(False)
        return port

    # Twisted re-raises a stopping signal at exit; a daemon that drained cleanly exits 0.
    def sigInt(self, number: int, frame: object = None) -> None:
        super().sigInt(number, frame)
        self._exitSignal = None

    def sigTerm(self, number: int, frame: object = None) -> None:
        super().sigTerm(number, frame)
        self._exitSignal = None

    def _wake(self, waiter: Waiter) -> None:
        # One switch per wait, whichever of the epoll watcher, timer or callLater comes first.
        if self._waiter is waiter:
            self._waiter = None
            waiter.switch(None)

    def _turn(self) -> None:
        """Let the hub run one whole loop iteration: callbacks, then its timers and watchers.

        `gevent.sleep(0)` only runs callbacks (the hub hands back before it polls), so a
        reactor that never waits would starve every sleeping greenlet; a zero timer doesn't.
        """
        waiter = Waiter(self._hub)
        timer = self._hub.loop.timer(0)
        timer.start(waiter.switch, None)
        try:
            waiter.get()
        finally:
            timer.close()
        self._hub_due = perf_counter() + HUB_SLICE

    def _wait(self, timeout: float | None) -> None:
        """Block in the hub until the epoll descriptor is readable or `timeout` passes."""
        waiter = self._waiter = Waiter(self._hub)
        watcher = self._watcher
        timer = None
        watcher.start(self._wake, waiter)
        try:
            if timeout is not None and timeout >= 0:
                self._wait_until = self.seconds() + timeout
                timer = self._hub.loop.timer(timeout)
                timer.start(self._wake, waiter)
            waiter.get()
        finally:
            self._waiter = self._wait_until = None
            watcher.stop()
            if timer is not None:
                timer.close()

    # A greenlet that schedules a timed call, moves one sooner or stops the reactor does so
    # while the reactor waits in the hub with a timeout computed before: end that wait, or
    # the call runs only at the next I/O event. (A method returning a Deferred fired by a
    # timer would hang; TLS flushes a worker's reply with callLater(0): it would sit unsent.)
    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any:
        call = super().callLater(delay, callable, *args, **kw)
        self._wake_for(call.getTime())
        return call

    def _moveCallLaterSooner(self, delayedCall: Any) -> None:
        super()._moveCallLaterSooner(delayedCall)
        self._wake_for(delayedCall.getTime())

    def stop(self) -> None:
        super().stop()
        self._wake_for(0.0)

    def _wake_for(self, due: float) -> None:
        waiter = self._waiter
        if waiter is not None and (self._wait_until is None or due < self._wait_until):
            self._hub.loop.run_callback(self._wake, waiter)


def install(patch: bool = True) -> GeventReactor:
    """Install the gevent-hosted reactor as Twisted's global reactor (patching first)."""
    if patch:
        monkey_patch()
    from twisted.internet.main import installReactor

    reactor = GeventReactor()
    installReactor(reactor)
    return reactor


def installed() -> bool:
    """Whether a Twisted reactor has been installed already."""
    return "twisted.internet.reactor" in sys.modules


__all__ = ["GeventReactor", "ReactorSocket", "install", "installed", "monkey_patch"]
