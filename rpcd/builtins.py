"""Built-in methods: `ping`, `getlog`, and the introspection methods under the `rpc.` names."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from rpcd import logs
from rpcd.health import Health
from rpcd.methods import Registry
from rpcd.wire import INTERNAL_ERROR, INVALID_PARAMS, RPCError

_NOTHING = object()


def ping(value: Any = _NOTHING) -> Any:
    """Answer "pong", or echo the one argument given."""
    return "pong" if value is _NOTHING else value


MAX_LOG_LINES = 10000


def _bad(message: str) -> RPCError:
    return RPCError(INVALID_PARAMS, f"invalid params for getlog: {message}")


def getlog(
    lines: int = 100,
    level: str | None = None,
    grep: str | None = None,
    since: str | None = None,
    follow: bool = False,
) -> Any:
    """The server's own log, newest entries last: {"lines": [...], "truncated": bool}.

    lines: how many entries (0 to 10000; an entry keeps its traceback lines with it);
    level: minimum level (debug, info, warn, error, critical); grep: plain, case-sensitive
    substring; since: ISO-8601 time (UTC if it names no zone); truncated: older matching
    entries were left out. follow: true streams the entries, then every new one as it is
    written, until rpc.cancel. A legacy client may pass these as one object.
    """
    if isinstance(lines, dict) and not isinstance(lines.get("lines"), dict):
        try:  # the legacy envelope's single value: the parameters as one object
            return getlog(**lines)
        except TypeError as exc:
            raise _bad(str(exc).replace("getlog() ", "")) from None
    if type(lines) is not int or not 0 <= lines <= MAX_LOG_LINES:
        raise _bad(f"lines must be an integer from 0 to {MAX_LOG_LINES}, not {lines!r}")
    if level is not None and level not in logs.LEVELS:
        raise _bad(f"level must be one of {', '.join(logs.LEVELS)}, not {level!r}")
    if grep is not None and not isinstance(grep, str):
        raise _bad(f"grep must be a string, not {grep!r}")
    if type(follow) is not bool:
        raise _bad(f"follow must be true or false, not {follow!r}")
    try:
        where = logs.Filter(level, grep, since)
    except (TypeError, ValueError):
        raise _bad(
            f"since must be an ISO-8601 time such as 2024-05-01T12:00:00Z, not {since!r}"
        ) from None
    log = logs.current()
    if log is None:
        raise RPCError(INTERNAL_ERROR, "getlog: this server writes no log file")
    log.flush()
    if follow:
        return logs.follow(log.path, log.backups, where, lines, log.changed)
    found, truncated = logs.tail(log.path, log.backups, lines, where)
    return {"lines": found, "truncated": truncated}


def _process() -> dict:
    """Which process answered: its pid and, under --processes, its worker slot."""
    worker = os.environ.get("RPCD_WORKER")
    return {
        "pid": os.getpid(),
        "worker": int(worker) if worker and worker.isdigit() else None,
        "processes": int(os.environ.get("RPCD_PROCESSES", "1") or 1),
    }


def add_builtins(
    registry: Registry, stats: Callable[[], dict], health: Health | None = None
) -> Health:
    """Register the built-ins; `stats` returns the live figures for `rpc.stats`, `health`
    holds the status `rpc.health` reports (a new one, all SERVING, when not given)."""
    health = Health() if health is None else health

    def methods() -> list[dict]:
        """List every method: name, signature and docstring."""
        return [m.describe() for m in registry]

    def describe(name: str) -> dict:
        """Describe one method: name, signature and its whole docstring."""
        if not isinstance(name, str):
            raise RPCError(INVALID_PARAMS, "invalid params for rpc.describe: name must be a string")
        return registry.get(name).describe()

    def rpc_stats() -> dict:
        """Uptime, connections, calls, per-method counts and latency, workers, the process
        that answered (pid, worker slot under --processes) and the health checks counted."""
        figures = stats()
        figures["process"] = _process()
        figures["health_checks"] = health.checks
        return figures

    def rpc_health(service: str = "") -> dict:
        """{"status": "SERVING" or "NOT_SERVING"}: the whole server ("") or a methods module
        by the name it was loaded with. NOT_SERVING from the moment a drain starts."""
        health.checks += 1
        return {"status": health.status(service)}

    def rpc_health_watch(service: str = "") -> Any:
        """Stream {"status": ...} now and at every change; the stream ends once the server
        drains, its final reply NOT_SERVING."""
        health.checks += 1
        return health.watch(service)

    registry.add("ping", ping, builtin=True)
    registry.add("getlog", getlog, builtin=True)
    registry.add("rpc.methods", methods, builtin=True)
    registry.add("rpc.describe", describe, builtin=True)
    registry.add("rpc.stats", rpc_stats, builtin=True)
    registry.add("rpc.health", rpc_health, builtin=True)
    registry.add("rpc.health.watch", rpc_health_watch, builtin=True)
    return health
