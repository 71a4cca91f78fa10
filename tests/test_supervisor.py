"""rpcd.supervisor without processes: worker options, backoff, heartbeat watch, SIGHUP order."""

from __future__ import annotations

import os
import signal

import pytest
from twisted.internet.task import Clock

from rpcd import config, supervisor
from rpcd.supervisor import READY, Supervisor, worker_args


class FakeTransport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[int] = []

    def signalProcess(self, number: int) -> None:
        self.signals.append(number)


class FakeReactor(Clock):
    """A Clock that records spawned workers instead of starting them."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list = []
        self.stopped = False

    def spawnProcess(self, protocol, executable, args, env, childFDs):
        protocol.makeConnection(FakeTransport(1000 + len(self.spawned)))
        self.spawned.append((protocol, args, env, childFDs))

    def addSystemEventTrigger(self, *args) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True


class Ended:
    def __init__(self, code=None, number=None) -> None:
        self.value = type("E", (), {"exitCode": code, "signal": number})()


def make(count: int = 2, **settings) -> tuple[Supervisor, FakeReactor]:
    reactor = FakeReactor()
    s = config.build(overrides={"processes": str(count), **settings})
    sup = Supervisor(s, ["--methods", "m"], reactor=reactor, executable=["twistd-rpcd"])
    sup.listeners = [supervisor.Listener("tcp:1:interface=127.0.0.1", 7, 2, None, False)]
    sup.heartbeat_fd = 4
    for slot in range(count):
        sup.spawn(slot)
    return sup, reactor


def ready(worker) -> None:
    worker.childDataReceived(4, READY)


def test_worker_args_keep_options_but_not_listeners_or_processes():
    given = {
        "listen": ["tcp:1"],
        "processes": "4",
        "methods": ["a.b", "c.d"],
        "max_connections": "10",
        "monkey_patch": False,
        "allow_public_unauthenticated": True,
    }
    assert worker_args("/etc/rpcd.toml", given) == [
        "--config", "/etc/rpcd.toml",
        "--methods", "a.b", "--methods", "c.d",
        "--max-connections", "10",
        "--no-monkey-patch",
        "--allow-public-unauthenticated",
    ]  # fmt: skip


def test_processes_auto_is_the_cores():
    assert supervisor.resolve_processes("auto") == len(os.sched_getaffinity(0))
    assert supervisor.resolve_processes(3) == 3
    with pytest.raises(config.ConfigError, match="or auto"):
        config.build(overrides={"processes": "many"})


def test_worker_is_handed_the_sockets_the_systemd_way():
    sup, reactor = make(1)
    protocol, args, env, child_fds = reactor.spawned[0]
    assert child_fds[3] == 7 and child_fds[4] == "r"
    assert env["LISTEN_FDS"] == "1" and env["LISTEN_FDNAMES"] == "rpcd0"
    assert env["RPCD_WORKER"] == "0" and env["RPCD_HEARTBEAT_FD"] == "4"
    assert env["RPCD_LOG_SHARED"] == "1"
    assert "LISTEN_PID" not in env  # set by the shell to the worker's own pid
    assert args[:3] == ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"']
    assert ["--listen", "systemd:domain=INET:index=0"] == args[-2:]
    assert "--processes" in args and args[args.index("--processes") + 1] == "1"


def test_crash_restarts_with_doubling_backoff():
    sup, reactor = make(1, restart_backoff_max="1")
    ready(sup.workers[0])
    delays = []
    for _ in range(6):
        worker = sup.workers[0]
        worker.processEnded(Ended(1))
        (pending,) = sup.restarts.values()
        delays.append(round(pending.getTime() - reactor.seconds(), 3))
        reactor.advance(pending.getTime() - reactor.seconds())
        assert sup.workers[0] is not worker
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    # A worker that ran long enough resets its slot's backoff.
    reactor.advance(supervisor.STABLE_AFTER)
    sup.workers[0].processEnded(Ended(1))
    (pending,) = sup.restarts.values()
    assert round(pending.getTime() - reactor.seconds(), 3) == 0.1


def test_first_generation_failing_stops_the_supervisor():
    sup, reactor = make(1)
    sup.workers[0].processEnded(Ended(1))
    assert reactor.stopped
    assert sup.restarts == {}


def test_silent_hub_is_killed():
    sup, reactor = make(2, heartbeat_timeout="2")
    for worker in sup.workers.values():
        ready(worker)
    sup._watch()
    quiet, beating = sup.workers[0], sup.workers[1]
    for _ in range(5):
        reactor.advance(0.5)
        beating.childDataReceived(4, b".")
        sup._watch()
    assert quiet.transport.signals == [signal.SIGKILL]
    assert beating.transport.signals == []


def test_not_listening_in_time_is_killed():
    sup, reactor = make(1, worker_start_timeout="3")
    reactor.advance(3.5)
    sup._watch()
    assert sup.workers[0].transport.signals == [signal.SIGKILL]


def test_sighup_starts_the_new_worker_before_stopping_the_old():
    sup, reactor = make(2)
    old = dict(sup.workers)
    for worker in old.values():
        ready(worker)
    sup.reload()
    new0 = sup.workers[0]
    assert new0 is not old[0] and old[0].transport.signals == []  # old one waits
    assert 1 not in {w.slot for w in sup.workers.values() if w not in old.values()}
    ready(new0)
    assert old[0].transport.signals == [signal.SIGTERM]
    new1 = sup.workers[1]
    assert new1 is not old[1] and old[1].transport.signals == []
    ready(new1)
    assert old[1].transport.signals == [signal.SIGTERM]
    old[0].processEnded(Ended(0))  # an old worker's exit is no crash
    assert sup.restarts == {}


def test_sighup_stops_when_a_new_worker_fails():
    sup, reactor = make(1)
    old = sup.workers[0]
    ready(old)
    sup.reload()
    sup.workers[0].processEnded(Ended(1))
    assert sup.workers[0] is old and old.transport.signals == []
    assert not sup.reloading


def test_stop_terms_everyone_then_kills_after_the_grace():
    sup, reactor = make(2, shutdown_grace="1")
    for worker in sup.workers.values():
        ready(worker)
    workers = list(sup.workers.values())
    d = sup.stopService()
    assert [w.transport.signals for w in workers] == [[signal.SIGTERM]] * 2
    workers[0].processEnded(Ended(0))
    reactor.advance(1 + supervisor.EXIT_MARGIN)
    assert workers[1].transport.signals == [signal.SIGTERM, signal.SIGKILL]
    assert not d.called
    workers[1].processEnded(Ended(None, 9))
    assert d.called
    assert sup.restarts == {}


def test_workers_get_a_private_metrics_socket_each_not_the_endpoint(tmp_path):
    assert "--metrics" not in worker_args(None, {"metrics": "tcp:9354", "workers": "2"})
    reactor = FakeReactor()
    s = config.build(overrides={"processes": "2", "metrics": "tcp:9354:interface=127.0.0.1"})
    sup = Supervisor(s, [], reactor=reactor, executable=["twistd-rpcd"])
    sup.listeners = [supervisor.Listener("tcp:1:interface=127.0.0.1", 7, 2, None, False)]
    sup.heartbeat_fd = 4
    sup.metrics.directory = str(tmp_path)  # bind() makes it (mkdtemp: mode 0700)
    first = sup.spawn(0)
    again = sup.spawn(0)  # as during a SIGHUP: the old worker of the slot still runs
    options = []
    for _, args, _, _ in reactor.spawned:
        assert args.count("--metrics") == 1
        options.append(args[args.index("--metrics") + 1])
    assert options == [
        f"unix:{tmp_path}/w0-1.sock:mode=600",
        f"unix:{tmp_path}/w0-2.sock:mode=600",
    ]
    assert first.metrics_path == f"{tmp_path}/w0-1.sock" != again.metrics_path
    # An exited worker's last figures stay in the sum (rpcd.metrics_sum.Totals.gone).
    sup.metrics.totals.answered(first, {})
    first.processEnded(Ended(0))
    assert first not in sup.metrics.totals.last
