"""`--processes N`: binds the listeners once, runs N workers that adopt them, keeps them up.

The supervisor serves no call. It binds every listener, then execs N unmodified
`twistd rpcd` workers (exec, not fork: each starts its own gevent hub) that receive the
sockets by the systemd protocol (fds from 3, LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID) and
share one accept queue. Each worker's hub beats on a pipe (gunicorn's workertmp is the
model); the supervisor restarts a worker that exits with a growing backoff, replaces one
whose beats stop for `heartbeat_timeout`, drains them all on SIGTERM and replaces them one
at a time on SIGHUP: the new worker listening before the old one drains, so no connection
is refused and no queued connection is lost.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from rpcd import adopt, config

log = Logger()

HEARTBEAT_ENV = "RPCD_HEARTBEAT_FD"
WORKER_ENV = "RPCD_WORKER"
PROCESSES_ENV = "RPCD_PROCESSES"
SHARED_LOG_ENV = "RPCD_LOG_SHARED"  # read by rpcd.service (the logs branch) to share the log
READY = b"R"
BEAT = b"."
# A worker that ran this long before exiting counts as healthy: its slot's backoff restarts.
STABLE_AFTER = 10.0
FIRST_BACKOFF = 0.1
# Beyond the worker's own shutdown grace: time to close connections and exit (service.py's
# CLOSE_TIMEOUT) with room to spare, before SIGKILL.
EXIT_MARGIN = 10.0

_DOMAINS = {socket.AF_INET: "INET", socket.AF_INET6: "INET6", socket.AF_UNIX: "UNIX"}
_BINDABLE = {"tcp", "tcp6", "unix"}


class SupervisorError(adopt.ListenError):
    """The listeners cannot be shared among processes; one line why."""


def check_shareable(descriptions: Iterable[str]) -> None:
    """Raise SupervisorError for a listener the workers could not adopt (ssl:, plugins)."""
    for description in descriptions:
        kind, _, rest = description.partition(":")
        inner = rest if kind.lower() == "haproxy" else description
        inner_kind = inner.split(":", 1)[0].lower()
        if inner_kind != "systemd" and inner_kind not in _BINDABLE:
            raise SupervisorError(
                f"{description}: --processes shares tcp:, tcp6:, unix: and systemd: "
                f"listeners (optionally behind haproxy:), not {inner_kind}: (terminate "
                "TLS in front, e.g. in HAProxy)"
            )


def resolve_processes(value: int | str) -> int:
    """The number of workers `processes` asks for ("auto": one per core)."""
    if value == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    return int(value)


def heartbeat_interval(timeout: float) -> float:
    return min(1.0, timeout / 4)


# -- the worker's side ----------------------------------------------------------------------


def worker_started(reactor: Any) -> None:
    """In a worker, once its listeners are up: say ready, then beat from the hub.

    The beat is a libev timer of the hub itself, so a method that blocks the loop stops it.
    A supervisor gone (the pipe broken) stops the worker: no orphan keeps the port.
    """
    fd_text = os.environ.pop(HEARTBEAT_ENV, None)  # not for a method's own subprocesses
    if not fd_text or not fd_text.isdigit():
        return
    fd = int(fd_text)
    os.set_inheritable(fd, False)
    os.set_blocking(fd, False)  # a supervisor not reading must never block the hub
    import gevent
    import gevent.monkey

    timeout = float(os.environ.get("RPCD_HEARTBEAT_TIMEOUT", "30"))
    timer = gevent.get_hub().loop.timer(0, heartbeat_interval(timeout))
    write = gevent.monkey.get_original("os", "write")

    def beat(data: bytes = BEAT) -> None:
        try:
            write(fd, data)
        except BlockingIOError:
            pass
        except OSError:
            timer.close()
            log.warn("rpcd worker stopping: its supervisor is gone")
            reactor.callFromThread(reactor.stop)

    beat(READY)
    timer.start(beat)
    reactor.addSystemEventTrigger("before", "shutdown", timer.close)


# -- the supervisor's side ------------------------------------------------------------------


class _NoConnections(Factory):
    """The supervisor never accepts: its listening ports stop reading at once."""

    noisy = False

    def buildProtocol(self, addr: Any) -> None:
        return None


class Listener:
    """One shared socket: what the operator asked for and what workers adopt."""

    __slots__ = ("description", "fd", "family", "port", "proxied")

    def __init__(self, description: str, fd: int, family: int, port: Any, proxied: bool) -> None:
        self.description = description
        self.fd = fd
        self.family = family
        self.port = port  # the supervisor's Twisted port holding it (None: passed by systemd)
        self.proxied = proxied

    def worker_endpoint(self, index: int) -> str:
        text = f"systemd:domain={_DOMAINS[self.family]}:index={index}"
        return f"haproxy:{text}" if self.proxied else text


@defer.inlineCallbacks
def bind(descriptions: Iterable[str], reactor: Any):
    """Bind every listener once (tcp:, tcp6:, unix:, systemd:, each maybe behind haproxy:)."""
    check_shareable(descriptions)
    bound: list[Listener] = []
    try:
        for description in descriptions:
            kind, _, rest = description.partition(":")
            proxied = kind.lower() == "haproxy"
            inner = rest if proxied else description
            inner_kind = inner.split(":", 1)[0].lower()
            if inner_kind == "systemd":
                fd, family = adopt.systemd_socket(inner)
                bound.append(Listener(description, fd, family, None, proxied))
                continue
            try:
                port = yield endpoints.serverFromString(reactor, inner).listen(_NoConnections())
            except CannotListenError as exc:
                errno = getattr(exc.socketError, "errno", None)
                why = os.strerror(errno).lower() if errno else str(exc.socketError)
                raise adopt.ListenError(f"cannot listen on {description}: {why}") from None
            port.stopReading()  # the queue is the workers' to accept from
            sock = port.socket
            bound.append(Listener(description, sock.fileno(), sock.family, port, proxied))
    except BaseException:
        close(bound)
        raise
    return bound


def close(listeners: Iterable[Listener]) -> None:
    for listener in listeners:
        if listener.port is not None:
            listener.port.stopListening()


def worker_args(config_file: str | None, given: dict[str, Any]) -> list[str]:
    """The `twistd rpcd` options of a worker: the supervisor's own, minus its listeners,
    --processes and --metrics (a worker is one process, its listeners the passed sockets,
    its metrics a private socket the supervisor reads)."""
    fields = {f.name: f for f in config.option_fields()}
    args: list[str] = ["--config", config_file] if config_file else []
    for key, value in given.items():
        if key in ("listen", "processes", "metrics"):
            continue
        f = fields[key]
        option = "--" + key.replace("_", "-")
        if f.metadata["flag"]:
            if value is False:
                args.append("--" + f.metadata["flag"])
        elif f.default is False:
            if value is True:
                args.append(option)
        elif isinstance(value, (list, tuple)):
            for item in value:
                args += [option, str(item)]
        else:
            args += [option, str(value)]
    return args


class Worker(ProcessProtocol):
    """One worker process: its slot, its beats, its end."""

    def __init__(self, supervisor: Supervisor, slot: int) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.pid: int | None = None
        self.started_at = supervisor.clock.seconds()
        self.last_beat = self.started_at
        self._waiting: list[defer.Deferred] = []  # when_ready() callers
        self.is_ready = False
        self.retiring = False  # asked to stop: its exit is no crash
        self.killed = False  # SIGKILLed by the watch: once is enough
        self.ended = defer.Deferred()
        self.status: int | None = None
        self.metrics_path: str | None = None  # its private metrics socket (--metrics)

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd != self.supervisor.heartbeat_fd:
            return
        self.last_beat = self.supervisor.clock.seconds()
        if not self.is_ready and READY in data:
            self.is_ready = True
            self.supervisor.ready(self)
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(self)

    def when_ready(self) -> defer.Deferred:
        """Fires once the worker listens; fails if it exits first."""
        if self.is_ready:
            return defer.succeed(self)
        if self.ended.called:
            return defer.fail(RuntimeError(f"exited with {self.status} before listening"))
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def signal(self, number: int) -> None:
        try:
            self.transport.signalProcess(number)
        except Exception:  # already gone: processEnded is on its way
            pass

    def processEnded(self, reason: Any) -> None:
        self.status = getattr(reason.value, "exitCode", None)
        signal_number = getattr(reason.value, "signal", None)
        self.supervisor.exited(self, self.status, signal_number)
        self.ended.callback(self)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(RuntimeError(f"exited with {self.status} before listening"))


class Supervisor(Service):
    """The `--processes` parent: listeners, workers, signals."""

    def __init__(
        self,
        settings: Any,
        args: list[str],
        reactor: Any = None,
        executable: list[str] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        check_shareable(settings.listen)
        self.settings = settings
        self.reactor = self.clock = reactor
        self.count = resolve_processes(settings.processes)
        self.args = args
        # Each worker runs `twistd -n rpcd ...` with the same interpreter as ours.
        self.executable = executable or [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "rpcd",
        ]
        self.listeners: list[Listener] = []
        self.workers: dict[int, Worker] = {}  # the current worker of each slot
        self.retired: set[Worker] = set()  # replaced, still draining
        self.failures = [0] * self.count  # exits in a row per slot, for the backoff
        self.restarts: dict[int, Any] = {}  # slot -> pending restart
        self.heartbeat_fd = 3  # set once the listeners are known: the fd after them
        self.stopping = False
        self.reloading = False
        self.ever_ready = False
        self.restarted = 0
        self._watchdog: Any = None
        self.metrics: Any = None  # rpcd.metrics_sum.SupervisorMetrics under --metrics
        if settings.metrics:
            from rpcd.metrics_sum import SupervisorMetrics

            self.metrics = SupervisorMetrics(
                self, settings.metrics, timeout=settings.metrics_scrape_timeout
            )

    # -- start ----------------------------------------------------------------------------

    def bind(self) -> None:
        """Bind every listener now, before twistd daemonizes (raises ListenError): a port in
        use is one line on the terminal, as for one daemon."""
        if self.listeners:
            return
        outcome: list = []
        bind(self.settings.listen, self.reactor).addBoth(outcome.append)
        (result,) = outcome  # tcp:, unix: and systemd: all bind synchronously
        if isinstance(result, Failure):
            if result.check(adopt.ListenError):
                raise result.value
            raise adopt.ListenError(f"cannot listen: {result.getErrorMessage()}")
        if self.metrics is not None:
            try:
                self.metrics.bind()  # the one /metrics of the service; workers get sockets
            except adopt.ListenError:
                close(result)
                raise
        self.listeners = result

    def startService(self) -> None:
        super().startService()
        try:
            self.bind()
        except adopt.ListenError as exc:
            log.error("rpcd supervisor: {why}", why=exc)
            self._exit_code(1)
            self.reactor.callWhenRunning(self.reactor.stop)  # start-up may not have finished
            return
        self.heartbeat_fd = adopt.LISTEN_FDS_START + len(self.listeners)
        for slot in range(self.count):
            self.spawn(slot)
        self._watchdog = self.reactor.callLater(self._interval(), self._watch)
        signal.signal(signal.SIGHUP, self._on_hup)
        log.info(
            "rpcd supervisor: {n} workers on {listen} (limits apply per worker)",
            n=self.count,
            listen=", ".join(self.settings.listen),
        )

    def _interval(self) -> float:
        return heartbeat_interval(self.settings.heartbeat_timeout)

    def _exit_code(self, code: int) -> None:
        # twistd has no exit status of its own; leave with ours once shutdown is done.
        def leave() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

        self.reactor.addSystemEventTrigger("after", "shutdown", leave)

    def spawn(self, slot: int) -> Worker:
        worker = Worker(self, slot)
        env = dict(os.environ)
        env.update(
            {
                "LISTEN_FDS": str(len(self.listeners)),
                "LISTEN_FDNAMES": ":".join(f"rpcd{i}" for i in range(len(self.listeners))),
                HEARTBEAT_ENV: str(self.heartbeat_fd),
                "RPCD_HEARTBEAT_TIMEOUT": str(self.settings.heartbeat_timeout),
                WORKER_ENV: str(slot),
                PROCESSES_ENV: str(self.count),
                # The workers share one service log (rpcd.logs: a shared lock, rotation
                # serialised among them) instead of each refusing the others'.
                SHARED_LOG_ENV: "1",
            }
        )
        env.pop("LISTEN_PID", None)
        listen: list[str] = []
        for index, listener in enumerate(self.listeners):
            listen += ["--listen", listener.worker_endpoint(index)]
        extra = ["--processes", "1"]
        if self.metrics is not None:
            extra += self.metrics.worker_option(worker)
        argv = [*self.executable, *self.args, *extra, *listen]
        child_fds: dict[int, Any] = {0: 0, 1: 1, 2: 2, self.heartbeat_fd: "r"}
        for index, listener in enumerate(self.listeners):
            child_fds[adopt.LISTEN_FDS_START + index] = listener.fd
        # LISTEN_PID must be the worker's own pid: a shell sets it, then execs the worker.
        shell = ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"']
        self.reactor.spawnProcess(worker, shell[0], [*shell, *argv], env=env, childFDs=child_fds)
        self.workers[slot] = worker
        log.info("rpcd supervisor: worker {slot} started, pid {pid}", slot=slot, pid=worker.pid)
        return worker

    def ready(self, worker: Worker) -> None:
        self.ever_ready = True
        log.info(
            "rpcd supervisor: worker {slot} (pid {pid}) listening", slot=worker.slot, pid=worker.pid
        )

    # -- keeping them up -----------------------------------------------------------------

    def exited(self, worker: Worker, status: int | None, number: int | None) -> None:
        how = f"signal {number}" if number else f"status {status}"
        self.retired.discard(worker)
        if self.metrics is not None:
            self.metrics.exited(worker)  # its last counters stay in the sum
        if self.workers.get(worker.slot) is not worker:
            log.info(
                "rpcd supervisor: old worker pid {pid} exited ({how})", pid=worker.pid, how=how
            )
            return
        del self.workers[worker.slot]
        if self.stopping or worker.retiring:
            log.info("rpcd supervisor: worker {slot} exited ({how})", slot=worker.slot, how=how)
            return
        if not self.ever_ready:
            log.error(
                "rpcd supervisor: worker {slot} exited ({how}) before listening; stopping",
                slot=worker.slot,
                how=how,
            )
            self._exit_code(1)
            self.reactor.stop()
            return
        slot = worker.slot
        if self.clock.seconds() - worker.started_at >= STABLE_AFTER:
            self.failures[slot] = 0
        delay = min(self.settings.restart_backoff_max, FIRST_BACKOFF * 2 ** self.failures[slot])
        self.failures[slot] += 1
        log.warn(
            "rpcd supervisor: worker {slot} (pid {pid}) exited ({how}); restarting in {delay:g} s",
            slot=slot,
            pid=worker.pid,
            how=how,
            delay=delay,
        )
        self.restarts[slot] = self.reactor.callLater(delay, self._restart, slot)

    def _restart(self, slot: int) -> None:
        self.restarts.pop(slot, None)
        if not self.stopping and slot not in self.workers:
            self.restarted += 1
            self.spawn(slot)

    def _watch(self) -> None:
        """Replace a worker whose hub stopped beating, or that never came up in time."""
        now = self.clock.seconds()
        for worker in list(self.workers.values()):
            if worker.retiring or worker.killed:
                continue
            if worker.is_ready:
                silent = now - worker.last_beat
                if silent > self.settings.heartbeat_timeout:
                    log.error(
                        "rpcd supervisor: worker {slot} (pid {pid}) has not beaten for "
                        "{silent:.1f} s (heartbeat_timeout {limit:g}); killing it",
                        slot=worker.slot,
                        pid=worker.pid,
                        silent=silent,
                        limit=self.settings.heartbeat_timeout,
                    )
                    worker.killed = True
                    worker.signal(signal.SIGKILL)
            elif now - worker.started_at > self.settings.worker_start_timeout:
                log.error(
                    "rpcd supervisor: worker {slot} (pid {pid}) not listening after "
                    "{limit:g} s (worker_start_timeout); killing it",
                    slot=worker.slot,
                    pid=worker.pid,
                    limit=self.settings.worker_start_timeout,
                )
                worker.killed = True
                worker.signal(signal.SIGKILL)
        self._watchdog = self.reactor.callLater(self._interval(), self._watch)

    # -- SIGHUP: one at a time -------------------------------------------------------------

    def _on_hup(self, number: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)

    @defer.inlineCallbacks
    def reload(self):
        """Replace every worker, one slot at a time: the new one listening, then the old
        one drained. A new worker that fails to come up stops the rolling restart."""
        if self.reloading or self.stopping:
            return
        self.reloading = True
        log.info("rpcd supervisor: SIGHUP, replacing {n} workers one at a time", n=self.count)
        try:
            for slot in range(self.count):
                old = self.workers.get(slot)
                if self.stopping:
                    return
                if old is not None:
                    old.retiring = True  # its exit from here on is expected
                    self.retired.add(old)
                    del self.workers[slot]
                new = self.spawn(slot)
                try:
                    yield new.when_ready()
                except Exception as exc:
                    log.error(
                        "rpcd supervisor: new worker {slot} failed ({why}); rolling restart "
                        "stopped, the old one keeps serving",
                        slot=slot,
                        why=exc,
                    )
                    if old is not None and not old.ended.called:
                        old.retiring = False
                        self.retired.discard(old)
                        self.workers[slot] = old
                    return
                if old is not None:
                    old.signal(signal.SIGTERM)
            log.info("rpcd supervisor: every worker replaced")
        finally:
            self.reloading = False

    # -- stop ------------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred:
        """SIGTERM every worker (each drains within shutdown_grace), SIGKILL what is left after
        the grace and a margin, then close the listeners."""
        super().stopService()
        self.stopping = True
        for pending in self.restarts.values():
            if pending.active():
                pending.cancel()
        self.restarts.clear()
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        everyone = [*self.workers.values(), *self.retired]
        for worker in everyone:
            worker.signal(signal.SIGTERM)
        limit = self.settings.shutdown_grace + EXIT_MARGIN
        killer = self.reactor.callLater(limit, self._kill_all, everyone)
        done = defer.DeferredList([w.ended for w in everyone if not w.ended.called])

        def finished(_: Any) -> None:
            if killer.active():
                killer.cancel()
            close(self.listeners)
            if self.metrics is not None:
                self.metrics.close()
            log.info("rpcd supervisor: every worker stopped")

        return done.addCallback(finished)

    def _kill_all(self, workers: list[Worker]) -> None:
        for worker in workers:
            if not worker.ended.called:
                log.warn(
                    "rpcd supervisor: worker {slot} (pid {pid}) still running after the grace; "
                    "killing it",
                    slot=worker.slot,
                    pid=worker.pid,
                )
                worker.signal(signal.SIGKILL)

    # Twisted's service runner calls this on the returned service (tap.makeService).
    def start_log(self) -> None:
        """The workers write the service log; the supervisor logs to twistd's log."""


__all__ = [
    "Supervisor",
    "SupervisorError",
    "bind",
    "resolve_processes",
    "worker_args",
    "worker_started",
]
