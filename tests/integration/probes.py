"""What the hardening tests read off a running daemon: its memory, its stats, a condition."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.rawclient import RawClient

MiB = 1024 * 1024


def rss(pid: int) -> int:
    """Resident memory of process `pid`, in bytes (VmRSS from /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def stats(client: RawClient) -> dict:
    reply = client.call("rpc.stats")
    return reply["result"]


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.005) -> float:
    """Poll until `condition()` is true; return the seconds it took. Fails after `timeout`."""
    started = time.monotonic()
    while True:
        value = condition()
        elapsed = time.monotonic() - started
        if value:
            return elapsed
        assert elapsed < timeout, f"condition not met within {timeout} s"
        time.sleep(interval)
