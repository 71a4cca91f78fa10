"""Start the real daemon (`twistd -n rpcd`) as a subprocess on a free port.

`start_daemon(...)` gives a test its own daemon (its settings, a fresh state, stopped after the
test); `shared_daemon` is one daemon with the default settings for the whole session, for the
tests that only need *a* daemon and leave it as they found it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for
from tests.rawclient import RawClient

ROOT = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).with_name("twistd"))
# The shared key the auth tests start rpcd with (bytes a text editor would mangle included).
KEY = b"integration-test-key-\x00\xff-0123456789"
METHODS = "tests.integration.methods"
# The line rpcd logs once its listeners are bound (rpcd/service.py, startService).
SERVING = "rpcd serving"

__all__ = [
    "KEY",
    "METHODS",
    "ROOT",
    "SERVING",
    "TWISTD",
    "Daemon",
    "free_port",
    "launch",
    "wait_for",
]


class Daemon:
    def __init__(
        self, workdir: Path, args: list[str], port: int, twistd_args: tuple = (), preexec_fn=None
    ):
        self.workdir = workdir
        self.port = port
        self.output = workdir / f"twistd-{port}.out"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", *twistd_args, "rpcd", *args],
            cwd=workdir,
            env=env,
            stdout=self.output.open("wb"),
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Return once this daemon has bound its listeners and accepts a connection.

        A connection alone proves nothing: another process may hold the port free_port gave
        (the machine is shared), and a probe to a port nobody listens on yet can connect to
        itself (TCP simultaneous open, when the kernel picks that very port as the probe's
        own). Either way the daemon was reported ready before it had started. So first wait
        for the line rpcd logs after binding, from this process's own output.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rpcd exited with {self.proc.returncode}:\n{self.log()}")
            if SERVING in self.log():
                try:
                    probe = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
                except OSError:
                    pass
                else:
                    probe.close()
                    return
            time.sleep(0.05)
        raise RuntimeError(f"rpcd did not listen within {timeout} s:\n{self.log()}")

    def client(self, **kwargs) -> RawClient:
        return RawClient(self.port, **kwargs)

    def accepted_client(self, timeout: float = 5.0) -> RawClient:
        """A connection the server accepted (it answered a ping). A connection just closed
        (the readiness probe, one a test closed) counts until the server sees it go, so
        under a tight --max-connections this retries while refused."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.client()
            rid = c.request("ping")
            reply = c.recv()
            if reply.get("id") == rid or time.monotonic() > deadline:
                assert reply.get("result") == "pong", reply
                return c
            c.close()
            time.sleep(0.05)

    def log(self, since: int = 0) -> str:
        """The daemon's output (twistd's terminal log), from character `since` on: a test on
        the shared daemon reads only what it caused, `since=len(daemon.log())` taken first."""
        return self.output.read_text(errors="replace")[since:]

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def launch(
    workdir: Path,
    *args: str,
    methods: str | None = METHODS,
    port: int | None = None,
    listen: bool = True,
    twistd_args: tuple = (),
    preexec_fn=None,
) -> Daemon:
    """Start `twistd -n rpcd ARGS` in `workdir` on `port` (a free one by default) and wait
    until it serves; the caller terminates it."""
    port = port or free_port()
    argv = list(args)
    if listen:
        argv += ["--listen", f"tcp:{port}:interface=127.0.0.1"]
    if methods:
        argv += ["--methods", methods]
    daemon = Daemon(workdir, argv, port, twistd_args, preexec_fn)
    try:
        daemon.wait_ready()
    except BaseException:
        daemon.terminate()
        raise
    return daemon


@pytest.fixture(scope="session")
def shared_daemon(tmp_path_factory):
    """One daemon with the default settings for every test that needs no settings of its own
    and no fresh state: such a test must not count on the stats, the log or the connection
    count starting from zero, and must leave no call running."""
    daemon = launch(tmp_path_factory.mktemp("shared-rpcd"))
    yield daemon
    daemon.terminate()


@pytest.fixture
def start_daemon(tmp_path):
    """start_daemon(*extra_args, methods=..., port=..., preexec_fn=...) -> a running Daemon,
    stopped after the test. `preexec_fn` runs in the child before twistd (e.g. to set a
    resource limit)."""
    started: list[Daemon] = []

    def start(
        *args: str,
        methods: str | None = METHODS,
        listen: bool = True,
        port: int | None = None,
        twistd_args: tuple = (),
        preexec_fn=None,
    ) -> Daemon:
        """`port`: where the daemon will listen when `listen` is off (a --config file says)."""
        if started and "--log-file" not in args and "--config" not in args:
            # A daemon locks its log file: a second one in this directory gets its own.
            args = (*args, "--log-file", f"rpcd-{len(started)}.log")
        daemon = launch(
            tmp_path,
            *args,
            methods=methods,
            port=port,
            listen=listen,
            twistd_args=twistd_args,
            preexec_fn=preexec_fn,
        )
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.terminate()


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "rpcd.key"
    path.write_bytes(KEY + b"\n")
    path.chmod(0o600)
    return str(path)
