"""The gevent-hosted reactor through the real daemon: a timed call scheduled by a method wakes
the reactor, a reply larger than the socket buffer arrives whole, and pipelined legacy replies
keep their order."""


def test_deferred_method_is_answered_without_other_traffic(start_daemon):
    d = start_daemon("--idle-timeout", "0")
    c = d.client(timeout=5.0)  # the reactor used to sleep until its next unrelated event
    assert c.call("deferred_value", 7)["result"] == 7
    assert c.call("deferred_value", "again")["result"] == "again"


def test_reply_larger_than_the_socket_buffer(start_daemon):
    d = start_daemon()
    c = d.client()
    big = "x" * 3_000_000
    assert c.call("echo", big)["result"] == big
    assert c.call("ping")["result"] == "pong"


def test_pipelined_legacy_replies_keep_request_order(start_daemon):
    d = start_daemon()
    c = d.client()
    for i in range(200):
        c.send({"in": "echo", "params": i})
    assert [c.recv()["result"] for _ in range(200)] == list(range(200))
