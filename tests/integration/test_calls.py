"""The real daemon over real sockets: batches, notifications, order, Deferreds, streams, threads."""

import time


def test_batch_notification_and_out_of_order_replies(start_daemon):
    d = start_daemon()
    c = d.client()
    c.send(
        [
            {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1},
            {"jsonrpc": "2.0", "method": "echo", "params": ["n"]},
            {"jsonrpc": "2.0", "method": "nosuch", "id": 2},
            {"jsonrpc": "2.0", "method": 5, "id": 3},
        ]
    )
    batch = c.recv()
    assert isinstance(batch, list)
    assert sorted(batch, key=lambda r: r["id"]) == [
        {"jsonrpc": "2.0", "result": 3, "id": 1},
        {
            "jsonrpc": "2.0",
            "error": {
                "code": -32601,
                "message": "method not found: nosuch",
                "data": {"method": "nosuch"},
            },
            "id": 2,
        },
        {
            "jsonrpc": "2.0",
            "error": {"code": -32600, "message": 'invalid request: "method" must be a string'},
            "id": 3,
        },
    ]
    # Notifications (even of unknown methods) get nothing back: the next frame is the ping's.
    c.send({"jsonrpc": "2.0", "method": "echo", "params": [1]})
    c.send({"jsonrpc": "2.0", "method": "nosuch"})
    c.send([{"jsonrpc": "2.0", "method": "echo", "params": [2]}])
    assert c.call("ping")["result"] == "pong"
    # A slow call sent first is answered after a quick one sent second.
    slow = c.request("sleep", 0.5)
    quick = c.request("sleep", 0.01)
    assert [c.recv()["id"], c.recv()["id"]] == [quick, slow]


def test_deferred_and_streaming_methods(start_daemon):
    d = start_daemon()
    c = d.client()
    assert c.call("deferred_value", {"x": 1})["result"] == {"x": 1}
    rid = c.request("ticker", 3, 0.01)
    frames = [c.recv() for _ in range(4)]
    assert frames[:3] == [
        {"jsonrpc": "2.0", "method": "rpc.stream", "params": {"id": rid, "item": i}}
        for i in range(3)
    ]
    assert frames[3] == {"jsonrpc": "2.0", "result": 3, "id": rid}
    # A long stream stopped with rpc.cancel ends with -32006.
    rid = c.request("ticker", 1000, 0.05)
    assert c.recv()["params"] == {"id": rid, "item": 0}
    cancel = "stop-it"
    c.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": rid}, "id": cancel})
    seen = {}
    while len(seen) < 2:
        reply = c.recv()
        if "id" in reply:
            seen[reply["id"]] = reply
    assert seen[cancel]["result"] is True and seen[rid]["error"]["code"] == -32006


def test_thread_pool_and_resolver_work_under_monkey_patching(start_daemon):
    d = start_daemon()
    c = d.client()
    assert c.call("in_thread", "t")["result"] == ["t", "t"]
    assert c.call("resolve", "localhost")["result"] in ("127.0.0.1", "::1")
    # The daemon is still answering afterwards, and nothing warned at start-up.
    assert c.call("ping")["result"] == "pong"
    assert "Warning" not in d.log() and "Traceback" not in d.log()


def test_call_timeout_stops_a_method_that_catches_exception(start_daemon):
    d = start_daemon("--call-timeout", "0.3")
    c = d.client()
    started = time.monotonic()
    err = c.call("stubborn", 5)["error"]
    assert err["code"] == -32001
    assert time.monotonic() - started < 4  # answered at the timeout, not after 5 s of sleeping
