"""The gevent-hosted reactor: Twisted's EPollReactor whose blocking wait yields to gevent's hub.

One OS thread runs both loops. The reactor lives in the main greenlet; whenever it has
nothing ready it waits on its epoll descriptor *through* the hub, so every greenlet that is
ready (the method calls) runs meanwhile. Everything else is stock Twisted.
"""

from __future__ import annotations

import select
import sys
import warnings

import gevent
import gevent.monkey
from gevent import get_hub
from gevent.hub import Waiter
from twisted.logger import Logger

_EPOLL_EVENTS = ("epoll", "EPOLLIN", "EPOLLOUT", "EPOLLERR", "EPOLLHUP")
_ABSENT = object()
_log = Logger()


def monkey_patch() -> None:
    """Apply gevent's monkey-patching, quietly, before Twisted's reactor exists.

    `twistd` has imported `ssl` before any plugin can run; no SSL object exists yet, so the
    patch is sound and gevent's warning about it is noise an operator should not see.
    """
    if gevent.monkey.is_module_patched("socket"):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gevent.monkey.MonkeyPatchWarning)
        gevent.monkey.patch_all()


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
_EPOLLOUT = _epollreactor.EPOLLOUT


class GeventReactor(_epollreactor.EPollReactor):
    """EPollReactor whose wait is a gevent wait, so greenlets run while the reactor idles.

    Writes are optimistic: a descriptor that starts writing is first just remembered, and
    written to directly before the next poll (a socket is nearly always writable); only one
    that cannot take all its data is registered with epoll for writability. That spares two
    epoll_ctl calls and a poll round per reply, and replies written in one hub turn leave in
    one send.
    """

    def __init__(self) -> None:
        super().__init__()
        self._hub = get_hub()
        self._watcher = self._hub.loop.io(self._poller.fileno(), 1)
        self._pending_callbacks = self._hub.loop._callbacks
        self._ready_writers: dict = {}  # writers to try directly, before any epoll registration
        self._waiter: Waiter | None = None  # set while the reactor is parked in the hub
        self._wake_scheduled = False
        self._after_turn: list = []

    # -- optimistic writes -------------------------------------------------------------------

    def callAfterGreenlets(self, f) -> None:
        """Call `f()` in the reactor once the greenlets ready now have run, before the writes
        are flushed: a protocol gathers what its greenlets wrote into one write."""
        self._after_turn.append(f)
        self._wake_soon()

    def addWriter(self, writer) -> None:
        if writer in self._ready_writers or writer.fileno() in self._writes:
            return
        self._ready_writers[writer] = None
        self._wake_soon()

    def _wake_soon(self) -> None:
        if self._waiter is not None and not self._wake_scheduled:
            # Something a greenlet did while the reactor waits needs the reactor now.
            self._wake_scheduled = True
            self._hub.loop.run_callback(self._wake)

    # A greenlet (a method returning a Deferred, say) may schedule a timed call while the
    # reactor waits with a timeout computed before it: wake the reactor to wait again with
    # the new deadline, or the call would run only at the next unrelated event.
    def callLater(self, delay: float, callable, *args, **kw):
        call = super().callLater(delay, callable, *args, **kw)
        self._wake_soon()
        return call

    def _moveCallLaterSooner(self, delayedCall) -> None:
        super()._moveCallLaterSooner(delayedCall)
        self._wake_soon()

    def removeWriter(self, writer) -> None:
        if self._ready_writers.pop(writer, _ABSENT) is _ABSENT:
            super().removeWriter(writer)

    def getWriters(self) -> list:
        return super().getWriters() + list(self._ready_writers)

    def removeAll(self) -> list:
        pending = list(self._ready_writers)
        self._ready_writers.clear()
        removed = super().removeAll()
        return removed + [writer for writer in pending if writer not in removed]

    def _wake(self) -> None:
        self._wake_scheduled = False
        waiter = self._waiter
        if waiter is not None:
            waiter.switch(None)

    def _flush_writers(self) -> None:
        """Write every remembered writer now; register with epoll those that could not finish."""
        if self._after_turn:
            calls, self._after_turn = self._after_turn, []
            for f in calls:
                try:
                    f()
                except BaseException:
                    _log.failure("error in a callAfterGreenlets function")
        ready = self._ready_writers
        drdw = self._doReadOrWrite
        for writer in list(ready):
            if writer not in ready:
                continue  # closed by an earlier writer's callbacks
            drdw(writer, -1, _EPOLLOUT)
            if ready.pop(writer, _ABSENT) is not _ABSENT:
                super().addWriter(writer)  # still has data: wait for writability

    # -- the wait ----------------------------------------------------------------------------

    def doPoll(self, timeout: float | None) -> None:
        poller = self._poller
        if self._pending_callbacks:
            gevent.sleep(0)  # greenlets are ready (calls to run): one hub turn, no waiting
            if timeout != 0:
                timeout = self.timeout()  # they may have scheduled timed calls meanwhile
        if self._ready_writers or self._after_turn:
            self._flush_writers()  # what they (or the last iteration) wrote leaves now
        # Poll first: under load events are already waiting and no hub round-trip is needed.
        events = poller.poll(0, len(self._selectables))
        if not events and timeout != 0 and not self._pending_callbacks:
            self._wait(timeout)
            if self._ready_writers or self._after_turn:
                self._flush_writers()
            events = poller.poll(0, len(self._selectables))
        drdw = self._doReadOrWrite
        selectables = self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                drdw(selectable, fd, event)

    doIteration = doPoll

    # Twisted re-raises a stopping signal at exit; a daemon that drained cleanly exits 0.
    def sigInt(self, number: int, frame: object = None) -> None:
        super().sigInt(number, frame)
        self._exitSignal = None

    def sigTerm(self, number: int, frame: object = None) -> None:
        super().sigTerm(number, frame)
        self._exitSignal = None

    def _wait(self, timeout: float | None) -> None:
        """Block in the hub until the epoll descriptor is readable, a greenlet writes, or
        `timeout` passes."""
        waiter = self._waiter = Waiter(self._hub)
        watcher = self._watcher
        timer = None
        watcher.start(waiter.switch, None)
        try:
            if timeout is not None and timeout >= 0:
                timer = self._hub.loop.timer(timeout)
                timer.start(waiter.switch, None)
            waiter.get()
        finally:
            self._waiter = None
            watcher.stop()
            if timer is not None:
                timer.close()


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


__all__ = ["GeventReactor", "install", "installed", "monkey_patch"]
