"""Benchmark: what the access log costs. Ping throughput and the daemon's CPU time per call,
with the access log on and with `--no-access-log`, alternating runs on the same machine.

    .venv/bin/python bench/access_log.py [--rounds 5] [--seconds 3] [--clients 3] [--depth N]

Each round runs the real daemon (`twistd -n rpcd`, stdout to a file) twice, once per
setting, with client processes that keep 1 and then 50 pings in flight per connection.
CPU time (user + system, from /proc) is the steadier figure on a shared machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TWISTD = str(Path(sys.executable).with_name("twistd"))
BODY = b'{"jsonrpc":"2.0","method":"ping","params":["0123456789abcdef"],"id":1}'
FRAME = struct.pack("!I", len(BODY)) + BODY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(port: int, seconds: float, depth: int, results: multiprocessing.Queue) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(FRAME * depth)
    outstanding, done, buffered = depth, 0, b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        buffered += sock.recv(65536)
        while len(buffered) >= 4:
            (size,) = struct.unpack("!I", buffered[:4])
            if len(buffered) < 4 + size:
                break
            buffered = buffered[4 + size :]
            done += 1
            outstanding -= 1
        if outstanding <= depth // 2:
            sock.sendall(FRAME * (depth - outstanding))
            outstanding = depth
    results.put(done)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(extra: list[str], depth: int, clients: int, seconds: float) -> tuple[float, float]:
    """(calls per second, daemon CPU microseconds per call)."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="rpcd-access-")
    with open(os.path.join(workdir, "twistd.out"), "wb") as out:
        daemon = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "rpcd",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                *extra,
            ],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        results: multiprocessing.Queue = multiprocessing.Queue()
        procs = [
            multiprocessing.Process(target=client, args=(port, seconds, depth, results))
            for _ in range(clients)
        ]
        before = cpu_seconds(daemon.pid)
        for p in procs:
            p.start()
        calls = sum(results.get() for _ in procs)
        for p in procs:
            p.join()
        used = cpu_seconds(daemon.pid) - before
        return calls / seconds, used / calls * 1e6
    finally:
        daemon.terminate()
        daemon.wait(30)
        subprocess.run(["rm", "-rf", workdir], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--depth", type=int, action="append", help="calls in flight (1 and 50)")
    args = parser.parse_args()
    for depth in args.depth or (1, 50):
        off: list[tuple[float, float]] = []
        on: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            off.append(run(["--no-access-log"], depth, args.clients, args.seconds))
            on.append(run([], depth, args.clients, args.seconds))
        rate_off = statistics.median(r for r, _ in off)
        rate_on = statistics.median(r for r, _ in on)
        cpu_off = statistics.median(c for _, c in off)
        cpu_on = statistics.median(c for _, c in on)
        print(
            f"{depth} in flight x {args.clients} clients, medians of {args.rounds}: "
            f"{rate_off:,.0f} calls/s without the access log, {rate_on:,.0f} with "
            f"({(rate_off - rate_on) / rate_off:+.1%} fewer); CPU {cpu_off:.2f} vs "
            f"{cpu_on:.2f} us/call ({(cpu_on - cpu_off) / cpu_off:+.1%})",
            flush=True,
        )


if __name__ == "__main__":
    main()
