"""The real daemon when methods misbehave, clients vanish mid-call, and it is told to stop."""

from __future__ import annotations

import socket
import struct
import time

from tests.integration.probes import stats, wait_for


def test_raising_method_answers_internal_error_and_logs_the_traceback(shared_daemon):
    d = shared_daemon
    since = len(d.log())
    c = d.client()
    reply = c.call("boom")
    assert reply["error"]["code"] == -32603 and reply["error"]["data"] == {"type": "KeyError"}
    assert "Traceback" not in str(reply) and "secret-detail" not in str(reply)
    wait_for(lambda: "Traceback" in d.log(since) and "secret-detail" in d.log(since), timeout=5)
    assert c.call("add", 1, 1)["result"] == 2


def test_call_timeout_stops_a_method_that_catches_exception(start_daemon):
    d = start_daemon("--call-timeout", "0.5")
    c = d.client()
    started = time.monotonic()
    reply = c.call("stubborn", 10)
    elapsed = time.monotonic() - started
    assert reply["error"]["code"] == -32001
    assert 0.45 < elapsed < 3, elapsed
    figures = stats(c)
    # Only the stats call runs: the stubborn method's greenlet was stopped, not abandoned.
    assert figures["workers"]["busy"] == 1 and figures["calls"]["in_flight"] == 1


def test_client_gone_mid_call_frees_its_worker_and_slot(start_daemon):
    d = start_daemon()
    control = d.client()
    victim = d.client()
    victim.request("sleep", 30)
    wait_for(lambda: stats(control)["calls"]["in_flight"] == 2, timeout=5)
    # An abortive close (RST): a plain close is a FIN, which rpcd must read as a half-close
    # and still answer (printf ... | nc); a reset says the peer is gone.
    victim.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    victim.close()
    took = wait_for(lambda: stats(control)["calls"]["in_flight"] == 1, timeout=5, interval=0.001)
    assert took < 0.1, took
    figures = stats(control)
    assert figures["workers"]["busy"] == 1 and figures["connections"]["open"] == 1


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_lets_twenty_in_flight_calls_finish(start_daemon):
    d = start_daemon("--shutdown-grace", "10")
    c = d.client()
    ids = {c.request("sleep", 5) for _ in range(20)}
    wait_for(lambda: stats(d.client())["calls"]["in_flight"] == 21, timeout=5)
    signalled = time.monotonic()
    d.proc.send_signal(15)
    wait_for(lambda: _refused(d.port), timeout=1)  # the listener closes at once
    replies = [c.recv() for _ in range(20)]
    assert {r["id"] for r in replies} == ids and all(r["result"] == 5 for r in replies)
    assert d.proc.wait(10) == 0
    assert time.monotonic() - signalled < 6


def test_sigterm_refuses_new_calls_and_answers_those_past_the_grace(start_daemon):
    d = start_daemon("--shutdown-grace", "1.5", "--call-timeout", "60")
    c = d.client()
    ids = {c.request("sleep", 30) for _ in range(5)} | {c.request("stubborn", 30)}
    wait_for(lambda: stats(d.client())["calls"]["in_flight"] == 7, timeout=5)
    signalled = time.monotonic()
    d.proc.send_signal(15)
    wait_for(lambda: _refused(d.port), timeout=1)  # the signal is being handled
    late = c.request("ping")  # a call sent while draining is refused
    replies = [c.recv() for _ in range(7)]
    answered = time.monotonic() - signalled
    assert {r["id"] for r in replies} == ids | {late}
    assert all(r["error"]["code"] == -32005 for r in replies)
    assert 1.4 < answered < 3, answered
    assert d.proc.wait(5) == 0
    assert time.monotonic() - signalled - answered < 1.5  # exits right after
