"""rpcd.health and the rpc.health built-ins: status, watch, NOT_SERVING on drain, quiet checks."""

from __future__ import annotations

import gevent
import pytest

from rpcd.builtins import add_builtins
from rpcd.health import NOT_SERVING, SERVING, Health
from rpcd.methods import Registry
from rpcd.wire import RPCError


def test_whole_server_and_named_services():
    health = Health(["shop.methods"])
    assert health.status() == SERVING
    assert health.status("shop.methods") == SERVING
    health.set("shop.methods", NOT_SERVING)
    assert health.status("shop.methods") == NOT_SERVING
    assert health.status("") == SERVING
    with pytest.raises(RPCError, match="unknown service 'nope'"):
        health.status("nope")
    with pytest.raises(ValueError):
        health.set("", "MAYBE")


def test_shutdown_is_final():
    health = Health(["a"])
    health.shutdown()
    assert health.status() == health.status("a") == NOT_SERVING
    health.set("", SERVING)
    assert health.status() == NOT_SERVING


def test_watch_streams_changes_and_ends_on_drain():
    health = Health(["a"])
    seen: list = []

    def consume():
        stream = health.watch("a")
        try:
            while True:
                seen.append(next(stream))
        except StopIteration as stop:
            seen.append(("final", stop.value))

    watcher = gevent.spawn(consume)
    gevent.sleep(0)
    assert seen == [{"status": SERVING}]
    health.set("", NOT_SERVING)  # another service: nothing for this watch
    gevent.sleep(0)
    health.set("a", NOT_SERVING)
    gevent.sleep(0)
    health.set("a", SERVING)
    gevent.sleep(0)
    assert seen[1:] == [{"status": NOT_SERVING}, {"status": SERVING}]
    health.shutdown()
    watcher.join(timeout=5)
    assert watcher.dead
    assert seen[-1] == ("final", {"status": NOT_SERVING})


def test_builtins_answer_and_count():
    registry = Registry()
    health = add_builtins(registry, lambda: {"calls": {}}, Health(["m"]))
    check = registry.get("rpc.health").func
    assert check() == {"status": SERVING}
    assert check("m") == {"status": SERVING}
    health.shutdown()
    assert check() == {"status": NOT_SERVING}
    stats = registry.get("rpc.stats").func()
    assert stats["health_checks"] == 3
    assert stats["process"]["pid"] > 0
    assert {"pid", "worker", "processes"} <= set(stats["process"])


def test_stats_name_the_worker(monkeypatch):
    monkeypatch.setenv("RPCD_WORKER", "2")
    monkeypatch.setenv("RPCD_PROCESSES", "4")
    registry = Registry()
    add_builtins(registry, dict)
    process = registry.get("rpc.stats").func()["process"]
    assert process["worker"] == 2
    assert process["processes"] == 4
