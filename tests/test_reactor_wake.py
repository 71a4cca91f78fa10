"""GeventReactor: a greenlet that schedules work must wake the reactor waiting in the hub.

Twisted's own suites never run greenlets, so they cannot catch this; TLS needs it (its
transport flushes writes with callLater(0), and a worker greenlet writes every reply).
"""

from __future__ import annotations

import gevent
import pytest

from rpcd.reactor import GeventReactor

SAFETY = 10.0  # only reached when the wake-up is broken


def _run_with(action) -> list[str]:
    reactor = GeventReactor()
    order: list[str] = []

    def safety():
        order.append("safety timer")
        reactor.stop()

    def greenlet():
        gevent.sleep(0.05)  # by now the reactor waits in the hub, its timeout ~SAFETY
        action(reactor, order)

    timer = reactor.callLater(SAFETY, safety)
    reactor.callWhenRunning(gevent.spawn, greenlet)
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        if timer.active():
            timer.cancel()
        reactor.disconnectAll()
    return order


def _call_later(reactor, order):
    reactor.callLater(0, lambda: (order.append("scheduled call"), reactor.stop()))


def _move_sooner(reactor, order):
    call = reactor.callLater(SAFETY * 2, lambda: (order.append("moved call"), reactor.stop()))
    call.reset(0)


def _stop(reactor, order):
    order.append("stop")
    reactor.stop()


@pytest.mark.parametrize(
    "action, first",
    [(_call_later, "scheduled call"), (_move_sooner, "moved call"), (_stop, "stop")],
)
def test_greenlet_wakes_waiting_reactor(action, first):
    assert _run_with(action) == [first]
