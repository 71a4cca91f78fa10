"""The real daemon over real sockets: calls, errors, concurrency, the legacy envelope."""

import time

from gevent import monkey  # noqa: F401  (imported only to prove the test process stays unpatched)

# A raising method and the shutdown drain are tested in test_faults.py (with the stricter
# assertions); a timer-driven Deferred in test_reactor_paths.py.


def test_call_and_errors(shared_daemon):
    c = shared_daemon.client()
    assert c.call("add", 2, 3)["result"] == 5
    assert c.call("ping")["result"] == "pong"
    assert c.call("ping", {"x": 1})["result"] == {"x": 1}
    err = c.call("add", 1)["error"]
    assert err["code"] == -32602 and "'b'" in err["message"]
    err = c.call("nosuch")["error"]
    assert err["code"] == -32601


def test_hundred_sleeping_calls_run_concurrently(shared_daemon):
    c = shared_daemon.client()
    started = time.monotonic()
    ids = {c.request("sleep", 0.5) for _ in range(100)}
    replies = [c.recv() for _ in range(100)]
    elapsed = time.monotonic() - started
    assert {r["id"] for r in replies} == ids
    assert all(r["result"] == 0.5 for r in replies)
    assert elapsed < 10, elapsed  # serially this would take 50 s


def test_legacy_little_endian_replies_keep_request_order(start_daemon):
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
    # ... and so do 200 pipelined at once
    for i in range(200):
        c.send({"in": "echo", "params": i})
    assert [c.recv()["result"] for _ in range(200)] == list(range(200))
