"""The real daemon's blocked-loop monitor (`--max-blocking-time`): a method that does not yield
is warned of once, with its stack; an idle loop or a method that sleeps is not."""

from __future__ import annotations

import re
import time

from tests.integration.probes import wait_for

BLOCKED = "has blocked the event loop"
BUSY = "event loop busy for over"
MONITORED = ("--max-blocking-time", "0.2", "--log-level", "debug")
TRACER = ("--methods", "tests.integration.monitor_methods")


def test_method_blocking_the_loop_is_warned_of_once_with_its_stack(start_daemon):
    d = start_daemon(*MONITORED)
    c = d.client()
    assert c.call("ping")["result"] == "pong"
    assert c.call("spin", 1.5)["result"] > 0  # over seven times the limit
    wait_for(lambda: f"method spin {BLOCKED}" in d.log(), timeout=5)
    assert c.call("ping")["result"] == "pong"  # the loop runs again
    log = d.log()
    warning = log[log.index(f"method spin {BLOCKED}") :]
    assert re.search(rf"\[rpcd\.process#warn\] method spin {BLOCKED} for over 0.2 s", log)
    assert re.search(r'methods\.py", line \d+, in spin', warning)  # the method's own frame
    assert log.count(BLOCKED) == 1, log


def test_an_idle_daemon_and_a_sleeping_method_are_not_reported(start_daemon):
    d = start_daemon(*MONITORED)
    c = d.client()
    time.sleep(1.0)  # idle: the loop waits in its poll for five times the limit
    assert c.call("sleep", 1.0)["result"] == 1.0  # a wait in the loop, not a block
    assert c.call("ping")["result"] == "pong"
    log = d.log()
    assert BLOCKED not in log and BUSY not in log, log


def test_the_monitor_hooks_no_greenlet_switch(start_daemon):
    d = start_daemon(*MONITORED, *TRACER)
    reply = d.client().call("greenlet_tracer")
    assert "error" not in reply and reply["result"] is None, reply


def test_max_blocking_time_0_turns_the_monitor_off(start_daemon):
    d = start_daemon("--max-blocking-time", "0", "--log-level", "debug")
    c = d.client()
    assert c.call("spin", 0.5)["result"] > 0
    assert c.call("ping")["result"] == "pong"
    log = d.log()
    assert BLOCKED not in log and BUSY not in log, log
