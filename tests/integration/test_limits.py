"""Connection policy on the real daemon: connection limit, idle timeout, frame size."""

import struct
import time

from tests.rawclient import RawClient


def test_fourth_connection_gets_too_many_connections(start_daemon):
    d = start_daemon("--max-connections", "3")
    clients = [d.accepted_client() for _ in range(3)]
    fourth = d.client()
    refusal = fourth.recv()
    assert refusal["id"] is None and refusal["error"]["code"] == -32002
    assert "limit of 3" in refusal["error"]["message"]
    assert fourth.closed_by_peer()
    fourth.close()
    # The open connections were not disturbed, and a closed one frees its place.
    assert clients[0].call("echo", 1)["result"] == 1
    clients.pop().close()
    assert d.accepted_client().call("echo", 2)["result"] == 2


def test_idle_connection_is_closed_but_not_while_a_call_runs(start_daemon):
    d = start_daemon("--idle-timeout", "0.3")
    busy = d.client()
    assert busy.call("sleep", 0.8)["result"] == 0.8  # pending past the timeout: kept open
    assert busy.call("ping")["result"] == "pong"
    idle = d.client()
    started = time.monotonic()
    assert idle.closed_by_peer()
    assert time.monotonic() - started >= 0.25  # not before the timeout (timer granularity aside)


def test_frame_too_large_gets_one_error_frame_then_close(start_daemon):
    d = start_daemon("--max-frame-bytes", "1024")
    c = d.client()
    assert c.call("echo", "x" * 900)["result"] == "x" * 900
    c.sock.sendall(struct.pack("!I", 10**9))  # announces a gigabyte; sends none of it
    error = c.recv()
    assert error["error"]["code"] == -32004 and "max_frame_bytes 1024" in error["error"]["message"]
    assert c.closed_by_peer()


def test_frame_too_large_with_part_of_the_body_sent(start_daemon):
    d = start_daemon("--max-frame-bytes", "1024")
    c = RawClient(d.port)
    c.sock.sendall(struct.pack("!I", 5000) + b"y" * 2000)
    error = c.recv()
    assert error["error"]["code"] == -32004
    assert c.closed_by_peer()  # a connection left open would time out here
