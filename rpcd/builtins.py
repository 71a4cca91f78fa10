"""Built-in methods: `ping`, and the introspection methods under the reserved `rpc.` names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rpcd.methods import Registry
from rpcd.wire import INVALID_PARAMS, RPCError

_NOTHING = object()


def ping(value: Any = _NOTHING) -> Any:
    """Answer "pong", or echo the one argument given."""
    return "pong" if value is _NOTHING else value


def add_builtins(registry: Registry, stats: Callable[[], dict]) -> None:
    """Register the built-ins; `stats` returns the live figures for `rpc.stats`."""

    def methods() -> list[dict]:
        """List every method: name, signature and docstring."""
        return [m.describe() for m in registry]

    def describe(name: str) -> dict:
        """Describe one method: name, signature and its whole docstring."""
        if not isinstance(name, str):
            raise RPCError(INVALID_PARAMS, "invalid params for rpc.describe: name must be a string")
        return registry.get(name).describe()

    def rpc_stats() -> dict:
        """Uptime, connections, calls, per-method counts and latency, workers."""
        return stats()

    registry.add("ping", ping, builtin=True)
    registry.add("rpc.methods", methods, builtin=True)
    registry.add("rpc.describe", describe, builtin=True)
    registry.add("rpc.stats", rpc_stats, builtin=True)
