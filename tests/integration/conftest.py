"""Start the real daemon (`twistd -n rpcd`) as a subprocess on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.rawclient import RawClient

ROOT = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).with_name("twistd"))
# The shared key the auth tests start rpcd with (bytes a text editor would mangle included).
KEY = b"integration-test-key-\x00\xff-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            cwd=workdir, env=env, stdout=self.output.open("wb"), stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rpcd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
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

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def start_daemon(tmp_path):
    """start_daemon(*extra_args, methods=..., port=..., preexec_fn=...) -> a running Daemon,
    stopped after the test. `preexec_fn` runs in the child before twistd (e.g. to set a
    resource limit)."""
    started: list[Daemon] = []

    def start(
        *args: str,
        methods: str | None = "tests.integration.methods",
        listen: bool = True,
        port: int | None = None,
        twistd_args: tuple = (),
        preexec_fn=None,
    ) -> Daemon:
        """`port`: where the daemon will listen when `listen` is off (a --config file says)."""
        port = port or free_port()
        argv = list(args)
        if listen:
            argv += ["--listen", f"tcp:{port}:interface=127.0.0.1"]
        if methods:
            argv += ["--methods", methods]
        daemon = Daemon(tmp_path, argv, port, twistd_args, preexec_fn)
        started.append(daemon)
        daemon.wait_ready()
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
