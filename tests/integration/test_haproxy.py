"""rpcd behind a real HAProxy (conf/haproxy.cfg as shipped): PROXY v2, health checks, failover."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
import warnings

import pytest

from tests.integration.conftest import ROOT, free_port
from tests.integration.scale_load import Load, wait_value
from tests.rawclient import RawClient

HAPROXY = shutil.which("haproxy")
REASON = "haproxy is not installed (apt-get install haproxy; .ci/run does)"
if HAPROXY is None:  # pytest -q lists no skip reason: a warning is always shown
    warnings.warn(f"{__name__} skipped: {REASON}", stacklevel=1)


class HAProxy:
    """HAProxy running conf/haproxy.cfg, only its ports and stats socket moved."""

    def __init__(self, tmp_path, backends: list[int]) -> None:
        self.port = free_port()
        self.admin = tmp_path / "haproxy.sock"
        text = (ROOT / "conf" / "haproxy.cfg").read_text()
        text = text.replace("127.0.0.1:5354", f"127.0.0.1:{self.port}")
        text = text.replace("127.0.0.1:5355", f"127.0.0.1:{backends[0]}")
        text = text.replace("127.0.0.1:5356", f"127.0.0.1:{backends[1]}")
        text = text.replace("/run/haproxy/rpcd.sock", str(self.admin))
        self.config = tmp_path / "haproxy.cfg"
        self.config.write_text(text)
        self.output = tmp_path / "haproxy.out"
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(self.config)],
            stdout=self.output.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.admin))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, int]:
        """server name -> operational state (2 = UP, 0 = DOWN), from the runtime API."""
        try:
            text = self.command("show servers state rpcd")
        except OSError:
            return {}
        states = {}
        for line in text.splitlines()[2:]:
            fields = line.split()
            if len(fields) > 5:
                states[fields[3]] = int(fields[5])
        return states

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def cluster(start_daemon, tmp_path):
    """Two rpcd daemons on haproxy: listeners behind one HAProxy, every server UP."""
    if HAPROXY is None:
        pytest.skip(REASON)
    ports = [free_port(), free_port()]
    daemons = []
    for n, port in enumerate(ports):
        workdir = tmp_path / f"rpcd{n + 1}"
        workdir.mkdir()
        daemon = start_daemon(
            "--listen",
            f"haproxy:tcp:{port}:interface=127.0.0.1",
            "--shutdown-grace",
            "5",
            "--log-file",
            str(workdir / "rpcd.log"),
            listen=False,
            port=port,
        )
        daemon.log_path = workdir / "rpcd.log"
        daemons.append(daemon)
    proxy = HAProxy(tmp_path, ports)
    try:
        wait_value(lambda: proxy.states() == {"rpcd1": 2, "rpcd2": 2}, 20, "both servers UP")
        yield proxy, daemons
    finally:
        proxy.stop()


def pids_through(proxy: HAProxy, connections: int = 20) -> list[int]:
    pids = []
    for _ in range(connections):
        client = RawClient(proxy.port, timeout=10)
        pids.append(client.call("rpc.stats")["result"]["process"]["pid"])
        client.close()
    return pids


def test_calls_spread_and_each_daemon_logs_the_real_client(cluster):
    proxy, daemons = cluster
    assert set(pids_through(proxy)) == {d.proc.pid for d in daemons}
    ports = []
    for _ in range(6):
        client = RawClient(proxy.port)
        ports.append(client.sock.getsockname()[1])  # the client's own port, not HAProxy's
        assert client.call("echo", "hi")["result"] == "hi"
        client.close()

    def logged() -> bool:
        text = "".join(d.log_path.read_text() for d in daemons)
        return all(f"127.0.0.1:{p} echo" in text for p in ports)

    wait_value(logged, 10, "access lines naming each client's own address")
    # HAProxy checked each server every second: counted, never lined.
    time.sleep(2.5)
    for daemon in daemons:
        client = RawClient(daemon.port)
        client.sock.sendall(b"PROXY UNKNOWN\r\n")  # straight to the daemon
        checks = client.call("rpc.stats")["result"]["health_checks"]
        client.close()
        assert checks >= 2
        assert "rpc.health" not in daemon.log_path.read_text()


def test_runtime_api_drain_sends_new_connections_elsewhere(cluster):
    proxy, daemons = cluster
    assert proxy.command("set server rpcd/rpcd1 state drain").strip() == ""
    assert set(pids_through(proxy, 10)) == {daemons[1].proc.pid}
    proxy.command("set server rpcd/rpcd1 state ready")
    wait_value(lambda: len(set(pids_through(proxy, 10))) == 2, 10, "rpcd1 back in")


def test_health_check_cannot_match_not_serving():
    text = (ROOT / "conf" / "haproxy.cfg").read_text()
    pattern = bytes.fromhex(re.search(r"tcp-check expect binary (\w+)", text).group(1))
    call = bytes.fromhex(re.search(r"tcp-check send-binary (\w+)", text).group(1))
    assert int.from_bytes(call[:4], "big") == len(call) - 4
    assert b'"method":"rpc.health"' in call
    assert pattern in b'{"jsonrpc":"2.0","result":{"status":"SERVING"},"id":"haproxy"}'
    assert pattern not in b'{"jsonrpc":"2.0","result":{"status":"NOT_SERVING"},"id":"haproxy"}'


def test_sigterm_drain_under_load_fails_no_call(cluster):
    proxy, (first, second) = cluster
    with Load(proxy.port, clients=6) as load:
        wait_value(lambda: len(load.peers) == 2, 20, "load on both daemons")
        time.sleep(0.5)
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(30) == 0
        wait_value(lambda: proxy.states().get("rpcd1") == 0, 10, "rpcd1 marked DOWN")
        served = load.peers.get(second.proc.pid, 0)
        wait_value(lambda: load.peers.get(second.proc.pid, 0) > served + 100, 20, "calls after")
    print("SIGTERM behind HAProxy:", load.summary())
    assert load.failed == 0, load.errors[:5]
    assert load.refused == 0, load.errors[:5]


def test_sigkill_fails_only_the_calls_in_flight(cluster):
    proxy, (first, second) = cluster
    clients = 6
    with Load(proxy.port, clients=clients) as load:
        wait_value(lambda: len(load.peers) == 2, 20, "load on both daemons")
        time.sleep(0.5)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        served = load.peers.get(second.proc.pid, 0)
        wait_value(lambda: load.peers.get(second.proc.pid, 0) > served + 200, 20, "calls after")
    print("SIGKILL behind HAProxy:", load.summary())
    # Each client has one call in flight at a time: only those on rpcd1 can be lost.
    assert load.lost <= clients
    assert load.failed == 0, load.errors[:5]
    assert load.refused == 0, load.errors[:5]
