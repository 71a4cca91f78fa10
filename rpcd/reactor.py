"""The gevent-hosted reactor: Twisted's descriptors and timed calls as watchers in gevent's hub.

One OS thread, one event loop: libev's, run by gevent's hub. Each descriptor Twisted reads
or writes is a libev io watcher whose callback runs the transport's doRead or doWrite
straight from the hub's loop, among the greenlets (the method calls) that loop also runs.
Twisted's timed calls are one libev timer set to the earliest of them: the reactor's own
greenlet (the main one, in `reactor.run()`) waits in the hub and wakes only for that timer
and for wake-ups (a call due sooner, stop, callFromThread), to run the timed calls, which may
block, outside the hub. Everything else is stock Twisted.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import types
import warnings
from typing import Any

import gevent.monkey
from gevent import get_hub
from gevent.hub import Waiter
from twisted.internet import tcp
from twisted.internet._resolver import GAIResolver
from twisted.internet._signals import _UnixWaker
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.posixbase import _NO_FILEDESC, PosixReactorBase
from twisted.python import context, log
from twisted.python.log import ILogContext
from zope.interface import implementer

_EV_READ, _EV_WRITE = 1, 2  # libev's event masks, as gevent's loop.io takes them

# The timer of a wait with no timed call due. The hub raises LoopExit in a greenlet waiting
# on a loop with nothing left that could wake it; this keeps one.
_IDLE_WAIT = 3600.0

_LOWEST_PRIORITY = -2  # libev's EV_MINPRI: its callbacks run after all others of a loop turn

_loop_thread_ident = gevent.monkey.get_original("_thread", "get_ident")


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
    that the sockets they create, adopt or accept are `ReactorSocket`s, and their address
    conversions are the original functions.

    Transports run in the hub, where nothing may wait. Twisted's tcp module calls getnameinfo
    and getaddrinfo only with the numeric-only flags (an accepted IPv6 peer's scope id, a
    literal IPv6 address): no lookup, yet gevent's versions hand every call to its resolver's
    thread pool and wait for the answer, which in the hub raises BlockingSwitchOutError.
    """

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__(real.__name__, real.__doc__)
        self._real = real
        self.socket = ReactorSocket
        self.fromfd = _reactor_fromfd
        self.getnameinfo, self.getaddrinfo = gevent.monkey.get_original(
            "socket", ("getnameinfo", "getaddrinfo")
        )

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


class _HubWaker(_UnixWaker):
    """Twisted's self-pipe waker (threads and signals write to it), which, once drained in
    the hub, also wakes the reactor's greenlet: the calls they queued run there."""

    def __init__(self, reactor: GeventReactor) -> None:
        super().__init__()
        self._reactor = reactor

    def doRead(self) -> None:
        super().doRead()
        self._reactor._wake_soon()


def _io_callback(reactor: GeventReactor, reading: bool) -> Any:
    """The hub's callback for a descriptor ready to read (or write): what EPollReactor does
    for one event (callWithLogger around _doReadOrWrite), in one frame.

    As there, the descriptor's logPrefix is the log `system` of what its doRead or doWrite
    logs, an exception is logged, and what either returns or raises disconnects it. The
    event's log context is the default one plus that `system`: nothing the hub runs is inside
    another context of its own (the stack is shared by every greenlet of the thread).
    """
    defaults = context.defaultContextDict
    disconnect = reactor._disconnectSelectable

    def on_event(selectable: Any) -> None:
        try:
            prefix = selectable.logPrefix()
        except KeyboardInterrupt:
            raise
        except BaseException:
            prefix = "(buggy logPrefix method)"
            log.err(system=prefix)
        contexts = reactor._contexts or reactor._hub_contexts()
        contexts.append({ILogContext: {**defaults[ILogContext], "system": prefix}})
        try:
            in_read = False  # doRead said why: a ConnectionDone is then a half-close
            try:
                if selectable.fileno() == -1:
                    why = _NO_FILEDESC
                elif reading:
                    why = selectable.doRead()
                    in_read = True
                else:
                    why = selectable.doWrite()
            except BaseException:
                why = sys.exc_info()[1]
                log.err()
            if why:
                disconnect(selectable, why, in_read)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.err(system=prefix)
        finally:
            contexts.pop()

    return on_event


# A TCP server connection's read, stock Twisted's: doRead (one recv; EWOULDBLOCK is nothing
# to do, another error the connection lost), _dataReceived (no bytes: the peer closed) and a
# logPrefix that is the logstr fixed when it was made. _tcp_read_callback does all three in
# its own frame; if a Twisted release changes any of them, every descriptor takes on_event.
_INLINE_TCP_READ = (
    tcp.Server.doRead is tcp.Connection.doRead
    and tcp.Server._dataReceived is tcp.Connection._dataReceived
    and tcp.Server.logPrefix is tcp.Connection.logPrefix
)


def _reads_inline(reader: Any) -> bool:
    """Whether `reader` is a TCP server connection whose read _tcp_read_callback can do: one
    whose doRead is not replaced (abortConnection replaces it, after it stops reading)."""
    return _INLINE_TCP_READ and type(reader) is tcp.Server and "doRead" not in reader.__dict__


def _tcp_read_callback(reactor: GeventReactor) -> Any:
    """The hub's callback for a TCP server connection ready to read: on_event's read, with
    the connection's doRead and _dataReceived in line (two Python calls less per read, for
    what the daemon reads most); the outcome is on_event's.

    Its log context is one per reactor, its `system` set to the connection's prefix at each
    event rather than two dicts made per event (or kept per connection: 400 bytes each). No
    two events overlap, and what reads the context copies what it keeps (log.msg, and
    log.callWithContext for a context of its own), so none sees another event's prefix.
    """
    disconnect = reactor._disconnectSelectable
    # The default fields as they are now (twisted.python.log sets them once, at its import).
    fields = {**context.defaultContextDict[ILogContext]}
    log_context = {ILogContext: fields}

    def on_read(connection: tcp.Server) -> None:
        fields["system"] = prefix = connection.logstr
        contexts = reactor._contexts or reactor._hub_contexts()
        contexts.append(log_context)
        try:
            try:
                try:
                    data = connection.socket.recv(connection.bufferSize)
                except OSError as error:
                    why = None if error.args[0] == tcp.EWOULDBLOCK else CONNECTION_LOST
                else:
                    if data:
                        connection.protocol.dataReceived(data)
                        return
                    why = CONNECTION_DONE
                in_read = True  # doRead returned why: a ConnectionDone is then a half-close
            except BaseException:
                why = sys.exc_info()[1]
                in_read = False
                log.err()
            if why:
                disconnect(connection, why, in_read)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.err(system=prefix)
        finally:
            contexts.pop()

    return on_read


@implementer(IReactorFDSet)
class GeventReactor(PosixReactorBase):
    """A Twisted reactor whose descriptors and timed calls are watchers in gevent's hub loop."""

    def __init__(self) -> None:
        _unpatch_reactor_sockets()
        hub = get_hub()
        self._hub = hub
        self._loop = hub.loop
        self._loop_thread = hub.thread_ident
        # The fds read and written -> their active watchers (libev makes one epoll
        # registration of an fd's two; an active watcher's events are fixed). A watcher's one
        # start argument is its selectable: no table of those beside.
        self._reads: dict[int, Any] = {}
        self._writes: dict[int, Any] = {}
        self._waiter: Waiter | None = None  # set while the reactor's greenlet waits in the hub
        self._timer: Any = None  # that wait's timer, due at `_timer_due` (reactor seconds)
        self._timer_due = float("inf")
        self._wake_scheduled = False
        self._contexts: list | None = None  # found at the first descriptor event
        self._on_read = _io_callback(self, reading=True)
        self._on_write = _io_callback(self, reading=False)
        self._on_tcp_read = _tcp_read_callback(self)
        super().__init__()  # installs the waker: a reader, so after the tables above

    def _wakerFactory(self) -> _HubWaker:
        return _HubWaker(self)

    # -- descriptors: io watchers whose callbacks run in the hub ------------------------------

    def addReader(self, reader: Any) -> None:
        callback = self._on_tcp_read if _reads_inline(reader) else self._on_read
        self._add(reader, self._reads, _EV_READ, callback)

    def addWriter(self, writer: Any) -> None:
        self._add(writer, self._writes, _EV_WRITE, self._on_write)

    def _add(self, selectable: Any, watchers: dict, events: int, callback: Any) -> None:
        fd = selectable.fileno()
        known = watchers.get(fd)
        # gevent stops a watcher whose callback raised (KeyboardInterrupt goes through), and
        # drops its arguments: such a one is replaced, else the fd would never be read again.
        if known is None or not known.active:
            watcher = self._loop.io(fd, events)
            # One callback per direction (and one for TCP server reads), shared by every
            # watcher: the selectable is its only argument (a watcher's start arguments are
            # kept as long as it runs).
            watcher.start(callback, selectable)
            watchers[fd] = watcher

    def _hub_contexts(self) -> list:
        """The context stack Twisted's log reads in the hub (per thread, or per greenlet if
        `threading.local` was patched before twisted.python.context was imported)."""
        self._contexts = contexts = context.theContextTracker.currentContext().contexts
        return contexts

    def removeReader(self, reader: Any) -> None:
        self._remove(reader, self._reads)

    def removeWriter(self, writer: Any) -> None:
        self._remove(writer, self._writes)

    def _remove(self, xer: Any, watchers: dict[int, Any]) -> None:
        fd = xer.fileno()
        if fd == -1:
            # Closed already: find the descriptor it had.
            fd = next(
                (fd for fd, watcher in watchers.items() if watcher.args and watcher.args[0] is xer),
                None,
            )
            if fd is None:
                return
        watcher = watchers.pop(fd, None)
        if watcher is not None:
            watcher.stop()

    def removeAll(self) -> list[Any]:
        return self._removeAll(self.getReaders(), self.getWriters())

    def getReaders(self) -> list[Any]:
        return [watcher.args[0] for watcher in self._reads.values() if watcher.args]

    def getWriters(self) -> list[Any]:
        return [watcher.args[0] for watcher in self._writes.values() if watcher.args]

    # -- the reactor's greenlet: waits in the hub, runs the timed calls -----------------------

    def doIteration(self, delay: float | None) -> None:
        """Wait in the hub (its loop runs the I/O meanwhile) until the timer or a wake-up."""
        # Waiting from here on: a wake-up from now (a signal handler runs in this greenlet,
        # between any two steps) finds the waiter and is not lost.
        waiter = self._waiter = Waiter(self._hub)
        if self.threadCallQueue or self._justStopped:
            # Queued or stopped by the reactor's own greenlet (or a signal handler) since it
            # ran them, while nothing was waiting to be woken.
            delay = 0.0
        elif delay is None:
            delay = _IDLE_WAIT
        self._arm(delay)
        try:
            waiter.get()
        finally:
            self._waiter = None
            self._timer.stop()
            self._timer = None
            self._timer_due = float("inf")

    def iterate(self, delay: float = 0.0) -> None:
        """Run the due calls, then one turn of the hub's loop: its poll waits at most `delay`.

        As a poll reactor's iterate returns after the I/O one poll found: a check watcher runs
        after the loop's poll, and at the lowest priority after the io callbacks it queued.
        """
        self.runUntilCurrent()
        turn = self._loop.check(priority=_LOWEST_PRIORITY)
        turn.start(self._resume)
        try:
            self.doIteration(delay)
        finally:
            turn.stop()

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = timer = self._loop.timer(delay)
        # update: the loop's clock may lag (the reactor's greenlet ran since the hub's turn).
        timer.start(self._resume, update=True)
        self._timer_due = self.seconds() + delay

    def _resume(self) -> None:
        # In the hub: switch to the waiting reactor greenlet (it switches back when it waits).
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.switch(None)

    def _wake_soon(self) -> None:
        """Have the waiting reactor greenlet run at the hub's next callbacks (from any greenlet)."""
        if self._waiter is not None and not self._wake_scheduled:
            self._wake_scheduled = True
            self._loop.run_callback(self._wake)

    def _wake(self) -> None:
        self._wake_scheduled = False
        self._resume()

    # What changes when the reactor's greenlet must next run, from the hub (a transport) or a
    # greenlet (a method), while it waits: move its timer sooner, or wake it now.
    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any:
        call = super().callLater(delay, callable, *args, **kw)
        self._due_sooner(call.time)
        return call

    def _moveCallLaterSooner(self, delayedCall: Any) -> None:
        super()._moveCallLaterSooner(delayedCall)
        self._due_sooner(delayedCall.time)

    def _due_sooner(self, when: float) -> None:
        """A timed call is due at `when`: if that comes before the waiting reactor's timer,
        move the timer, or wake the reactor now when it is due already."""
        if self._waiter is not None and when < self._timer_due:
            delay = when - self.seconds()
            if delay > 0:
                self._arm(delay)
            else:
                self._wake_soon()

    def stop(self) -> None:
        super().stop()
        self._wake_soon()

    def crash(self) -> None:
        super().crash()
        self._wake_soon()

    def wakeUp(self) -> None:
        # callFromThread: from another OS thread only through the waker's pipe; from this one
        # (a greenlet, a signal handler) without the system calls.
        if _loop_thread_ident() == self._loop_thread:
            self._wake_soon()
        else:
            super().wakeUp()

    # -- rpcd's policy on top of stock Twisted ------------------------------------------------

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
