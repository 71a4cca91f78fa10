"""Process-wide guards: the open-file limit, and gevent's report of a method blocking the loop.

Both concern the whole process rather than one connection or call, and both speak only
through the log: a limit that cannot be honoured is said at start-up, a blocked event loop
is said while it is blocked (from gevent's monitor thread, which keeps running meanwhile).
"""

from __future__ import annotations

import resource
import sys
import traceback
import warnings
from typing import Any

import gevent
from gevent import events
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

    gevent's monitor thread notices when no greenlet switch happened for
    `max_blocking_time` seconds and notifies an `EventLoopBlocked` event, in that thread;
    this names the method the blocked worker runs and logs its stack.
    """

    def __init__(self, dispatcher: Any, max_blocking_time: float) -> None:
        self.dispatcher = dispatcher
        self.max_blocking_time = max_blocking_time
        self._reported: Any = None  # the call last reported: one warning per blocked call

    def start(self) -> None:
        config = gevent.config
        config.max_blocking_time = self.max_blocking_time
        config.print_blocking_reports = False  # the log gets it instead of stderr
        config.monitor_thread = True
        if self._on_event not in events.subscribers:
            events.subscribers.append(self._on_event)
        with warnings.catch_warnings():
            # Its memory watch needs psutil, which rpcd does not use: not worth a warning.
            warnings.filterwarnings("ignore", message="Unable to monitor memory usage")
            gevent.get_hub().start_periodic_monitoring_thread()

    def stop(self) -> None:
        if self._on_event in events.subscribers:
            events.subscribers.remove(self._on_event)

    def _on_event(self, event: Any) -> None:
        if not isinstance(event, events.EventLoopBlocked):
            return
        call = self.dispatcher.running_in(event.greenlet)
        if call is self._reported and call is not None:
            return  # still the same call, blocked since the last report
        self._reported = call
        if call is None:
            # The reactor itself between two waits (a burst of I/O, not a method): not
            # what this setting is about, so not a warning.
            log.debug(
                "event loop busy for over {limit:g} s outside any call", limit=event.blocking_time
            )
            return
        frame = sys._current_frames().get(event.hub.thread_ident)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(unavailable)"
        log.warn(
            "method {method} has blocked the event loop for over {limit:g} s without yielding "
            "(a CPU loop or an unpatched blocking call); all other calls wait. Stack:\n{stack}",
            method=call.request.method,
            limit=event.blocking_time,
            stack=stack.rstrip("\n"),
        )
