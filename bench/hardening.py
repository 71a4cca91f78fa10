"""Figures behind the hardening tests, measured on the real daemon (not asserted anywhere).

Run from the repository root: `.venv/bin/python -m bench.hardening`. Prints how fast a
0xFFFFFFFF length prefix is refused and closed, the daemon's memory across a flood of
malformed frames, how soon a vanished client's call is freed, the time for 10,000
connect/close cycles, and how long a 10 ms sleeping call takes while a flood saturates it.
"""

from __future__ import annotations

import socket
import statistics
import struct
import tempfile
import threading
import time
from pathlib import Path

from tests.integration import test_bad_input as bad
from tests.integration.conftest import Daemon, free_port
from tests.integration.probes import MiB, rss, stats
from tests.rawclient import RawClient


def _start(workdir: Path) -> Daemon:
    port = free_port()
    daemon = Daemon(
        workdir,
        [
            "--listen",
            f"tcp:{port}:interface=127.0.0.1:backlog=1024",
            "--methods",
            "tests.integration.methods",
        ],
        port,
    )
    daemon.wait_ready()
    return daemon


def _huge_prefix(daemon: Daemon, control: RawClient) -> None:
    before = rss(daemon.proc.pid)
    closes = [bad._huge_prefix(daemon.port)[1] * 1000 for _ in range(50)]
    grown = (rss(daemon.proc.pid) - before) // 1024
    print(
        f"0xFFFFFFFF prefix -> -32004 and close: median {statistics.median(closes):.2f} ms, "
        f"max {max(closes):.2f} ms over 50; RSS change {grown} KiB"
    )


def _flood(daemon: Daemon, control: RawClient) -> None:
    start = rss(daemon.proc.pid)
    errors: list = []
    threads = [
        threading.Thread(target=bad._flood, args=(daemon.port, 240, errors, k)) for k in range(4)
    ]
    began, peak, calls = time.monotonic(), start, 0
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        assert control.call("sleep", 0.001)["result"] == 0.001
        calls += 1
        peak = max(peak, rss(daemon.proc.pid))
    print(
        f"960 malformed frames on 4 connections: {time.monotonic() - began:.2f} s, "
        f"{calls} valid calls meanwhile; RSS {start / MiB:.1f} -> peak {peak / MiB:.1f} -> "
        f"{rss(daemon.proc.pid) / MiB:.1f} MiB"
    )


def _vanished(daemon: Daemon, control: RawClient) -> None:
    victim = RawClient(daemon.port)
    victim.request("sleep", 30)
    while stats(control)["calls"]["in_flight"] < 2:
        pass
    victim.close()
    began = time.monotonic()
    while stats(control)["calls"]["in_flight"] != 1:
        pass
    print(f"client gone mid-call -> call freed in {(time.monotonic() - began) * 1000:.1f} ms")


def _cycles(daemon: Daemon, control: RawClient) -> None:
    body = b'{"jsonrpc":"2.0","method":"sleep","params":[30],"id":1}'
    call = struct.pack("!I", len(body)) + body
    began = time.monotonic()
    for round_ in range(20):
        socks = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(500)]
        if round_ % 2:
            for sock in socks:
                sock.close()
        else:
            for sock in socks:
                sock.sendall(call)
            while stats(control)["calls"]["in_flight"] < 501:
                time.sleep(0.001)
            for sock in socks:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
        while stats(control)["connections"]["open"] != 1:
            time.sleep(0.001)
    print(
        f"10,000 connect/close cycles (half reset mid-call): {time.monotonic() - began:.2f} s, "
        f"open afterwards {stats(control)['connections']['open'] - 1}"
    )


def _saturated(daemon: Daemon, control: RawClient) -> None:
    stop = threading.Event()
    body = b"7" * 5000
    burst = (struct.pack("!I", len(body)) + body) * 50

    def drain(sock: socket.socket) -> None:
        while not stop.is_set() and sock.recv(1 << 20):
            pass

    def flood() -> None:
        with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
            reader = threading.Thread(target=drain, args=(sock,))
            reader.start()
            while not stop.is_set():
                sock.sendall(burst)
            reader.join()

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    took = []
    for _ in range(10):
        began = time.monotonic()
        control.call("sleep", 0.01)
        took.append((time.monotonic() - began) * 1000)
    stop.set()
    for thread in threads:
        thread.join()
    print(
        f"sleep(0.01) while 3 connections flood malformed frames: median "
        f"{statistics.median(took):.0f} ms, max {max(took):.0f} ms"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        daemon = _start(Path(workdir))
        try:
            control = RawClient(daemon.port)
            for measure in (_huge_prefix, _flood, _vanished, _cycles, _saturated):
                measure(daemon, control)
        finally:
            daemon.terminate()


if __name__ == "__main__":
    main()
