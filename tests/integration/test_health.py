"""rpc.health on the real daemon: SERVING, a watch that sees the drain start, quiet checks."""

from __future__ import annotations

import signal
import time


def test_watch_sees_not_serving_when_the_drain_starts(start_daemon):
    daemon = start_daemon("--shutdown-grace", "5")
    checker = daemon.client()
    assert checker.call("rpc.health")["result"] == {"status": "SERVING"}
    assert checker.call("rpc.health", "tests.integration.methods")["result"] == {
        "status": "SERVING"
    }
    unknown = checker.call("rpc.health", "nope")["error"]
    assert unknown["code"] == -32602 and "unknown service 'nope'" in unknown["message"]
    watcher = daemon.client(timeout=20)
    rid = watcher.request("rpc.health.watch")
    first = watcher.recv()
    assert first["method"] == "rpc.stream" and first["params"]["item"] == {"status": "SERVING"}
    busy = daemon.client(timeout=20)
    busy_id = busy.request("sleep", 1.0)  # keeps the drain going for a second
    time.sleep(0.2)
    daemon.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    final = watcher.recv()
    assert final == {"jsonrpc": "2.0", "result": {"status": "NOT_SERVING"}, "id": rid}
    assert time.monotonic() - started < 0.9  # at the drain's start, not at its end
    assert busy.recv()["id"] == busy_id
    assert daemon.proc.wait(30) == 0
    log = (daemon.workdir / "rpcd.log").read_text()
    assert "rpc.health" not in log  # checks are counted, not lined
    assert " sleep id=" in log


def test_health_answers_on_open_connections_while_draining(start_daemon):
    daemon = start_daemon("--shutdown-grace", "5")
    checker = daemon.client(timeout=20)
    assert checker.call("rpc.health")["result"] == {"status": "SERVING"}
    busy = daemon.client(timeout=20)
    busy_id = busy.request("sleep", 1.0)  # keeps the drain going for a second
    time.sleep(0.2)
    daemon.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 0.7
    while True:  # the drain starts once the signal is handled
        time.sleep(0.05)  # and its calls are refused a moment after health turns
        answer = checker.call("rpc.health")
        if answer.get("result") != {"status": "SERVING"} or time.monotonic() > deadline:
            break
    assert answer == {"jsonrpc": "2.0", "result": {"status": "NOT_SERVING"}, "id": answer["id"]}
    rid = checker.request("rpc.health.watch")
    watched = [checker.recv(), checker.recv()]
    assert watched[0]["params"]["item"] == {"status": "NOT_SERVING"}
    assert watched[1] == {"jsonrpc": "2.0", "result": {"status": "NOT_SERVING"}, "id": rid}
    refused = checker.call("ping")["error"]  # other new calls are still refused
    assert refused["code"] == -32005
    assert busy.recv()["id"] == busy_id
    assert daemon.proc.wait(30) == 0


def test_check_connections_are_not_lined_at_info(start_daemon):
    daemon = start_daemon()
    checks = []
    for _ in range(3):  # a balancer's checks: connect, rpc.health, close
        checker = daemon.client()
        checks.append(f"127.0.0.1:{checker.sock.getsockname()[1]}")
        assert checker.call("rpc.health")["result"] == {"status": "SERVING"}
        checker.close()
    client = daemon.client()
    peer = f"127.0.0.1:{client.sock.getsockname()[1]}"
    assert client.call("rpc.health")["result"] == {"status": "SERVING"}
    assert client.call("ping")["result"] == "pong"
    client.close()
    stats = daemon.client()
    assert stats.call("rpc.stats")["result"]["health_checks"] == 4  # counted, not lined
    stats.close()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == 0
    log = (daemon.workdir / "rpcd.log").read_text()
    assert not any(f"connection from {check}" in log for check in checks)
    assert f"connection from {peer} opened" in log and f"connection from {peer} closed" in log
