"""The real daemon over real sockets: batches, notifications, order, Deferreds, streams, threads.

(The call timeout against a method that catches the exception: test_faults.py.)"""

import socket
import time

from tests.integration.conftest import SERVING


def test_batch_notification_and_out_of_order_replies(shared_daemon):
    c = shared_daemon.client()
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


def test_deferred_and_streaming_methods(shared_daemon):
    c = shared_daemon.client()
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
    deadline = time.monotonic() + 10
    while len(seen) < 2:
        assert time.monotonic() < deadline, f"no reply to the cancel and the call: {seen}"
        reply = c.recv()
        if "id" in reply:
            seen[reply["id"]] = reply
    assert seen[cancel]["result"] is True and seen[rid]["error"]["code"] == -32006
    # Cancelling a call that is no longer running answers false, and harms nothing.
    late = {"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": rid}, "id": "again"}
    c.send(late)
    assert c.recv() == {"jsonrpc": "2.0", "result": False, "id": "again"}
    assert c.call("ping")["result"] == "pong"


def test_thread_pool_and_resolver_work_under_monkey_patching(shared_daemon):
    d = shared_daemon
    since = len(d.log())
    c = d.client()
    assert c.call("in_thread", "t")["result"] == ["t", "t"]
    assert c.call("resolve", "localhost")["result"] in ("127.0.0.1", "::1")
    # The daemon is still answering afterwards, nothing warned at start-up or meanwhile.
    assert c.call("ping")["result"] == "pong"
    log = d.log()
    assert "Warning" not in log[: log.index(SERVING)]
    assert "Warning" not in log[since:] and "Traceback" not in log[since:]


def test_replies_larger_than_the_socket_buffers_arrive_whole_and_in_step(shared_daemon):
    # Replies are sent straight to the socket when nothing is queued before them: what the
    # kernel does not take must go out after, whole, before any later reply's bytes.
    c = shared_daemon.client()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    # Small requests, big replies, nothing read until all are sent: the replies overfill both
    # sockets' buffers, and the server's own (max_outbuf) pauses its reading for a while.
    sizes = [900_000, 5, 700_000, 17, 400_000] * 4
    expected = {c.request("filler", size): size for size in sizes}
    replies = {}
    for _ in expected:
        reply = c.recv()
        replies[reply["id"]] = reply["result"]
    assert {rid: len(text) for rid, text in replies.items()} == expected
    assert set("".join(replies.values())) == {"x"}
    assert c.call("ping")["result"] == "pong"  # the connection is still in step
