"""Serving status behind `rpc.health` and its watch, after grpc.health.v1 (SERVING / NOT_SERVING).

The empty name is the whole server; each methods module the settings load is a named
service. Everything turns NOT_SERVING the moment a drain starts (`shutdown`), before the
listeners close, so a balancer's check stops sending new connections first. Health checks
are counted, not written to the access log (`AccessLog.quiet`): a balancer checks every
second. They still answer once a drain has started (`Dispatcher.while_draining`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from gevent.event import Event

from rpcd.wire import INVALID_PARAMS, RPCError

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
CHECK_METHODS = frozenset({"rpc.health", "rpc.health.watch"})


class Health:
    """Each service's status; `watch` streams a service's status each time it changes."""

    def __init__(self, services: Iterable[str] = ()) -> None:
        self._status = {"": SERVING}
        for name in services:
            self._status[name] = SERVING
        self._changed = Event()
        self.stopping = False
        self.checks = 0  # rpc.health calls: counted in rpc.stats, not lined in the access log

    @property
    def services(self) -> list[str]:
        return list(self._status)

    def status(self, service: str = "") -> str:
        if not isinstance(service, str):
            raise RPCError(
                INVALID_PARAMS, "invalid params for rpc.health: service must be a string"
            )
        try:
            return self._status[service]
        except KeyError:
            known = ", ".join(repr(s) for s in self._status)
            raise RPCError(
                INVALID_PARAMS, f"rpc.health: unknown service {service!r} (known: {known})"
            ) from None

    def set(self, service: str, status: str) -> None:
        """Set one service's status (method code may mark its own module NOT_SERVING)."""
        if status not in (SERVING, NOT_SERVING):
            raise ValueError(f"status must be {SERVING} or {NOT_SERVING}, not {status!r}")
        self.status(service)  # unknown names are refused
        if self.stopping and status == SERVING:
            return  # a drain is final
        if self._status[service] != status:
            self._status[service] = status
            self._notify()

    def shutdown(self) -> None:
        """A drain started: every service NOT_SERVING from now on."""
        self.stopping = True
        for name in self._status:
            self._status[name] = NOT_SERVING
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, Event()
        changed.set()

    def watch(self, service: str = "") -> Iterator[dict]:
        """The status now, then every change; ends (with the last status) once draining."""
        last = self.status(service)
        yield {"status": last}
        while not self.stopping:
            self._changed.wait()
            now = self._status[service]
            if now != last:
                last = now
                if not self.stopping:
                    yield {"status": now}
        return {"status": self._status[service]}


__all__ = ["CHECK_METHODS", "NOT_SERVING", "SERVING", "Health"]
