"""Helpers and fakes shared by every test module: a free port, a poll with a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; a race with another process
    binding it before the test does is possible but rare)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 5.0,
    interval: float = 0.01,
    message: str | Callable[[], str] = "",
) -> float:
    """Poll `predicate()` until it is true; return the seconds it took.

    At the deadline the test fails with `message` (a string or a callable giving one, e.g. a
    daemon's log) instead of hanging the suite. `predicate` is tried once more at the deadline
    so a slow machine that gets there just in time still passes.
    """
    started = time.monotonic()
    deadline = started + timeout
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            if predicate():
                return time.monotonic() - started
            text = message() if callable(message) else message
            name = getattr(predicate, "__name__", repr(predicate))
            detail = f": {text}" if text else ""
            raise AssertionError(f"{name} not true within {timeout} s{detail}")
        time.sleep(interval)
