"""The blocking client against the real daemon: calls, batches, errors, timeouts, reconnects,
sharing one connection between threads and greenlets, streams and their cancellation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import pytest

from rpcd.client import (
    CallCancelled,
    CallTimeout,
    Client,
    ConnectFailed,
    ConnectionLost,
    FrameTooLarge,
    InternalError,
    InvalidParams,
    MethodNotFound,
    RemoteError,
    ServerBusy,
    TooManyConnections,
)
from tests.conftest import free_port, wait_for
from tests.integration.conftest import ROOT, launch

METHODS = "tests.integration.methods"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """One daemon for the tests that do not need their own settings."""
    d = launch(tmp_path_factory.mktemp("rpcd"), "--call-timeout", "1", methods=METHODS)
    yield d
    d.terminate()


@pytest.fixture
def client(daemon):
    c = Client(f"tcp:127.0.0.1:{daemon.port}", timeout=10)
    yield c
    c.close()


def method_stats(c: Client, name: str) -> dict:
    return c.call("rpc.stats")["methods"].get(name, {"count": 0, "errors": 0})


def test_call_named_proxy_and_notify(client):
    assert client.call("add", 2, 3) == 5
    assert client.call("add", a=2, b=5) == 7
    assert client.call("ping") == "pong"
    assert client.proxy.add(1, 1) == 2
    assert client.proxy.rpc.describe("add")["signature"] == "add(a, b)"
    before = method_stats(client, "echo")["count"]
    assert client.notify("echo", "fire and forget") is None
    wait_for(lambda: method_stats(client, "echo")["count"] == before + 1)
    with pytest.raises(TypeError):
        client.call("add", 1, b=2)


def test_batch(client):
    with client.batch() as batch:
        three = batch.call("add", 1, 2)
        named = batch.call("add", a="x", b="y")
        missing = batch.call("nosuch")
        batch.notify("echo", 1)
        with pytest.raises(RuntimeError):
            three.result()  # not sent yet
    assert three.result() == 3 and named.result() == "xy"
    with pytest.raises(MethodNotFound):
        missing.result()
    with client.batch() as only_notifications:
        only_notifications.notify("echo", 2)  # the server sends nothing back: nothing to wait for
    assert client.call("add", 1, 1) == 2


def test_errors_raise_their_classes(client):
    with pytest.raises(MethodNotFound) as info:
        client.call("nosuch")
    assert info.value.code == -32601 and info.value.data == {"method": "nosuch"}
    with pytest.raises(InvalidParams, match="'b'"):
        client.call("add", 1)
    with pytest.raises(InternalError) as info:
        client.call("boom")
    assert info.value.data == {"type": "KeyError"} and "secret-detail" not in str(info.value)
    assert isinstance(info.value, RemoteError)
    with pytest.raises(CallTimeout):  # the daemon's --call-timeout is 1 s
        client.call("sleep", 5)
    assert client.call("add", 1, 2) == 3  # errors leave the connection usable


def test_client_timeouts_cancel_the_call(daemon):
    c = Client(f"tcp:127.0.0.1:{daemon.port}", timeout=0.2)
    with pytest.raises(TimeoutError, match="sleep"):
        c.call("sleep", 0.8)
    with pytest.raises(TimeoutError):
        c.call("sleep", 0.8, _timeout=0.1)
    assert c.call("sleep", 0.3, _timeout=5) == 0.3  # a per-call timeout beats the client's
    # Both timed-out calls were cancelled on the server, not left running.
    wait_for(lambda: c.call("rpc.stats")["calls"]["errors"].get("-32006", 0) >= 2)
    assert c.call("add", 1, 1) == 2
    c.close()


def test_server_busy_and_frame_too_large(start_daemon):
    d = start_daemon("--workers", "1", "--queue-size", "0", "--max-frame-bytes", "1024")
    c = Client(f"tcp:127.0.0.1:{d.port}", timeout=10)
    slow = c.stream("sleep", 0.5)  # sent, not waited for: it holds the only worker
    with pytest.raises(ServerBusy):
        c.call("add", 1, 2)
    assert list(slow) == [] and slow.result == 0.5
    with pytest.raises(FrameTooLarge):
        c.call("echo", "x" * 2000)
    accepted = c.call("rpc.stats")["connections"]["accepted"]  # on a new connection
    assert c.call("echo", "small") == "small"
    assert c.call("rpc.stats")["connections"]["accepted"] == accepted


def test_too_many_connections(start_daemon):
    d = start_daemon("--max-connections", "1")
    first = Client(f"tcp:127.0.0.1:{d.port}")
    # The readiness probe's connection may not be counted out yet: retry until ours is in.
    wait_for(lambda: _raises(first.call, "ping") is None)
    with pytest.raises(TooManyConnections) as info:
        Client(f"tcp:127.0.0.1:{d.port}").call("ping")
    assert info.value.data == {"limit": "max_connections"}
    first.close()


def test_reconnects_after_a_server_restart(start_daemon):
    port = free_port()
    d = start_daemon(port=port)
    c = Client(f"tcp:127.0.0.1:{port}", timeout=10)
    assert c.call("add", 1, 2) == 3
    # The daemon dies with a call in flight: that call fails with a clear ConnectionError.
    failures = []
    caller = threading.Thread(target=lambda: failures.append(_raises(c.call, "sleep", 5)))
    caller.start()
    wait_for(lambda: _in_flight(c) >= 2)
    d.proc.kill()
    d.proc.wait()
    caller.join(5)
    assert isinstance(failures[0], ConnectionLost), failures
    with pytest.raises(ConnectFailed, match="connection refused"):
        c.call("ping")
    start_daemon(port=port)
    assert c.call("add", 2, 2) == 4  # the same client, a new connection


def test_idle_connection_closed_by_server_is_replaced(start_daemon):
    port = free_port()
    d = start_daemon(port=port)
    c = Client(f"tcp:127.0.0.1:{port}")
    assert c.call("ping") == "pong"
    assert d.terminate() == 0  # a graceful stop closes the idle connection
    start_daemon(port=port)
    assert c.call("ping") == "pong"  # no spurious error: the closed socket was noticed first


def _raises(func, *args):
    try:
        func(*args)
    except Exception as exc:
        return exc
    return None


def _in_flight(c: Client) -> int:
    return c.call("rpc.stats")["calls"]["in_flight"]


def test_threads_share_one_connection(shared_daemon):
    d = shared_daemon
    c = Client(f"tcp:127.0.0.1:{d.port}", timeout=10)
    accepted = c.call("rpc.stats")["connections"]["accepted"]
    results: list[bool] = []

    def work(n: int) -> None:
        for i in range(25):
            results.append(c.call("add", n, i) == n + i)
            if i % 5 == 0:
                results.append(c.call("sleep", 0.01) == 0.01)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 16 * 30 and all(results)
    assert c.call("rpc.stats")["connections"]["accepted"] == accepted


GREENLETS = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, sys
    import gevent
    from rpcd.client import Client

    c = Client(f"tcp:127.0.0.1:{sys.argv[1]}", timeout=20)
    accepted = c.call("rpc.stats")["connections"]["accepted"]
    ran = []
    gevent.spawn_later(0.05, ran.append, True)
    c.call("sleep", 0.3)  # the wait for the reply yields to the hub: the timer fires meanwhile
    cooperative = ran == [True]
    calls = [gevent.spawn(c.call, "sleep", 1.0) for _ in range(200)]
    adds = [gevent.spawn(c.call, "add", i, i) for i in range(200)]
    gevent.sleep(0.5)
    stats = c.call("rpc.stats")  # while the 200 sleeps are in flight on the same socket
    gevent.joinall(calls + adds, raise_error=True)
    print(json.dumps({
        "sleeps": [g.value for g in calls], "adds": [g.value for g in adds],
        "in_flight": stats["calls"]["in_flight"], "cooperative": cooperative,
        "new_connections": stats["connections"]["accepted"] - accepted,
    }))
""")


def test_two_hundred_greenlets_share_one_connection(start_daemon):
    d = start_daemon("--max-inflight", "1000")
    out = subprocess.run(
        [sys.executable, "-c", GREENLETS, str(d.port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["sleeps"] == [1.0] * 200
    assert result["adds"] == [2 * i for i in range(200)]
    assert result["new_connections"] == 0 and result["cooperative"]
    assert result["in_flight"] == 201  # the 200 sleeps and the stats call itself


def test_stream_items_and_result(client):
    stream = client.stream("ticker", 5)
    assert list(stream) == [0, 1, 2, 3, 4] and stream.result == 5
    plain = client.stream("add", 1, 2)  # a method that does not stream: no items
    assert list(plain) == [] and plain.result == 3
    with pytest.raises(MethodNotFound):
        list(client.stream("nosuch"))
    with pytest.raises(TimeoutError):
        list(client.stream("ticker", 3, 1.0, _timeout=0.1))


def test_stopping_a_stream_cancels_the_call(client):
    before = method_stats(client, "ticker")["errors"]
    seen = []
    for item in client.stream("ticker", 10_000, 0.01):
        seen.append(item)
        if len(seen) == 3:
            break  # the dropped iterator sends rpc.cancel
    assert seen == [0, 1, 2]
    with client.stream("ticker", 10_000, 0.01) as stream:
        assert next(stream) == 0
    wait_for(lambda: method_stats(client, "ticker")["errors"] == before + 2)
    assert _in_flight(client) == 1  # only this stats call: both streams are gone
    assert client.call("add", 1, 1) == 2


def test_rpc_cancel_answers_cancelled(client):
    stream = client.stream("sleep", 5)
    wait_for(lambda: _in_flight(client) >= 2)
    assert client.call("rpc.cancel", id=stream.id) is True
    with pytest.raises(CallCancelled):
        list(stream)


def test_unix_endpoint_and_little_endian(start_daemon, tmp_path):
    path = tmp_path / "rpcd.sock"
    start_daemon("--listen", f"unix:{path}", "--byteorder", "little")
    c = Client(f"unix:{path}", byteorder="little")
    assert c.call("add", 20, 22) == 42
    big = Client(f"unix:{path}")  # the wrong byte order reads as an absurd frame length
    with pytest.raises((RemoteError, ConnectionError)):
        big.call("ping", _timeout=5)


def test_stats_shape(client):
    client.call("add", 1, 2)
    stats = client.call("rpc.stats")
    assert stats["uptime"] > 0
    assert set(stats["connections"]) >= {"open", "accepted", "refused"}
    assert set(stats["calls"]) >= {"total", "in_flight", "queued", "errors"}
    add = stats["methods"]["add"]
    assert add["count"] >= 1 and 0 < add["p50_ms"] <= add["p99_ms"] <= add["max_ms"]
    assert set(stats["workers"]) >= {"busy"}


# A TLS endpoint (caCertsDir, hostname, an untrusted certificate refused): test_access.py.
