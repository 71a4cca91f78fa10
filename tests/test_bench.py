"""bench/: the quick run prints its table, and the C load generator speaks every framing it claims.

Speed is never asserted here; only that every scenario produced its row and that the load
generator's calls were answered (no errors, replies matched).
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import run as bench_run  # noqa: E402

TWISTD = str(Path(sys.executable).with_name("twistd"))


def test_quick_run_prints_its_table():
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--servers", "none"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert "| scenario | server | figure | vs baseline |" in lines
    rows = [line for line in lines if line.startswith("| ") and " | " in line[2:]]
    for scenario in ("a.", "b.", "c.", "d.", "e.", "f.", "g.", "h."):
        assert any(row.startswith(f"| {scenario}") for row in rows), (scenario, run.stdout)
    throughput = [row for row in rows if row.startswith("| a.")]
    assert any("| twisted |" in row and "calls/s" in row for row in throughput)
    assert any("| rpcd" in row and "calls/s" in row for row in throughput)
    assert all("server CPU/call" in row for row in throughput)
    if not any(row.startswith("| h.") and "skipped" in row for row in rows):
        # Both sizes side by side, the supervisor's CPU summed with its two workers'.
        several = [row for row in rows if row.startswith("| h.")]
        assert len(several) == 4, several
        assert sum("| rpcd --processes 1 |" in r and "| baseline |" in r for r in several) == 2
        two = [r for r in several if "| rpcd --processes 2 |" in r]
        assert len(two) == 2 and all("over 3 processes" in r and "x |" in r for r in two), two


@pytest.fixture(scope="module")
def loadgen():
    binary, why = bench_run.build_loadgen()
    if binary is None:
        pytest.skip(f"no load generator: {why}")
    return binary


def _serve(argv, port, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("the server did not listen within 30 s")


def _drive(loadgen, port, pid, *options):
    run = subprocess.run(
        [
            str(loadgen),
            "--port",
            str(port),
            "--cpu-pid",
            str(pid),
            "--duration",
            "0.2",
            "--warmup",
            "0",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize("byteorder", ["big", "little"])
def test_loadgen_drives_rpcd_in_both_envelopes(loadgen, tmp_path, byteorder):
    port = bench_run.free_port()
    proc = _serve(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "rpcd",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--methods",
            "bench.methods",
            "--byteorder",
            byteorder,
            "--no-access-log",
        ],
        port,
        tmp_path,
    )
    try:
        for options in (
            ["--proto", "json", "--inflight", "8"],
            ["--proto", "legacy", "--inflight", "8", "--expect", '"out":"echo"'],
        ):
            result = _drive(loadgen, port, proc.pid, "--byteorder", byteorder, *options)
            assert result["calls"] > 0 and result["errors"] == 0, result
            assert result["p50_us"] <= result["p99_us"]
        # Open loop: a fixed rate, latencies from the scheduled send times.
        result = _drive(loadgen, port, proc.pid, "--byteorder", byteorder, "--rate", "500")
        assert 50 <= result["calls"] <= 150 and result["errors"] == 0, result
        # Once: every call answered, the wall time to the last reply.
        result = _drive(
            loadgen,
            port,
            proc.pid,
            "--byteorder",
            byteorder,
            "--once",
            "--connections",
            "3",
            "--inflight",
            "7",
            "--method",
            "sleep",
            "--arg",
            "0.1",
            "--expect",
            '"result"',
        )
        assert result["calls"] == 21 and result["seconds"] >= 0.1, result
    finally:
        proc.terminate()
        proc.wait(30)


def test_loadgen_rejects_a_wrong_reply(loadgen, tmp_path):
    port = bench_run.free_port()
    proc = _serve(
        [sys.executable, str(ROOT / "bench" / "servers.py"), "twisted", str(port)], port, tmp_path
    )
    try:
        run = subprocess.run(
            [str(loadgen), "--port", str(port), "--duration", "0.1", "--method", "nosuch"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode != 0
        assert "unexpected first reply" in run.stderr
    finally:
        proc.terminate()
        proc.wait(30)


def test_loadgen_speaks_msgpack_rpc_to_mprpc(loadgen, tmp_path):
    pytest.importorskip("mprpc", reason="bench/install_mprpc.sh installs it")
    port = bench_run.free_port()
    proc = _serve(
        [sys.executable, str(ROOT / "bench" / "servers.py"), "mprpc", str(port)], port, tmp_path
    )
    try:
        result = _drive(loadgen, port, proc.pid, "--proto", "msgpack", "--inflight", "1")
        assert result["calls"] > 0 and result["errors"] == 0, result
    finally:
        proc.terminate()
        proc.wait(30)
