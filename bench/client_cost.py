"""The blocking client's own cost per call, beside a minimal raw-socket client's (scenario g).

Scenario g compares calls/s, which on a shared machine move with the neighbours' load. This
counts what the client process itself spends per serial call against a running rpcd:

    .venv/bin/python bench/client_cost.py              # instructions (callgrind) and CPU
    .venv/bin/python bench/client_cost.py --rpcd-root /path/to/other/checkout

- instructions per call: the client runs under `valgrind --tool=callgrind
  --instr-atstart=no`; instrumentation is switched on after a warm-up, for exactly
  `--calls` serial calls, and off again before anything else runs.
- CPU per call: `time.process_time()` (user + system) over `--cpu-calls` calls, best of
  `--rounds`, the client run without valgrind.

Each makes the g scenario's call (`echo` of 16 bytes) with the loop bodies of
bench/clients.py: `raw` (`raw-serial`: send a frame, recv, orjson.loads), `client`
(`Client.call`, one caller) and `greenlets` (100 greenlets sharing one Client under gevent,
the calls counted in all; under valgrind the client is the slow side, so its batches are
fuller than in a real run). The server is rpcd `--no-access-log` from this checkout (its own
cost is not counted); `--rpcd-root` runs the client from another checkout, for a before
figure.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.argv[1:3] == ["--child", "greenlets"]:
    from gevent import monkey

    monkey.patch_all()  # before anything imports socket: the greenlets share the client

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def child(kind: str, port: int, warmup: int, calls: int, cpu: bool) -> None:
    """Make `warmup` calls, wait for the go, make `calls`; report between markers."""
    from bench import clients

    if kind == "raw":
        import orjson

        sock = clients._connect(port)
        clients._check_echo(sock)
        sendall, recv, loads, unpack = sock.sendall, sock.recv, orjson.loads, clients._PREFIX.unpack
        frame, expected = clients._echo_frame, clients.PAYLOAD

        def run(n: int) -> None:
            for i in range(n):
                sendall(frame(i + 1))
                buffer = recv(65536)
                while len(buffer) < 4 or len(buffer) < 4 + unpack(buffer[:4])[0]:
                    buffer += recv(65536)
                if loads(buffer[4:])["result"] != expected:
                    raise RuntimeError("unexpected reply")

    elif kind == "client":
        from rpcd.client import Client

        client = Client(f"tcp:127.0.0.1:{port}")
        call, payload = client.call, clients.PAYLOAD

        def run(n: int) -> None:
            for _ in range(n):
                call("echo", payload)

    else:
        import gevent

        from rpcd.client import Client

        client = Client(f"tcp:127.0.0.1:{port}")
        call, payload = client.call, clients.PAYLOAD

        def caller(n: int) -> None:
            for _ in range(n):
                call("echo", payload)

        def run(n: int) -> None:  # n calls in all, from GREENLETS greenlets
            share, extra = divmod(n, GREENLETS)
            counts = [share + (i < extra) for i in range(GREENLETS)]
            gevent.joinall([gevent.spawn(caller, k) for k in counts], raise_error=True)

    run(warmup)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.process_time()
    run(calls)
    used = time.process_time() - start
    print(json.dumps({"cpu": used}), flush=True)
    sys.stdin.readline()


GREENLETS = 100  # the greenlets sharing one Client in the `greenlets` figure, as in scenario g


def start_rpcd(port: int) -> subprocess.Popen:
    twistd = str(Path(sys.executable).with_name("twistd"))
    argv = [twistd, "-n", "--pidfile=", "rpcd", "--listen", f"tcp:{port}:interface=127.0.0.1"]
    argv += ["--methods", "bench.methods", "--no-access-log"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        argv,
        cwd=tempfile.mkdtemp(prefix="rpcd-cc-"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    from bench.instructions import wait_listening

    wait_listening(port, proc, 60)
    return proc


def run_child(kind: str, port: int, args: argparse.Namespace, valgrind: bool) -> dict:
    calls = args.calls if valgrind else args.cpu_calls
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(args.rpcd_root), str(ROOT)]))
    argv = [sys.executable, str(Path(__file__)), "--child", kind, "--port", str(port)]
    argv += ["--calls", str(calls), "--warmup", str(args.warmup)]
    workdir = Path(tempfile.mkdtemp(prefix=f"rpcd-cc-{kind}-"))
    if valgrind:
        out = workdir / "callgrind.out"
        argv = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            *argv,
        ]
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{kind} client did not start")
        if valgrind:
            subprocess.run(
                ["callgrind_control", "--instr=on", str(proc.pid)], capture_output=True, check=True
            )
        proc.stdin.write("\n")
        proc.stdin.flush()
        result = json.loads(proc.stdout.readline())
        if valgrind:
            subprocess.run(
                ["callgrind_control", "--instr=off", str(proc.pid)], capture_output=True, check=True
            )
            subprocess.run(
                ["callgrind_control", "--dump", str(proc.pid)], capture_output=True, check=True
            )
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not valgrind:
        return {"cpu_us": result["cpu"] / calls * 1e6}
    total = 0
    for dump in workdir.glob("callgrind.out*"):
        match = re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.M)
        if match:
            total += int(match.group(1))
    return {"instructions": total / calls, "dumps": str(workdir)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=("raw", "client", "greenlets"))
    parser.add_argument("--port", type=int)
    parser.add_argument("--calls", type=int, default=2000, help="calls counted under callgrind")
    parser.add_argument("--cpu-calls", type=int, default=20000, help="calls timed for CPU")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--rpcd-root", type=Path, default=ROOT, help="checkout the client runs from"
    )
    parser.add_argument("--no-valgrind", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.port, args.warmup, args.calls, False)
        return 0
    sys.path.insert(0, str(ROOT))
    valgrind = not args.no_valgrind
    if valgrind and (shutil.which("valgrind") is None or shutil.which("callgrind_control") is None):
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    from bench.run import free_port

    port = free_port()
    server = start_rpcd(port)
    try:
        rows = {}
        for kind in ("raw", "client", "greenlets"):
            row = {
                "cpu_us": min(
                    run_child(kind, port, args, False)["cpu_us"] for _ in range(args.rounds)
                )
            }
            if valgrind:
                row.update(run_child(kind, port, args, True))
            rows[kind] = row
    finally:
        server.terminate()
        server.wait(30)
    raw = rows["raw"]
    for kind, row in rows.items():
        text = f"{kind:>7}: {row['cpu_us']:.1f} µs CPU/call"
        if "instructions" in row:
            text += f", {row['instructions']:,.0f} instructions/call"
        if kind != "raw":
            text += f"  ({row['cpu_us'] / raw['cpu_us']:.2f}x raw CPU"
            if "instructions" in row:
                text += f", {row['instructions'] / raw['instructions']:.2f}x raw instructions"
            text += ")"
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
