"""The gevent-hosted reactor: timed calls scheduled by greenlets while the reactor waits.

Each case runs in a fresh interpreter (installing a reactor is once per process). The reactor
starts with nothing to do, so it waits in the hub with no timeout; a greenlet then schedules
work for the reactor, which must run it promptly instead of sleeping until unrelated I/O.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import sys
import gevent
from rpcd import reactor as gevent_reactor
reactor = gevent_reactor.install(patch=False)

def done(how):
    print(how)
    reactor.stop()

def from_a_greenlet():
    gevent.sleep(0.05)  # by now the reactor waits in the hub, with no timeout
    if sys.argv[1] == "callLater":
        reactor.callLater(0.01, done, "callLater")
    else:
        far = reactor.callLater(3600, done, "reset")
        gevent.sleep(0.05)  # the reactor waits again, now for up to an hour
        far.reset(0.01)

reactor.callWhenRunning(gevent.spawn, from_a_greenlet)
reactor.run()
"""


@pytest.mark.parametrize("how", ["callLater", "reset"])
def test_timed_call_from_a_greenlet_wakes_the_reactor(how):
    try:
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, how], capture_output=True, text=True, timeout=10
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the reactor slept through a timed call scheduled from a greenlet ({how})")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [how]
