"""The real daemon over real sockets: calls, errors, concurrency, legacy envelope, shutdown."""

import time

from gevent import monkey  # noqa: F401  (imported only to prove the test process stays unpatched)


def test_call_and_errors(start_daemon):
    d = start_daemon()
    c = d.client()
    assert c.call("add", 2, 3)["result"] == 5
    assert c.call("ping")["result"] == "pong"
    assert c.call("ping", {"x": 1})["result"] == {"x": 1}
    err = c.call("add", 1)["error"]
    assert err["code"] == -32602 and "'b'" in err["message"]
    err = c.call("nosuch")["error"]
    assert err["code"] == -32601
    err = c.call("boom")["error"]
    assert err["code"] == -32603 and err["data"]["type"] == "KeyError"
    assert "secret-detail" not in err["message"]
    assert "secret-detail" in d.log()  # the traceback went to the log


def test_hundred_sleeping_calls_run_concurrently(start_daemon):
    d = start_daemon()
    c = d.client()
    started = time.monotonic()
    ids = {c.request("sleep", 0.5) for _ in range(100)}
    replies = [c.recv() for _ in range(100)]
    elapsed = time.monotonic() - started
    assert {r["id"] for r in replies} == ids
    assert all(r["result"] == 0.5 for r in replies)
    assert elapsed < 10, elapsed  # serially this would take 50 s


def test_legacy_little_endian(start_daemon):
    d = start_daemon("--byteorder", "little")
    c = d.client(byteorder="little")
    c.send({"in": "ping"})
    assert c.recv() == {"out": "pong", "result": "pong"}
    c.send({"in": "sleep", "params": 0.3})
    c.send({"in": "echo", "params": [1, 2]})
    c.send({"in": "nosuch"})
    # legacy replies come back in request order even though the sleep finishes last
    assert c.recv() == {"out": "sleep", "result": 0.3}
    assert c.recv() == {"out": "echo", "result": [1, 2]}
    reply = c.recv()
    assert reply["out"] == "error" and reply["result"]["code"] == -32601


def test_sigterm_drains_in_flight_calls(start_daemon):
    d = start_daemon("--shutdown-grace", "10")
    c = d.client()
    ids = {c.request("sleep", 1.0) for _ in range(5)}
    time.sleep(0.2)
    started = time.monotonic()
    d.proc.send_signal(15)
    replies = [c.recv() for _ in range(5)]
    assert {r["id"] for r in replies} == ids and all(r["result"] == 1.0 for r in replies)
    assert d.proc.wait(15) == 0
    assert time.monotonic() - started < 6


def test_method_returning_a_timer_deferred(start_daemon):
    # reactor.callLater from a worker greenlet while the reactor waits must wake the reactor,
    # or the Deferred only fires when some other event comes along (here: the call timeout).
    d = start_daemon("--call-timeout", "2")
    assert d.client().call("deferred_value", [1, 2])["result"] == [1, 2]
