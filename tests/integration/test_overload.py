"""The real daemon overloaded: connection limits, churn, descriptor exhaustion, greedy peers."""

from __future__ import annotations

import json
import resource
import select
import socket
import struct
import time

import pytest

from tests.conftest import free_port, wait_for
from tests.integration.probes import MiB, rss, stats
from tests.rawclient import RawClient


def _read_all_until_eof(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_connections_past_max_connections_get_one_frame_and_are_closed(start_daemon):
    port = free_port()
    # A backlog above 150 (Twisted's default is 50): the connects all land at once.
    start_daemon(
        "--max-connections", "100", "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=256"
    )
    control = RawClient(port)  # the first of the 150; served once the fixture's probe is gone
    wait_for(lambda: stats(control)["connections"]["open"] == 1, timeout=5)
    socks = [control.sock] + [
        socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(149)
    ]
    connected = time.monotonic()
    refused = set()
    while len(refused) < 50 and time.monotonic() - connected < 3:
        readable, _, _ = select.select([s for s in socks if s not in refused], [], [], 0.2)
        refused.update(readable)
    assert len(refused) == 50
    for sock in refused:
        data = _read_all_until_eof(sock, 1.0)
        (n,) = struct.unpack("!I", data[:4])
        assert len(data) == 4 + n  # one frame, then the close
        refusal = json.loads(data[4:])
        assert refusal["id"] is None and refusal["error"]["code"] == -32002
        assert "limit of 100" in refusal["error"]["message"]
    assert time.monotonic() - connected < 1.0 + 0.5  # closed within 1 s (select slack)
    served = [s for s in socks if s not in refused]
    assert len(served) == 100 and control.sock in served
    for sock in served[1:]:
        client = RawClient.__new__(RawClient)
        client.sock, client.prefix, client._ids = sock, "!I", iter(range(1, 10))
        assert client.call("ping")["result"] == "pong"
    figures = stats(control)["connections"]
    assert figures["open"] == 100 and figures["refused"] == {"max_connections": 50}
    assert figures["accepted"] == 101  # with the fixture's readiness probe
    # A closed connection frees its place (once rpcd has seen it go).
    served.pop().close()
    wait_for(lambda: stats(control)["connections"]["open"] == 99, timeout=5)
    assert RawClient(port).call("echo", 2)["result"] == 2
    for sock in socks:
        sock.close()


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_ten_thousand_connect_close_cycles_leave_no_connection_open(start_daemon):
    port = free_port()
    # A backlog above a round's connects: none is dropped and retried a second later.
    start_daemon("--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024")
    control = RawClient(port)
    accepted_before = stats(control)["connections"]["accepted"]
    body = b'{"jsonrpc":"2.0","method":"sleep","params":[30],"id":1}'
    call = struct.pack("!I", len(body)) + body
    batch = 500
    for round_ in range(10_000 // batch):
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(batch)]
        if round_ % 2:
            for sock in socks:
                sock.close()
            # Loopback reuses a TIME_WAIT port at once; were rpcd's end still open, that
            # port's next SYN would be ignored and retried a second later.
            wait_for(lambda: stats(control)["connections"]["open"] == 1, timeout=10, interval=0.001)
        else:  # half the cycles: reset while a call is running
            for sock in socks:
                sock.sendall(call)
            # (the stats call is in flight too)
            wait_for(
                lambda: stats(control)["calls"]["in_flight"] == batch + 1,
                timeout=10,
                interval=0.001,
            )
            for sock in socks:
                _reset(sock)
    wait_for(lambda: stats(control)["connections"]["open"] == 1, timeout=10)
    figures = stats(control)
    assert figures["connections"]["accepted"] == accepted_before + 10_000
    # Only the stats call itself is still running.
    assert figures["calls"]["in_flight"] == 1 and figures["workers"]["busy"] == 1


def _connect(family: int, address: tuple) -> RawClient:
    sock = socket.socket(family)
    sock.settimeout(5)
    sock.connect(address)
    client = RawClient.__new__(RawClient)
    client.sock, client.prefix, client._ids = sock, "!I", iter(range(1, 1000))
    return client


def test_per_peer_limit_with_ipv4_and_ipv6_peers(start_daemon):
    port6 = free_port("::1")
    d = start_daemon(
        "--max-connections-per-peer", "3", "--listen", f"tcp6:{port6}:interface=\\:\\:1"
    )
    first = d.client()
    wait_for(lambda: stats(first)["connections"]["open"] == 1, timeout=5)  # the probe is gone
    v4 = (socket.AF_INET, ("127.0.0.1", d.port))
    v6 = (socket.AF_INET6, ("::1", port6))
    clients = {v4: [first, _connect(*v4), _connect(*v4)], v6: [_connect(*v6) for _ in range(3)]}
    for peer in (v4, v6):
        for client in clients[peer]:
            assert client.call("ping")["result"] == "pong"
        extra = _connect(*peer)
        data = _read_all_until_eof(extra.sock, 2.0)
        assert json.loads(data[4:])["error"]["data"] == {"limit": "max_connections_per_peer"}
        extra.close()
    figures = stats(first)["connections"]
    assert figures["open"] == 6 and figures["refused"] == {"max_connections_per_peer": 2}
    for peer in (v4, v6):  # a closed connection frees its peer's slot, exactly once
        clients[peer].pop().close()
    wait_for(lambda: stats(first)["connections"]["open"] == 4, timeout=5)
    for peer in (v4, v6):
        replacement = _connect(*peer)
        assert replacement.call("ping")["result"] == "pong"
        clients[peer].append(replacement)
    assert stats(first)["connections"]["open"] == 6
    for client in clients[v4] + clients[v6]:
        client.close()


def _limit_files(n: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return preexec


def test_running_out_of_descriptors_is_survived(start_daemon):
    d = start_daemon(preexec_fn=_limit_files(64))
    assert "max_connections 1024 cannot be honoured" in d.log()
    served, dropped = [], 0
    for _ in range(80):
        client = d.client(timeout=5)
        try:
            assert client.call("ping")["result"] == "pong"
            served.append(client)
        except (ConnectionError, OSError):
            dropped += 1  # accepted and closed at once: no descriptor to serve it with
            client.close()
    assert 10 < len(served) < 64 and dropped == 80 - len(served)
    for client in served[:10]:
        client.close()
    wait_for(lambda: stats(served[10])["connections"]["open"] == len(served) - 10, timeout=5)
    fresh = [d.client(timeout=5) for _ in range(5)]
    assert all(c.call("ping")["result"] == "pong" for c in fresh)  # service resumed
    assert d.proc.poll() is None
    for client in served[10:] + fresh:
        client.close()


def test_start_up_raises_the_open_file_soft_limit(start_daemon):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"hard open-file limit {hard} is too low to show the raise")

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    d = start_daemon(preexec_fn=preexec)
    with open(f"/proc/{d.proc.pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max open files"))
    assert int(line.split()[3]) > 256
    assert "open-file limit raised from 256" in d.log()
    assert "cannot be honoured" not in d.log()


def test_peer_that_never_reads_is_cut_off_and_others_are_unaffected(start_daemon):
    d = start_daemon("--max-outbuf", "65536", "--write-timeout", "1")
    other = d.client()
    assert other.call("ping")["result"] == "pong"
    start_rss = rss(d.proc.pid)
    greedy = socket.socket()
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    greedy.connect(("127.0.0.1", d.port))
    greedy.setblocking(False)
    payload = "z" * 20_000
    body = json.dumps({"jsonrpc": "2.0", "method": "echo", "params": [payload], "id": 1}).encode()
    frame = struct.pack("!I", len(body)) + body
    pending = frame * 2000  # 40 MB of replies if it were all answered
    deadline = time.monotonic() + 5
    while pending and time.monotonic() < deadline:
        try:
            pending = pending[greedy.send(pending[: 1 << 20]) :]
        except BlockingIOError:
            break  # rpcd stopped reading from us
        except ConnectionError:
            break
    assert pending, "rpcd read everything a peer that never reads sent"
    for i in range(20):
        assert other.call("add", i, 1)["result"] == i + 1
    wait_for(lambda: stats(other)["connections"]["open"] == 1, timeout=5)  # aborted
    assert rss(d.proc.pid) - start_rss < 10 * MiB
    assert "its unsent replies stayed over max_outbuf" in d.log()
    greedy.close()


def test_pipelined_calls_never_exceed_max_inflight(start_daemon):
    d = start_daemon("--max-inflight", "32")
    c = d.client()
    body = b"".join(
        struct.pack("!I", len(m)) + m
        for m in (
            json.dumps({"jsonrpc": "2.0", "method": "tracked", "params": [0.005], "id": i}).encode()
            for i in range(1000)
        )
    )
    c.sock.sendall(body)
    replies = [c.recv() for _ in range(1000)]
    assert sorted(r["id"] for r in replies) == list(range(1000))
    assert c.call("tracked_peak")["result"] == 32


def test_queue_overflow_refuses_at_once_and_drops_nothing(start_daemon, tmp_path):
    d = start_daemon("--queue-size", "1000", "--workers", "50", "--max-inflight", "5000")
    gate = tmp_path / "gate"
    c = d.client()
    body = b"".join(
        struct.pack("!I", len(m)) + m
        for m in (
            json.dumps(
                {"jsonrpc": "2.0", "method": "gated", "params": [str(gate)], "id": i}
            ).encode()
            for i in range(2000)
        )
    )
    c.sock.sendall(body)
    refused = [c.recv() for _ in range(950)]  # these come back while every call is still held
    assert all(r["error"]["code"] == -32000 for r in refused)
    gate.touch()
    done = [c.recv() for _ in range(1050)]
    assert all(r["result"] == "through" for r in done)
    assert sorted(r["id"] for r in refused + done) == list(range(2000))
    figures = stats(c)["calls"]
    assert figures["refused_busy"] == 950 and figures["in_flight"] == 1  # this stats call
