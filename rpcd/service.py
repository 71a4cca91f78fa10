"""Builds the running daemon: listeners, dispatcher, connection factory, graceful shutdown."""

from __future__ import annotations

import time
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

from rpcd import adopt, auth, logs, supervisor
from rpcd.builtins import add_builtins
from rpcd.config import Settings, public_address
from rpcd.dispatch import Dispatcher
from rpcd.health import Health, quiet
from rpcd.methods import Registry
from rpcd.process import BlockingMonitor, raise_fd_limit
from rpcd.protocol import ConnectionLimits, RPCFactory

log = Logger()

# After the drain, how long connections get to flush their last replies before the reactor stops.
CLOSE_TIMEOUT = 5.0


def build_registry(settings: Settings, stats: Any, health: Any = None) -> Registry:
    """The built-ins plus every methods module the settings name (raises LoadError)."""
    registry = Registry()
    add_builtins(registry, stats, health)  # [scale seam] health: rpc.health's state
    for spec in settings.methods:
        registry.load(spec)
    return registry


class RPCService(MultiService):
    """The daemon: its listeners are child services; stopping drains calls before closing."""

    def __init__(
        self, settings: Settings, registry: Registry | None = None, reactor: Any = None
    ) -> None:
        super().__init__()
        self.monitor: BlockingMonitor | None = None
        if reactor is None:
            from twisted.internet import reactor
        self.settings = settings
        self.reactor = reactor
        self.started_at = time.time()
        # [scale seam] rpc.health: the server and each methods module; NOT_SERVING once draining.
        self.health = Health(settings.methods)
        if registry is None:
            registry = build_registry(settings, self.stats, self.health)
        self.registry = registry
        self.dispatcher = Dispatcher(
            self.registry,
            max_workers=settings.workers,
            queue_size=settings.queue_size,
            call_timeout=settings.call_timeout,
        )
        limits = ConnectionLimits(
            max_connections=settings.max_connections,
            max_connections_per_peer=settings.max_connections_per_peer,
            max_frame_bytes=settings.max_frame_bytes,
            idle_timeout=settings.idle_timeout,
            max_inflight=settings.max_inflight,
            max_batch=settings.max_batch,
            byteorder=settings.byteorder,
            max_outbuf=settings.max_outbuf,
            write_timeout=settings.write_timeout,
            auth_key=auth.load_key(settings.auth_key_file) if settings.auth_key_file else None,
        )
        self.factory = RPCFactory(self.dispatcher, limits, clock=reactor)
        # [scale seam] systemd: adopted rpcd's way, haproxy: through rpcd.proxy (rpcd.adopt).
        for endpoint in settings.listen:
            adopt.listener(endpoint, self.factory, settings, reactor).setServiceParent(self)

    def start_log(self) -> None:
        """Write every log event from now on to the log file too (raises logs.LogError)."""
        settings = self.settings
        self.log = logs.LogFile(
            settings.log_file,
            max_bytes=settings.log_rotate_bytes,
            backups=settings.log_backups,
            level=settings.log_level,
            fmt=settings.log_format,
        )
        self.log.start()
        # twistd drops its own observer (the terminal) after the reactor stops: echo before.
        self.reactor.addSystemEventTrigger("after", "shutdown", self.log.flush)
        if settings.access_log and self.log.logs_access:
            self.dispatcher.on_complete = quiet(self.log.access)  # [scale seam] no check lines
            self.dispatcher.on_refused = self.log.refused

    def startService(self) -> None:
        raise_fd_limit(self.settings.max_connections)
        if self.settings.max_blocking_time > 0:
            self.monitor = BlockingMonitor(self.dispatcher, self.settings.max_blocking_time)
            self.monitor.start()
        super().startService()
        supervisor.worker_started(self.reactor)  # [scale seam] under --processes: ready, beats
        if self.factory.limits.auth_key is None:
            for endpoint in filter(public_address, self.settings.listen):
                log.warn(
                    "{endpoint} is reachable from other hosts without authentication",
                    endpoint=endpoint,
                )
        log.info(
            "rpcd serving {count} methods on {listen}",
            count=sum(1 for _ in self.registry),
            listen=", ".join(self.settings.listen),
        )

    @defer.inlineCallbacks
    def stopService(self):
        self.health.shutdown()  # [scale seam] NOT_SERVING before the listeners close
        log.info("rpcd stopping: listeners closed, draining {n} calls", n=self.dispatcher.in_flight)
        yield super().stopService()
        yield self.dispatcher.drain(self.settings.shutdown_grace, self.reactor)
        self.dispatcher.stop_workers()
        closed = self.factory.close_all()
        timer = self.reactor.callLater(CLOSE_TIMEOUT, closed.cancel)
        try:
            yield closed
        except defer.CancelledError:
            log.warn(
                "rpcd stopping: {n} connections did not close in time",
                n=len(self.factory.connections),
            )
        else:
            timer.cancel()
        if self.monitor is not None:
            self.monitor.stop()
        log.info("rpcd stopped")

    def stats(self) -> dict:
        dispatcher, factory = self.dispatcher, self.factory
        calls = dispatcher.stats.summary()
        return {
            "uptime": round(time.time() - self.started_at, 3),
            "connections": {
                "open": len(factory.connections),
                "accepted": factory.accepted,
                "refused": dict(factory.refused),
            },
            "calls": {
                "total": dispatcher.calls_total,
                "in_flight": dispatcher.in_flight,
                "queued": dispatcher.queued,
                "refused_busy": dispatcher.refused_busy,
                "errors": calls["errors"],
            },
            "methods": calls["methods"],
            "workers": {"started": dispatcher.workers, "busy": dispatcher.busy},
        }
