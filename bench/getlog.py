"""Benchmark: how long `getlog` takes for 1,000 lines from a 1 MiB log and from a 1 GiB log.

Builds both files in a temporary directory (the 1 GiB one by repeating a 1 MiB block of
realistic lines), starts the real daemon (`twistd -n rpcd`) on each, times the call from a
client over TCP (alternating between the two), prints both times and their ratio, and
deletes the files.

    .venv/bin/python bench/getlog.py [--repeat 20] [--lines 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024
TWISTD = str(Path(sys.executable).with_name("twistd"))


def block_of_lines() -> bytes:
    """About 1 MiB of access and other lines, the way rpcd writes them."""
    lines = []
    n = 0
    size = 0
    while size < MiB:
        if n % 50 == 49:
            text = f"warn [rpcd.protocol] closing 127.0.0.1:4{n % 10000:04d}: idle for 300 s"
        else:
            text = (
                f"info [rpcd.access] 127.0.0.1:4{n % 10000:04d} math.add id={n} "
                f"0.{n % 1000:03d} ms ok"
            )
        line = f"2026-01-01T00:00:00.{n % 1000:03d}Z {text}\n"
        lines.append(line)
        size += len(line)
        n += 1
    return "".join(lines).encode()


def build(path: Path, total: int, block: bytes) -> None:
    with open(path, "wb") as f:
        written = 0
        while written < total:
            f.write(block)
            written += len(block)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)

    def call(self, method: str, params: dict) -> dict:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}).encode()
        self.sock.sendall(struct.pack("!I", len(body)) + body)
        (size,) = struct.unpack("!I", self._exactly(4))
        return json.loads(self._exactly(size))

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            data += chunk
        return data


class Daemon:
    """The real daemon writing (and so reading) `log`."""

    def __init__(self, workdir: Path, log: Path) -> None:
        self.log = log
        self.output = workdir / f"{log.name}.out"
        port = free_port()
        self.proc = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "rpcd",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--log-file",
                str(log),
                "--log-rotate-bytes",
                str(2 * 1024 * MiB),
                "--no-access-log",
            ],
            cwd=workdir,
            stdout=self.output.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client = Client(port)
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(self.output.read_text()) from None
                time.sleep(0.05)

    def getlog(self, lines: int) -> float:
        started = time.perf_counter()
        reply = self.client.call("getlog", {"lines": lines})
        elapsed = time.perf_counter() - started
        assert len(reply["result"]["lines"]) == lines, reply
        return elapsed

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="rpcd-getlog-"))
    try:
        block = block_of_lines()
        small, big = workdir / "small.log", workdir / "big.log"
        build(small, MiB, block)
        started = time.perf_counter()
        build(big, 1024 * MiB, block)
        print(f"built the 1 GiB log in {time.perf_counter() - started:.1f} s", flush=True)
        daemons = {"1 MiB": Daemon(workdir, small), "1 GiB": Daemon(workdir, big)}
        try:
            times: dict[str, list[float]] = {name: [] for name in daemons}
            for daemon in daemons.values():
                daemon.getlog(args.lines)  # warm up
            for _ in range(args.repeat):  # alternate, so both see the same machine
                for name, daemon in daemons.items():
                    times[name].append(daemon.getlog(args.lines))
        finally:
            for daemon in daemons.values():
                daemon.stop()
        for name, daemon in daemons.items():
            print(
                f"getlog lines={args.lines} from the {name} log ({daemon.log.stat().st_size:,} "
                f"bytes): median {statistics.median(times[name]) * 1000:.2f} ms, "
                f"best {min(times[name]) * 1000:.2f} ms over {args.repeat} calls"
            )
        ratio = statistics.median(times["1 GiB"]) / statistics.median(times["1 MiB"])
        print(f"ratio 1 GiB / 1 MiB (medians): {ratio:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
