"""Process-wide guards: the open-file limit, and the report of a method blocking the loop.

Both concern the whole process rather than one connection or call, and both speak only
through the log: a limit that cannot be honoured is said at start-up, a blocked event loop
is said while it is blocked (from a monitor thread of its own, which keeps running meanwhile).
"""

from __future__ import annotations

import _thread
import resource
import sys
import time
import traceback
from typing import Any

import gevent
import gevent.monkey
from gevent.hub import Hub
from greenlet import greenlet
from twisted.logger import Logger

log = Logger()

# Descriptors rpcd needs besides its connections: listeners, epoll, log files, the
# standard streams, and what methods open (sockets, files) while they run.
FD_HEADROOM = 64


def raise_fd_limit(max_connections: int) -> int:
    """Raise the soft open-file limit toward the hard one; say if max_connections can't fit.

    Returns the soft limit in force afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    wanted = max_connections + FD_HEADROOM
    # An infinite hard limit is still capped by the kernel (nr_open): ask only for what we need.
    target = max(soft, wanted) if hard == resource.RLIM_INFINITY else hard
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warn(
                "could not raise the open-file limit from {soft} to {target}: {exc}",
                soft=soft,
                target=target,
                exc=exc,
            )
        else:
            log.info("open-file limit raised from {soft} to {target}", soft=soft, target=target)
            soft = target
    if soft < wanted:
        log.warn(
            "max_connections {max_connections} cannot be honoured: the open-file limit is "
            "{limit} (hard limit {hard}) and rpcd needs about {wanted}; connections past "
            "the limit are accepted and closed at once",
            max_connections=max_connections,
            limit=soft,
            hard=hard,
            wanted=wanted,
        )
    return soft


class BlockingMonitor:
    """Reports, as a warning in rpcd's log, a call that keeps the event loop from running.

    A thread of its own samples, every quarter of `max_blocking_time`, the loop's iteration
    count (libev's, bumped before each poll) and what the loop's thread runs. The loop is
    blocked when that thread is out of the loop (not in `Hub.run`, where the poll waits: an
    idle loop's count stands still too) in the same greenlet at two samples of one
    iteration: it has not polled in between. Once that has lasted `max_blocking_time`, this
    names the method that greenlet's call runs and logs its stack. Nothing runs on the
    loop's side: no hook on greenlet switches (gevent's own monitor traces every one), no
    marker per loop turn. So blocked means the loop has not polled: a method that yields
    only with `gevent.sleep(0)` runs again from the loop's callbacks without a poll (up to
    50 times in a row), and is reported if those chunks add up to `max_blocking_time`.
    """

    def __init__(self, dispatcher: Any, max_blocking_time: float) -> None:
        self.dispatcher = dispatcher
        self.max_blocking_time = max_blocking_time
        # Reported once blocked for 1 to 1.25 times it (a lock's wait has a longest timeout).
        self.interval = min(max_blocking_time / 4, _thread.TIMEOUT_MAX)
        self._hub = gevent.get_hub()
        self._stopping: Any = None  # held while the thread runs; released to stop it
        self._stopped: Any = None  # held until the thread has ended
        # The monitor thread's own state: the stall seen (the loop's iteration and the
        # greenlet running, out of the loop) and since when; whether it was said; the call
        # last warned about.
        self._stall: tuple[int, int] | None = None
        self._stalled_since = 0.0
        self._said = False
        self._reported: Any = None  # one warning per blocked call

    def start(self) -> None:
        if self._stopping is not None:
            return
        self._stopping, self._stopped = _allocate_lock(), _allocate_lock()
        self._stopping.acquire()
        self._stopped.acquire()
        # A real thread (the patched ones are greenlets, which cannot run while it is blocked).
        _start_new_thread(self._watch, (self._stopping, self._stopped))

    def stop(self) -> None:
        stopping, stopped = self._stopping, self._stopped
        if stopping is None:
            return
        self._stopping = self._stopped = None
        stopping.release()
        stopped.acquire(True, 1.0)  # it wakes at once; bounded all the same

    def _watch(self, stopping: Any, stopped: Any) -> None:
        try:
            while not stopping.acquire(True, self.interval):
                self.sample(time.monotonic())
        except Exception:
            log.failure("blocked-loop monitor failed; it is off from now on")
        finally:
            stopped.release()

    def _look(self) -> tuple[tuple[int, int] | None, Any]:
        """The loop's iteration and the greenlet its thread runs (its bottom frame's id),
        None while the thread is in the loop itself; and that thread's top frame."""
        hub = self._hub
        iteration = hub.loop.iteration
        frame = sys._current_frames().get(hub.thread_ident)
        if frame is None or frame.f_code is _IN_LOOP:
            return None, frame  # in the loop: waiting in its poll, or between callbacks
        # Which greenlet runs: each has a bottom frame of its own (its run function's).
        bottom = frame
        while bottom.f_back is not None:
            bottom = bottom.f_back
        return (iteration, id(bottom)), frame

    def sample(self, now: float) -> None:
        """Look at the loop once (in the monitor thread, or a test's)."""
        stall, frame = self._look()
        if stall is None:
            self._stall = None
            return
        if stall != self._stall:
            self._stall, self._stalled_since, self._said = stall, now, False
            return
        if self._said or now - self._stalled_since < self.max_blocking_time:
            return
        self._said = True
        self._report(frame)

    def _running_call(self) -> Any:
        """The call of the worker the loop's thread runs: the one worker on a call that has
        started and not ended with no frame saved (one switched away keeps its top frame)."""
        for call in self.dispatcher.in_flight_calls():
            worker = call.worker
            if worker is not None and worker.gr_frame is None and _active(worker):
                return call
        return None

    def _report(self, frame: Any) -> None:
        call = self._running_call()
        if self._stall != self._look()[0]:
            # The loop ran on while the call was looked for (the GIL went back to it): the
            # call found may be another than the one whose stack was sampled. Say nothing.
            self._said = False
            return
        if call is None:
            # The reactor itself between two waits (a burst of I/O, not a method): not
            # what this setting is about, so not a warning.
            log.debug(
                "event loop busy for over {limit:g} s outside any call",
                limit=self.max_blocking_time,
            )
            return
        if call is self._reported:
            return  # the same call, blocked again since its report
        self._reported = call
        stack = "".join(traceback.format_stack(frame))
        log.warn(
            "method {method} has blocked the event loop for over {limit:g} s without yielding "
            "(a CPU loop or an unpatched blocking call); all other calls wait. Stack:\n{stack}",
            method=call.request.method,
            limit=self.max_blocking_time,
            stack=stack.rstrip("\n"),
        )


# Where the loop's thread is while the loop waits in its poll or runs no Python callback.
_IN_LOOP = Hub.run.__code__
# Started and not ended (a gevent Greenlet is truthy from its spawn, before it has run).
_active = greenlet.__bool__
_allocate_lock = gevent.monkey.get_original("_thread", "allocate_lock")
_start_new_thread = gevent.monkey.get_original("_thread", "start_new_thread")
