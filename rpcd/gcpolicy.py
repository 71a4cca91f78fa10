"""The daemon's garbage-collector policy: start-up's objects kept out of every later collection.

By the time the reactor runs, start-up has left some 50,000 container objects (modules,
classes, functions, their dicts and tuples) that live as long as the process. Every full
collection walks them all, with the loop stopped: 10-40 ms on a busy machine, which at tens
of thousands of calls a second puts hundreds of calls that late. None of them will ever be
garbage, so once the reactor runs they move to the permanent generation (`gc.freeze`) and a
full collection walks only what was made since: a fraction of a millisecond. Young
collections are untouched.
"""

from __future__ import annotations

import gc
from typing import Any


def freeze() -> int:
    """Collect what start-up left as garbage, then freeze every survivor; how many are frozen."""
    gc.collect()  # garbage frozen would never be freed
    gc.freeze()
    return gc.get_freeze_count()


def freeze_when_running(reactor: Any) -> None:
    """Freeze once the reactor runs: after the services started (listeners, workers, log)."""
    reactor.callWhenRunning(freeze)


__all__ = ["freeze", "freeze_when_running"]
