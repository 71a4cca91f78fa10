"""The real daemon under hostile input: huge length prefixes and a flood of malformed frames."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

from tests.integration.probes import MiB, rss, wait_for

# One error reply each, and the connection stays open.
MALFORMED = [
    (b"[" * 100_000, -32700),
    (b"7" * 5000, -32700),
    (b'{"jsonrpc":"2.0","method":"\xff\xfe","id":1}', -32700),
    (b'{"jsonrpc":"2.0","method":"add","params":[NaN, 1],"id":1}', -32700),
    (b'{"jsonrpc":"2.0","method":"add","params":[Infinity, 1],"id":1}', -32700),
    (b"", -32700),
    (b"{", -32700),
    (b"42", -32600),
    (b'"add"', -32600),
    (b'{"jsonrpc":"2.0","method":["add"],"id":1}', -32600),
    (b'{"jsonrpc":"2.0","method":"add","params":"1,2","id":1}', -32600),
    (b'{"jsonrpc":"2.0","method":"add","id":{"a":1}}', -32600),
    (b'{"in":17}', -32600),
    (
        json.dumps([{"jsonrpc": "2.0", "method": "ping", "id": i} for i in range(101)]).encode(),
        -32600,
    ),  # a batch over --max-batch
]
HUGE_PREFIX = struct.pack("!I", 0xFFFFFFFF)


def _huge_prefix(port: int) -> tuple[dict, float]:
    """Send a 0xFFFFFFFF length prefix; return the reply and how long until the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(HUGE_PREFIX + b"x" * 1000)
        sent = time.monotonic()
        data = b""
        while True:
            assert time.monotonic() - sent < 10, f"not closed within 10 s: {data[:200]!r}"
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        closed = time.monotonic() - sent
    (n,) = struct.unpack("!I", data[:4])
    return json.loads(data[4 : 4 + n]), closed


def test_huge_length_prefix_is_refused_and_closed(shared_daemon):
    d = shared_daemon
    before = rss(d.proc.pid)
    for _ in range(20):
        reply, closed = _huge_prefix(d.port)
        assert reply["error"]["code"] == -32004
        # Closed at once (the StringTransport test shows no timer is involved); the bound
        # leaves room for a busy machine.
        assert closed < 0.5, closed
    assert rss(d.proc.pid) - before < 1 * MiB  # nothing of the announced 4 GiB was allocated
    assert d.client().call("add", 1, 2)["result"] == 3


def _flood(port: int, frames: int, errors: list, offset: int) -> None:
    from tests.rawclient import RawClient

    client = RawClient(port)
    kinds = [MALFORMED[(offset + i) % len(MALFORMED)] for i in range(frames)]
    for body, _ in kinds:
        client.send_bytes(body)
    for _, code in kinds:
        reply = client.recv()
        error = reply["result"] if reply.get("out") == "error" else reply["error"]  # legacy
        errors.append((error["code"], code))
    client.close()


def test_flood_of_malformed_frames_leaves_valid_calls_and_memory_intact(shared_daemon):
    d = shared_daemon
    valid = d.client()
    assert valid.call("add", 0, 0)["result"] == 0
    start_rss = rss(d.proc.pid)
    errors: list = []
    refusals: list = []
    # 4 connections x 240 malformed frames, plus 40 huge length prefixes: 1,000 in all.
    threads = [threading.Thread(target=_flood, args=(d.port, 240, errors, k)) for k in range(4)]
    threads.append(
        threading.Thread(
            target=lambda: refusals.extend(
                _huge_prefix(d.port)[0]["error"]["code"] for _ in range(40)
            )
        )
    )
    for thread in threads:
        thread.start()
    results = []
    deadline = time.monotonic() + 60
    while any(thread.is_alive() for thread in threads) or len(results) < 50:
        assert time.monotonic() < deadline, "the flood was not answered within 60 s"
        n = len(results)
        results.append(valid.call("add", n, 1).get("result") == n + 1)
        results.append(valid.call("sleep", 0.001).get("result") == 0.001)  # timers still fire
    for thread in threads:
        thread.join(30)
    assert len(errors) == 960 and all(got == want for got, want in errors)
    assert refusals == [-32004] * 40
    assert all(results), results.count(False)
    assert d.proc.poll() is None
    # Memory goes back to near where it started once the flood is answered.
    wait_for(lambda: rss(d.proc.pid) - start_rss < 10 * MiB, timeout=5, interval=0.1)
