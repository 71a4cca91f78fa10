"""Builds the running daemon: listeners, dispatcher, connection factory, graceful shutdown."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger

from rpcd import adopt, auth, logs, supervisor
from rpcd.builtins import add_builtins
from rpcd.config import Settings, public_address
from rpcd.dispatch import Dispatcher
from rpcd.health import CHECK_METHODS, Health
from rpcd.methods import Registry
from rpcd.process import BlockingMonitor, raise_fd_limit
from rpcd.protocol import ConnectionLimits, RPCFactory

log = Logger()

# After the drain, how long connections get to flush their last replies before the reactor stops.
CLOSE_TIMEOUT = 5.0
# Set to "1" by a supervisor for the workers it starts: they share its log file and its lock.
SHARED_LOG_ENV = "RPCD_LOG_SHARED"


# [scale seam] one ListenError for bind errors and systemd: choices alike (rpcd.adopt).
ListenError = adopt.ListenError


# A UNIX socket's mode when its endpoint names none: only rpcd's own user may connect.
# Twisted's default, 0666, would let every local user in, without authentication.
UNIX_SOCKET_MODE = "600"


def with_unix_mode(endpoint: str) -> str:
    """`endpoint` with `mode=600` added if it is a UNIX listener that names no mode."""
    kind, _, rest = endpoint.partition(":")
    if kind.lower() == "haproxy":
        return f"{kind}:{with_unix_mode(rest)}"
    if kind.lower() != "unix":
        return endpoint
    if any(part.startswith("mode=") for part in re.split(r"(?<!\\):", rest)):
        return endpoint
    return f"{endpoint}:mode={UNIX_SOCKET_MODE}"


def build_listener(endpoint: str, factory: Any, settings: Settings, reactor: Any) -> IService:
    """The service listening on one endpoint string (it raises its bind error at once).

    [scale seam] systemd: adopted rpcd's way, haproxy: through rpcd.proxy (rpcd.adopt)."""
    return adopt.listener(with_unix_mode(endpoint), factory, settings, reactor)


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
            max_streams=settings.max_streams,
            workers_prestart=settings.workers_prestart,
            while_draining=CHECK_METHODS,  # a balancer hears NOT_SERVING, not -32005
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
            max_method_bytes=settings.max_method_bytes,
            max_reply_bytes=settings.max_reply_bytes,
            max_unauthenticated=settings.max_unauthenticated,
            auth_failure_delay=settings.auth_failure_delay,
            auth_key=auth.load_key(settings.auth_key_file) if settings.auth_key_file else None,
        )
        self.factory = RPCFactory(self.dispatcher, limits, clock=reactor)
        self.log: logs.LogFile | None = None
        # The observer twistd should use instead of its own (set by tap under -n).
        self.log_observer: Any = None
        self._bound = False
        self._listeners: list = []
        # Judged now: a systemd-passed socket can be read only before it is adopted.
        self._exposed = [e for e in settings.listen if public_address(e)]
        self._previous_usr1: Any = None
        for endpoint in settings.listen:
            listener = build_listener(endpoint, self.factory, settings, reactor)
            listener.setServiceParent(self)
            self._listeners.append(listener)
        if settings.metrics:
            from rpcd.metrics import MetricsService

            MetricsService(self, settings.metrics).setServiceParent(self)

    def bind(self) -> None:
        """Bind every listener now (before twistd daemonizes): raises ListenError."""
        if self._bound:
            return
        self._bound = True
        for endpoint, listener in zip(self.settings.listen, self._listeners, strict=True):
            try:
                listener.privilegedStartService()
            except CannotListenError as exc:
                error = exc.socketError
                errno = getattr(error, "errno", None)
                why = os.strerror(errno) if errno else str(error)
                raise ListenError(
                    f"cannot listen on {endpoint}: {why[:1].lower()}{why[1:]}"
                ) from None

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)  # twistd's AppLogger reads it

    def reopen_log(self) -> None:
        """Reopen rpcd's log file: logrotate moved it away and sent SIGUSR1."""
        if self.log is not None:
            self.log.reopen()
            log.info("log file {path} reopened (SIGUSR1)", path=self.log.path)

    def _on_usr1(self, signum: int, frame: Any) -> None:
        # A signal handler may interrupt the loop mid-write: the reopen runs in the loop.
        self.reactor.callFromThread(self.reopen_log)
        if callable(self._previous_usr1):
            self._previous_usr1(signum, frame)  # twistd's own: it rotates twistd.log

    def privilegedStartService(self) -> None:
        # The listeners are bound here unless makeService bound them already.
        self.bind()

    def start_log(self) -> None:
        """Write every log event from now on to the log file too (raises logs.LogError)."""
        settings = self.settings
        self.log = logs.LogFile(
            settings.log_file,
            max_bytes=settings.log_rotate_bytes,
            backups=settings.log_backups,
            level=settings.log_level,
            fmt=settings.log_format,
            # The --processes workers and their supervisor write one log file together.
            shared=os.environ.get(SHARED_LOG_ENV) == "1",
        )
        self.log.start()
        # twistd drops its own observer (the terminal) after the reactor stops: echo before.
        self.reactor.addSystemEventTrigger("after", "shutdown", self.log.flush)
        if settings.access_log and self.log.logs_access:
            access = logs.AccessLog(self.log, quiet=CHECK_METHODS)  # checks: counted, no line
            access.follow(self.dispatcher.stats)  # the lines of the calls it journals

    def startService(self) -> None:
        self.bind()
        if self.log is not None:
            self._previous_usr1 = signal.signal(signal.SIGUSR1, self._on_usr1)
        raise_fd_limit(self.settings.max_connections)
        if self.settings.max_blocking_time > 0:
            self.monitor = BlockingMonitor(self.dispatcher, self.settings.max_blocking_time)
            self.monitor.start()
        super().startService()
        supervisor.worker_started(self.reactor)  # [scale seam] under --processes: ready, beats
        if self.factory.limits.auth_key is None:
            for endpoint in self._exposed:
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
        if self.log is not None and signal.getsignal(signal.SIGUSR1) == self._on_usr1:
            signal.signal(signal.SIGUSR1, self._previous_usr1 or signal.SIG_DFL)
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
