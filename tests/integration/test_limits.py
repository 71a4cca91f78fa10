"""Connection policy on the real daemon: idle timeout, frame size. (The connection limit:
test_overload.py.)"""

import struct
import time

from tests.rawclient import RawClient


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
    # With part of the body sent too: the same error, and closed (a connection left open
    # would time out here).
    c = RawClient(d.port)
    c.sock.sendall(struct.pack("!I", 5000) + b"y" * 2000)
    error = c.recv()
    assert error["error"]["code"] == -32004
    assert c.closed_by_peer()
