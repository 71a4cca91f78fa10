"""What the hardening tests read off a running daemon: its memory, its stats, a condition."""

from __future__ import annotations

from tests.conftest import wait_for
from tests.rawclient import RawClient

__all__ = ["MiB", "rss", "stats", "wait_for"]  # wait_for: the one in tests/conftest.py

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
