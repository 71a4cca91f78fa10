"""`twistd rpcd --processes N`: the real supervisor and its workers on one shared port."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.conftest import Daemon, free_port
from tests.integration.scale_load import Load, wait_value
from tests.rawclient import RawClient


def children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except FileNotFoundError:
        return set()


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting to be reaped is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.fixture
def supervised(tmp_path):
    started: list[Daemon] = []

    def start(*args: str, processes: str = "2") -> Daemon:
        port = free_port()
        argv = [
            "--processes",
            processes,
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--methods",
            "tests.integration.methods",
            *args,
        ]
        daemon = Daemon(tmp_path, argv, port)
        started.append(daemon)
        daemon.wait_ready()
        n = os.cpu_count() if processes == "auto" else int(processes)
        wait_value(lambda: len(workers(daemon)) == n, 30, f"{n} workers answering")
        return daemon

    yield start
    for daemon in started:
        daemon.terminate()
        for pid in children(daemon.proc.pid):
            os.kill(pid, signal.SIGKILL)


def stats(port: int) -> dict:
    client = RawClient(port, timeout=10)
    try:
        return client.call("rpc.stats")["result"]
    finally:
        client.close()


def workers(daemon: Daemon, connections: int = 30) -> dict[int, int]:
    """worker slot -> pid, as rpc.stats on new connections says."""
    seen = {}
    for _ in range(connections):
        try:
            process = stats(daemon.port)["process"]
        except (OSError, KeyError):
            continue
        seen[process["worker"]] = process["pid"]
    return seen


def test_workers_share_the_port_and_say_who_answered(supervised):
    daemon = supervised()
    seen = workers(daemon)
    assert sorted(seen) == [0, 1]
    assert set(seen.values()) == children(daemon.proc.pid)
    assert all(stats(daemon.port)["process"]["processes"] == 2 for _ in range(3))


def test_crashed_worker_is_restarted(supervised):
    daemon = supervised()
    before = children(daemon.proc.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    after = wait_value(
        lambda: (c := children(daemon.proc.pid)) and len(c) == 2 and victim not in c and c,
        20,
        "a new worker",
    )
    assert len(after - before) == 1
    wait_value(lambda: len(workers(daemon)) == 2, 20, "both slots answering")
    assert "exited (signal 9); restarting in 0.1 s" in daemon.log()


def test_worker_whose_hub_stops_beating_is_replaced(supervised):
    daemon = supervised("--heartbeat-timeout", "1", "--max-blocking-time", "0")
    before = children(daemon.proc.pid)
    client = RawClient(daemon.port, timeout=30)
    pid = client.call("rpc.stats")["result"]["process"]["pid"]
    client.request("spin", 20)  # blocks that worker's loop: no beat from its hub
    with pytest.raises(ConnectionError):
        client.recv()  # killed long before the 20 s are up
    wait_value(lambda: pid not in children(daemon.proc.pid), 10, "the silent worker reaped")
    wait_value(lambda: len(children(daemon.proc.pid) - before) == 1, 20, "a replacement")
    assert "has not beaten for" in daemon.log()


def test_sigterm_drains_every_worker_and_leaves_no_process(supervised):
    daemon = supervised("--shutdown-grace", "5")
    pids = children(daemon.proc.pid)
    client = RawClient(daemon.port, timeout=30)
    rid = client.request("sleep", 1.0)
    time.sleep(0.3)  # the call is running in one of the workers
    daemon.proc.send_signal(signal.SIGTERM)
    reply = client.recv()
    assert reply["id"] == rid and "result" in reply  # finished within the grace
    assert daemon.proc.wait(30) == 0
    assert not any(running(pid) for pid in pids)


def test_sighup_replaces_workers_without_a_refused_connection_or_failed_call(supervised):
    daemon = supervised("--shutdown-grace", "5")
    before = children(daemon.proc.pid)
    with Load(daemon.port) as load:
        time.sleep(1.0)
        daemon.proc.send_signal(signal.SIGHUP)
        wait_value(lambda: "every worker replaced" in daemon.log(), 60, "the rolling restart")
        wait_value(lambda: not (children(daemon.proc.pid) & before), 30, "the old workers gone")
        ok_before = load.ok
        time.sleep(1.0)
    assert load.ok > ok_before  # still served afterwards
    print("SIGHUP under load:", load.summary())
    assert load.failed == 0, load.errors[:5]
    assert load.refused == 0, load.errors[:5]
    after = children(daemon.proc.pid)
    assert len(after) == 2 and not (after & before)


def test_one_service_log_read_whole_on_every_worker(supervised):
    daemon = supervised()
    marks = [f"mark-{n}" for n in range(20)]
    for mark in marks:  # new connections: spread over both workers
        client = RawClient(daemon.port)
        client.call("shout", mark)
        client.close()

    def every_worker_sees_all() -> bool:
        readers = {}
        for _ in range(30):
            client = RawClient(daemon.port)
            pid = client.call("rpc.stats")["result"]["process"]["pid"]
            lines = client.call("getlog", 1000, None, "mark-")["result"]["lines"]
            client.close()
            readers[pid] = lines
        return len(readers) == 2 and all(
            all(any(m + "\n" in line + "\n" or line.endswith(m) for line in lines) for m in marks)
            for lines in readers.values()
        )

    wait_value(every_worker_sees_all, 20, "every worker's getlog to hold every line")
    text = (daemon.workdir / "rpcd.log").read_text()
    for line in text.splitlines():
        assert line[:4].isdigit() or line.startswith(("\t", " ")), repr(line)  # no torn line


def test_help_says_limits_are_per_process():
    import subprocess

    from tests.integration.conftest import ROOT, TWISTD

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [TWISTD, "rpcd", "--help"], env=env, capture_output=True, text=True, timeout=60
    ).stdout
    assert "--processes=" in out
    assert "applies to each process on its own" in " ".join(out.split())


def _twistd(tmp_path, *args: str, timeout: float = 60):
    import subprocess

    from tests.integration.conftest import ROOT, TWISTD

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "rpcd", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_workers_that_cannot_start_stop_the_supervisor(tmp_path):
    port = free_port()
    listen = f"tcp:{port}:interface=127.0.0.1"
    result = _twistd(tmp_path, "--processes", "2", "--listen", listen, "--methods", "no.such")
    assert result.returncode == 1
    assert "cannot import methods module 'no.such'" in result.stderr
    assert "before listening; stopping" in result.stdout


def test_a_listener_workers_cannot_adopt_is_one_line(tmp_path):
    (tmp_path / "k.pem").write_text("never read: refused before\n")
    listen = "ssl:5999:privateKey=k.pem:interface=127.0.0.1"
    result = _twistd(tmp_path, "--processes", "2", "--listen", listen)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("(terminate TLS in front, e.g. in HAProxy)")
    assert "Traceback" not in result.stderr + result.stdout


def test_workers_stop_when_the_supervisor_dies(supervised):
    daemon = supervised()
    pids = children(daemon.proc.pid)
    daemon.proc.kill()
    daemon.proc.wait(10)

    wait_value(lambda: not any(running(p) for p in pids), 20, "the orphaned workers to stop")
    assert "its supervisor is gone" in (daemon.workdir / "rpcd.log").read_text()


def test_follow_on_one_worker_sees_lines_written_by_another(supervised):
    daemon = supervised()
    follower = RawClient(daemon.port, timeout=20)
    follow_pid = follower.call("rpc.stats")["result"]["process"]["pid"]
    rid = follower.request("getlog", 0, None, "followed-", None, True)

    def shout_from_the_other() -> bool:
        client = RawClient(daemon.port)
        pid = client.call("rpc.stats")["result"]["process"]["pid"]
        if pid != follow_pid:
            client.call("shout", "followed-elsewhere")
        client.close()
        return pid != follow_pid

    wait_value(shout_from_the_other, 20, "a connection to the other worker")
    item = follower.recv()
    assert item["method"] == "rpc.stream" and item["params"]["id"] == rid
    assert "followed-elsewhere" in str(item["params"]["item"])


def test_port_in_use_is_one_line_before_daemonizing(tmp_path):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        listen = f"tcp:{port}:interface=127.0.0.1"
        result = _twistd(tmp_path, "--processes", "2", "--listen", listen)
    assert result.returncode == 1
    assert result.stderr.strip() == f"rpcd: cannot listen on {listen}: address already in use"


def scrape(port: int) -> dict:
    """{(sample name, sorted labels): value} from one GET /metrics over real HTTP."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_one_scrape_of_the_supervisor_sums_every_worker(supervised):
    metrics_port = free_port()
    daemon = supervised("--metrics", f"tcp:{metrics_port}:interface=127.0.0.1")
    by_worker = {0: 0, 1: 0}
    for n in range(40):  # a new connection each: the kernel spreads them over both
        client = RawClient(daemon.port)
        assert client.call("add", n, 1)["result"] == n + 1
        by_worker[client.call("rpc.stats")["result"]["process"]["worker"]] += 1
        client.close()
    assert by_worker[0] > 0 and by_worker[1] > 0, by_worker

    samples = scrape(metrics_port)
    key = ("rpcd_server_handled_total", (("code", "OK"), ("method", "add")))
    assert samples[key] == 40  # both workers' calls, one series: no worker label
    assert samples["rpcd_server_started_total", (("method", "add"),)] == 40
    assert samples["rpcd_server_handling_seconds_count", (("method", "add"),)] == 40
    inf = ("rpcd_server_handling_seconds_bucket", (("le", "+Inf"), ("method", "add")))
    assert samples[inf] == 40
    assert not any("worker" in dict(labels) for name, labels in samples if name.startswith(
        "rpcd_server_"))  # fmt: skip
    assert samples["rpcd_supervisor_scrape_errors_total", ()] == 0
    assert samples["rpcd_supervisor_workers", ()] == 2
    assert samples["rpcd_build_info", (("version", __import__("rpcd").__version__),)] == 1
    # Per-process figures stay per worker, under their own name.
    for slot in ("0", "1"):
        assert samples["rpcd_worker_process_open_fds", (("worker", slot),)] > 0
    # The workers' own metrics are private sockets, not the supervisor's port.
    assert len({pid for pid in children(daemon.proc.pid)}) == 2


def test_a_restarted_worker_keeps_the_service_counters_monotonic(supervised):
    metrics_port = free_port()
    daemon = supervised("--metrics", f"tcp:{metrics_port}:interface=127.0.0.1")
    for n in range(20):
        client = RawClient(daemon.port)
        client.call("add", n, 1)
        client.close()
    key = ("rpcd_server_handled_total", (("code", "OK"), ("method", "add")))
    assert scrape(metrics_port)[key] == 20
    victim = min(children(daemon.proc.pid))
    os.kill(victim, signal.SIGKILL)
    wait_value(
        lambda: (c := children(daemon.proc.pid)) and len(c) == 2 and victim not in c,
        20,
        "a new worker",
    )
    wait_value(lambda: len(workers(daemon)) == 2, 20, "both slots answering")
    assert scrape(metrics_port)[key] == 20  # the dead worker's calls still counted


def test_a_worker_that_does_not_answer_is_counted_not_waited_for(supervised):
    from rpcd.metrics_sum import SCRAPE_TIMEOUT

    metrics_port = free_port()
    daemon = supervised(
        "--metrics", f"tcp:{metrics_port}:interface=127.0.0.1", "--max-blocking-time", "0"
    )
    for n in range(10):
        client = RawClient(daemon.port)
        client.call("add", n, 1)
        client.close()
    key = ("rpcd_server_handled_total", (("code", "OK"), ("method", "add")))
    assert scrape(metrics_port)[key] == 10
    blocked = RawClient(daemon.port, timeout=30)
    blocked.request("spin", SCRAPE_TIMEOUT + 1.5)  # that worker's loop answers nothing
    time.sleep(0.3)
    started = time.monotonic()
    samples = scrape(metrics_port)
    took = time.monotonic() - started
    assert took < SCRAPE_TIMEOUT + 1.5, took  # bounded, not the length of the spin
    assert samples["rpcd_supervisor_scrape_errors_total", ()] == 1
    assert samples[key] == 10  # the silent worker's last counters are kept
    blocked.close()


def test_a_metrics_port_in_use_is_one_line_before_daemonizing(tmp_path):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        metrics = f"tcp:{port}:interface=127.0.0.1"
        listen = f"tcp:{free_port()}:interface=127.0.0.1"
        result = _twistd(tmp_path, "--processes", "2", "--listen", listen, "--metrics", metrics)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"rpcd: cannot listen on {metrics} (--metrics): address already in use"
    )
