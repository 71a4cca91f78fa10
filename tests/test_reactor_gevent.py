"""GeventReactor beyond Twisted's suites: greenlets waking the reactor, and the patching policy.

Twisted's own suites never run greenlets, so they cannot catch a missed wake-up; TLS needs
it (its transport flushes writes with callLater(0), and a worker greenlet writes every reply).
"""

from __future__ import annotations

import gevent
import pytest

from rpcd.reactor import GeventReactor

SAFETY = 10.0  # only reached when the wake-up is broken


def _run(reactor: GeventReactor, order: list[str]) -> list[str]:
    """Run `reactor` until something stops it, or the safety timer (noted in `order`)."""

    def safety():
        order.append("safety timer")
        reactor.stop()

    timer = reactor.callLater(SAFETY, safety)
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        if timer.active():
            timer.cancel()
        reactor.disconnectAll()
    return order


def _run_with(action) -> list[str]:
    reactor = GeventReactor()
    order: list[str] = []

    def greenlet():
        gevent.sleep(0.05)  # by now the reactor waits in the hub, its timeout ~SAFETY
        action(reactor, order)

    reactor.callWhenRunning(gevent.spawn, greenlet)
    return _run(reactor, order)


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


def test_patching_policy_reaches_what_twisted_bound_before_the_patch():
    """Twisted modules imported before gevent patched (as under twistd) get the patched kinds."""
    import subprocess
    import sys
    from pathlib import Path

    check = (
        "from twisted.internet import _resolver, base; from twisted.python import threadpool\n"
        "from rpcd import reactor\n"
        "r = reactor.install()\n"
        "import gevent.monkey, socket, threading\n"
        "assert gevent.monkey.is_module_patched('socket')\n"
        "assert r.nameResolver._getaddrinfo is socket.getaddrinfo, 'resolver blocks the loop'\n"
        "assert threadpool.ThreadPool.threadFactory is threading.Thread, 'pool cannot be joined'\n"
        "r.callWhenRunning(r.callInThread, r.callFromThread, r.stop)\n"
        "r.run(installSignalHandlers=False)\n"  # stopping joins the pool's threads
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", check], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "ok", proc.stderr[-3000:]
    assert "LoopExit" not in proc.stderr, proc.stderr[-3000:]


def test_a_signal_handled_as_the_reactor_starts_waiting_still_stops_it(monkeypatch):
    # A Python signal handler runs in the reactor's greenlet between any two of its steps;
    # one that lands as the reactor sets up its wait must not go unseen until the next
    # timed call (an hour when the daemon is idle).
    import rpcd.reactor

    reactor = GeventReactor()
    order: list[str] = []
    armed: list[bool] = []
    real_waiter = rpcd.reactor.Waiter

    def waiter(hub):
        if armed:
            armed.clear()
            reactor.sigTerm(15)  # what SIGTERM's handler does, at this very point
        return real_waiter(hub)

    monkeypatch.setattr(rpcd.reactor, "Waiter", waiter)
    reactor.callLater(0.05, armed.append, True)
    assert _run(reactor, order) == []  # stopped by the signal, not by the safety timer
