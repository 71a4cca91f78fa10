"""The gevent-hosted reactor through the real daemon: a timed call scheduled by a method wakes
the reactor, and a reply larger than the socket buffer arrives whole. (Pipelined legacy replies
keeping their order: test_daemon.py.)"""


def test_deferred_method_is_answered_without_other_traffic(start_daemon):
    # reactor.callLater from a worker greenlet while the reactor waits must wake the reactor,
    # or the Deferred only fires when some other event comes along. No idle timer here, and
    # the call timeout (30 s) is past the client's 5 s.
    d = start_daemon("--idle-timeout", "0")
    c = d.client(timeout=5.0)
    assert c.call("deferred_value", 7)["result"] == 7
    assert c.call("deferred_value", [1, 2])["result"] == [1, 2]
    assert c.call("deferred_value", "again")["result"] == "again"


def test_reply_larger_than_the_socket_buffer(shared_daemon):
    c = shared_daemon.client()
    big = "x" * 3_000_000
    assert c.call("echo", big)["result"] == big
    assert c.call("ping")["result"] == "pong"
