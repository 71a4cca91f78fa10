"""The blocked-loop monitor: what it says of a call blocking the loop, and when it says nothing.

Its looks (`sample`) are taken by hand here, from inside a worker's call, with the times
given: a method that does not yield is, for the loop, a method blocking it. The monitor's own
thread is run for real only where the loop must be idle or a worker really blocks it.
"""

from __future__ import annotations

import sys
import time

import gevent
import greenlet
import pytest
from twisted.logger import formatEvent, globalLogPublisher

from rpcd.dispatch import Dispatcher
from rpcd.methods import Registry
from rpcd.process import BlockingMonitor
from rpcd.wire import Request
from tests.conftest import CollectingSink as Sink
from tests.conftest import wait_for

LIMIT = 0.5  # not the default: see `logged`


@pytest.fixture
def logged():
    """logged(monitor): its log lines, formatted, with their level's name. Picked by their
    limit: services other tests start (and leave running) have monitors at the default 1 s."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)

    def read(monitor: BlockingMonitor) -> list[tuple[str, str]]:
        return [
            (e["log_level"].name, formatEvent(e))
            for e in list(events)
            if e.get("log_namespace") == "rpcd.process"
            and e.get("limit") == monitor.max_blocking_time
        ]

    yield read
    globalLogPublisher.removeObserver(events.append)


def run(monitor: BlockingMonitor, body) -> None:
    """Run `body()` as the method `stuck`, in a worker of the monitor's dispatcher."""
    monitor.dispatcher.registry.add("stuck", body)
    sink = Sink()
    monitor.dispatcher.submit(Request("stuck", (), 1), sink)
    assert sink.wait(1).error is None


@pytest.fixture
def monitor():
    return BlockingMonitor(Dispatcher(Registry()), LIMIT)


def warnings(lines):
    return [text for level, text in lines if level == "warn"]


def test_a_call_blocking_the_loop_is_warned_of_once_with_its_method_and_stack(monitor, logged):
    def stuck():
        for now in (10.0, 10.25, 10.5, 10.75, 11.0):
            monitor.sample(now)

    run(monitor, stuck)
    [warning] = warnings(logged(monitor))
    assert warning.startswith("method stuck has blocked the event loop for over 0.5 s")
    assert ", in stuck\n    monitor.sample(now)" in warning  # the method's own frame


def test_the_same_call_blocking_again_after_the_loop_ran_is_not_warned_of_again(monitor, logged):
    def stuck():
        monitor.sample(0.0)
        monitor.sample(0.5)
        gevent.sleep(0.001)  # the loop polls
        monitor.sample(1.0)
        monitor.sample(1.5)

    run(monitor, stuck)
    assert len(warnings(logged(monitor))) == 1


def test_no_warning_before_max_blocking_time(monitor, logged):
    def stuck():
        monitor.sample(0.0)
        monitor.sample(0.49)

    run(monitor, stuck)
    assert logged(monitor) == []


def test_no_warning_when_the_loop_polled_between_two_looks(monitor, logged):
    def stuck():
        for now in (0.0, 0.4, 0.8, 1.2):
            monitor.sample(now)
            gevent.sleep(0.001)

    run(monitor, stuck)
    assert logged(monitor) == []


def test_a_loop_busy_outside_any_call_is_a_debug_line_once(monitor, logged):
    # The test's own greenlet, no worker: as the reactor's code running between two polls.
    for now in (0.0, 0.5, 1.0):
        monitor.sample(now)
    assert logged(monitor) == [("debug", "event loop busy for over 0.5 s outside any call")]


def test_its_thread_says_nothing_of_an_idle_loop_and_sets_no_greenlet_tracer(logged):
    monitor = BlockingMonitor(Dispatcher(Registry()), 0.05)
    monitor.start()
    try:
        assert greenlet.gettrace() is None  # no hook on each greenlet switch
        gevent.sleep(0.5)  # the loop waits in its poll, its iteration count stands still
    finally:
        monitor.stop()
    assert logged(monitor) == []


def test_its_thread_names_a_worker_that_blocks_the_loop(logged):
    monitor = BlockingMonitor(Dispatcher(Registry()), 0.02)
    monitor.start()
    try:

        def stuck():
            deadline = time.monotonic() + 5
            while not warnings(logged(monitor)) and time.monotonic() < deadline:
                pass  # a CPU loop: never yields

        run(monitor, stuck)
        gevent.sleep(0.1)  # the loop idle again: nothing more to say
    finally:
        monitor.stop()
    [warning] = warnings(logged(monitor))
    assert warning.startswith("method stuck has blocked the event loop for over 0.02 s")


def test_stop_ends_its_thread_and_it_can_start_again():
    monitor = BlockingMonitor(Dispatcher(Registry()), 0.02)
    threads = len(sys._current_frames())
    for _ in range(2):
        monitor.start()
        wait_for(lambda: len(sys._current_frames()) == threads + 1, timeout=2)
        monitor.stop()
        wait_for(lambda: len(sys._current_frames()) == threads, timeout=2)
