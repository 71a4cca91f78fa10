"""Server instructions per call, counted by valgrind's callgrind under the C load generator.

Wall-clock rates on a shared 2-core machine move with the neighbours' load; the number of
instructions a server executes per call does not (callgrind counts them, whatever else the
machine does). This is the before/after figure for a change on the per-call path:

    .venv/bin/python bench/instructions.py        # rpcd --no-access-log and the ceiling
    .venv/bin/python bench/instructions.py --servers rpcd,rpcd-log --inflight 50
    .venv/bin/python bench/instructions.py --rpcd-root /path/to/other/checkout

Each server runs under `valgrind --tool=callgrind --instr-atstart=no`; instrumentation is
switched on after a warm-up, the load generator runs for a fixed window, and the counters
are dumped: Ir (instructions) divided by the calls the load generator saw answered in that
window. Under valgrind a server runs ~50× slower, so the batching at K in flight differs
from a real run; compare figures taken with the same options only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench.run import LOADGEN_PROTO, build_loadgen, free_port  # noqa: E402


def server_command(name: str, port: int, workdir: Path, extra: list[str]) -> list[str]:
    python = sys.executable
    if name.startswith("rpcd"):
        twistd = str(Path(python).with_name("twistd"))
        args = [
            twistd,
            "-n",
            "--pidfile=",
            "rpcd",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1:backlog=1024",
            "--methods",
            "bench.methods",
        ]
        if name == "rpcd":
            args.append("--no-access-log")
        return args + extra
    return [python, str(BENCH / "servers.py"), name, str(port)]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not listen on {port} within {timeout} s")


def measure(name: str, args: argparse.Namespace, loadgen: Path) -> dict:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"rpcd-instr-{name}-"))
    out = workdir / "callgrind.out"
    path = os.pathsep.join(dict.fromkeys([str(args.rpcd_root), str(ROOT)]))
    env = dict(os.environ, PYTHONPATH=path)
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        *server_command(name, port, workdir, args.rpcd_args.split()),
    ]
    proc = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_listening(port, proc, 120)
        load = [str(loadgen), "--port", str(port), "--connections", str(args.connections)]
        load += ["--inflight", str(args.inflight)]
        load += ["--proto", LOADGEN_PROTO.get(name.split("-")[0], "json")]  # mprpc: msgpack
        # Warm-up without instrumentation (imports, worker start, caches), then the window.
        subprocess.run(load + ["--duration", "2", "--warmup", "0.5"], capture_output=True)
        subprocess.run(["callgrind_control", "--instr=on", str(proc.pid)], capture_output=True)
        run = subprocess.run(
            load + ["--duration", str(args.duration), "--warmup", "0"],
            capture_output=True,
            text=True,
        )
        subprocess.run(["callgrind_control", "--instr=off", str(proc.pid)], capture_output=True)
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], capture_output=True)
        result = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    total = 0
    for dump in workdir.glob("callgrind.out*"):
        match = re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.M)
        if match:
            total += int(match.group(1))
    calls = result.get("calls", 0)
    return {
        "server": name,
        "calls": calls,
        "instructions": total,
        "per_call": total / calls if calls else float("nan"),
        "dumps": str(workdir),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--servers", default="rpcd,twisted", help="rpcd, rpcd-log, twisted, gevent, uvloop, mprpc"
    )
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--inflight", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rpcd-args", default="", help="more rpcd options, e.g. '--workers 10'")
    parser.add_argument("--rpcd-root", type=Path, default=ROOT, help="checkout rpcd runs from")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    loadgen, why = build_loadgen()
    if loadgen is None:
        print(f"no load generator: {why}", file=sys.stderr)
        return 2
    rows = [measure(name, args, loadgen) for name in args.servers.split(",")]
    base = next((r for r in rows if r["server"] == "twisted" and r["per_call"] > 0), None)
    for row in rows:
        ratio = f"  {row['per_call'] / base['per_call']:.2f}x the ceiling" if base else ""
        print(
            f"{row['server']:>10}: {row['per_call']:,.0f} instructions/call "
            f"({row['calls']} calls, {args.connections}x{args.inflight}){ratio}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
