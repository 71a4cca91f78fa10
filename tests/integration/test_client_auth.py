"""The clients' side of `--auth-key-file` against the real daemon: the blocking client, the
Twisted client and rpcd-call authenticate, fail cleanly with a wrong key, and re-authenticate
after a restart; a client with a key refuses a server that asks for no authentication."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest
from twisted.internet import defer, reactor
from twisted.trial import unittest

from rpcd import auth
from rpcd.client import (
    AuthenticationFailed,
    Client,
    ConnectFailed,
    NotAuthenticated,
)
from rpcd.twisted_client import RPCConnection, connect
from tests.integration.conftest import KEY, ROOT, Daemon, free_port, launch

RPCD_CALL = str(Path(sys.executable).with_name("rpcd-call"))


@pytest.fixture
def wrong_key_file(tmp_path):
    path = tmp_path / "wrong.key"
    path.write_bytes(b"not the key\n")
    path.chmod(0o600)  # a daemon is started with it too
    return str(path)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """One daemon asking for the key (KEY, which every test's key_file holds) for the module:
    no test here needs a fresh one."""
    workdir = tmp_path_factory.mktemp("rpcd-auth")
    key = workdir / "rpcd.key"
    key.write_bytes(KEY + b"\n")
    key.chmod(0o600)
    daemon = launch(workdir, "--auth-key-file", str(key))
    yield daemon
    daemon.terminate()


def endpoint_of(daemon) -> str:
    return f"tcp:127.0.0.1:{daemon.port}"


def test_right_key_calls_and_streams(daemon, key_file):
    with Client(endpoint_of(daemon), timeout=10, auth_key_file=key_file) as c:
        assert c.call("add", 2, 3) == 5
        stream = c.stream("ticker", 3)
        assert list(stream) == [0, 1, 2] and stream.result == 3
        with c.batch() as batch:
            total = batch.call("add", 1, 1)
        assert total.result() == 2
    with Client(endpoint_of(daemon), timeout=10, auth_key=KEY) as c:  # the key as bytes
        assert c.proxy.add(1, 2) == 3


def test_threads_share_one_authenticated_connection(daemon, key_file):
    with Client(endpoint_of(daemon), timeout=10, auth_key_file=key_file) as probe:
        accepted = probe.call("rpc.stats")["connections"]["accepted"]
        c = Client(endpoint_of(daemon), timeout=10, auth_key_file=key_file)
        results: list = []
        threads = [
            threading.Thread(target=lambda i=i: results.append(c.call("add", i, i)))
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(results) == [2 * i for i in range(8)]
        # Eight callers racing to connect: one connection, one handshake.
        assert c.call("rpc.stats")["connections"]["accepted"] == accepted + 1
        c.close()


GREENLETS = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, sys
    import gevent
    from rpcd.client import Client

    endpoint, key_file = f"tcp:127.0.0.1:{sys.argv[1]}", sys.argv[2]
    probe = Client(endpoint, timeout=20, auth_key_file=key_file)
    accepted = probe.call("rpc.stats")["connections"]["accepted"]
    c = Client(endpoint, timeout=20, auth_key_file=key_file)
    adds = [gevent.spawn(c.call, "add", i, i) for i in range(50)]  # all racing to connect
    gevent.joinall(adds, raise_error=True)
    print(json.dumps({
        "adds": [g.value for g in adds],
        "new_connections": probe.call("rpc.stats")["connections"]["accepted"] - accepted,
    }))
""")


def test_greenlets_share_one_authenticated_connection(daemon, key_file):
    out = subprocess.run(
        [sys.executable, "-c", GREENLETS, str(daemon.port), key_file],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == {"adds": [2 * i for i in range(50)], "new_connections": 1}


def test_wrong_key_and_no_key(daemon, wrong_key_file):
    c = Client(endpoint_of(daemon), timeout=10, auth_key_file=wrong_key_file)
    with pytest.raises(NotAuthenticated, match="authentication failed"):
        c.call("add", 1, 2)
    assert c._conn is None  # nothing half-open is kept for the next call
    with pytest.raises(NotAuthenticated):
        c.call("add", 1, 2)  # the next call tries again, and fails the same way
    with Client(endpoint_of(daemon), timeout=10) as anonymous:
        with pytest.raises(NotAuthenticated, match="call rpc.auth first"):
            anonymous.call("add", 1, 2)


def test_key_file_errors_fail_the_constructor(daemon, tmp_path):
    with pytest.raises(auth.AuthKeyError, match="cannot read auth key file"):
        Client(endpoint_of(daemon), auth_key_file=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not both"):
        Client(endpoint_of(daemon), auth_key_file=str(tmp_path / "x"), auth_key=KEY)


def test_server_with_the_wrong_key_is_not_trusted(start_daemon, key_file, wrong_key_file):
    # The server holds another key: our digest is refused (-32003) before its proof matters.
    d = start_daemon("--auth-key-file", wrong_key_file)
    with pytest.raises(NotAuthenticated):
        Client(endpoint_of(d), timeout=10, auth_key_file=key_file).call("ping")


def test_key_against_a_server_without_auth_fails_clearly(shared_daemon, key_file):
    d = shared_daemon
    c = Client(endpoint_of(d), timeout=10, connect_timeout=0.5, auth_key_file=key_file)
    with pytest.raises(AuthenticationFailed, match="did not ask for authentication within 0.5 s"):
        c.call("ping")
    assert isinstance(AuthenticationFailed("x"), ConnectionError)


def test_reconnect_after_restart_authenticates_again(start_daemon, key_file):
    port = free_port()
    d = start_daemon("--auth-key-file", key_file, port=port)
    c = Client(f"tcp:127.0.0.1:{port}", timeout=10, auth_key_file=key_file)
    assert c.call("add", 1, 2) == 3
    d.terminate()
    with pytest.raises(ConnectFailed, match="connection refused"):
        c.call("ping")
    start_daemon("--auth-key-file", key_file, port=port)
    assert c.call("add", 2, 2) == 4  # a new connection, and a new handshake on it
    c.close()


class TwistedClientAuthTests(unittest.TestCase):
    """The Twisted client (trial-style: it needs the running global reactor)."""

    timeout = 30

    @classmethod
    def setUpClass(cls) -> None:
        cls.workdir = Path(tempfile.mkdtemp(prefix="rpcd-twisted-auth-"))
        cls.key_file = str(cls.workdir / "rpcd.key")
        Path(cls.key_file).write_bytes(KEY + b"\n")
        Path(cls.key_file).chmod(0o600)  # rpcd refuses a key others can read
        cls.wrong_key_file = str(cls.workdir / "wrong.key")
        Path(cls.wrong_key_file).write_bytes(b"not the key\n")
        cls.daemons = []
        for extra in (["--auth-key-file", cls.key_file], []):
            port = free_port()
            args = [
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--methods",
                "tests.integration.methods",
                "--log-file",
                f"rpcd-{port}.log",  # each daemon locks its own log file
                *extra,
            ]
            daemon = Daemon(cls.workdir, args, port)
            cls.daemons.append(daemon)
            daemon.wait_ready()
        cls.endpoint, cls.open_endpoint = (f"tcp:127.0.0.1:{d.port}" for d in cls.daemons)

    @classmethod
    def tearDownClass(cls) -> None:
        for daemon in cls.daemons:
            daemon.terminate()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    @defer.inlineCallbacks
    def test_right_key(self):
        conn = yield connect(reactor, self.endpoint, auth_key_file=self.key_file)
        self.addCleanup(conn.close)
        self.assertIsInstance(conn, RPCConnection)
        self.assertEqual((yield conn.callRemote("add", 2, 3)), 5)
        items: list = []
        self.assertEqual((yield conn.streamRemote(items.append, "ticker", 3)), 3)
        self.assertEqual(items, [0, 1, 2])

    @defer.inlineCallbacks
    def test_wrong_key_and_no_key(self):
        with self.assertRaises(NotAuthenticated):
            yield connect(reactor, self.endpoint, auth_key_file=self.wrong_key_file)
        conn = yield connect(reactor, self.endpoint)  # no key: connected, but refused calls
        self.addCleanup(conn.close)
        with self.assertRaises(NotAuthenticated):
            yield conn.callRemote("add", 1, 2)

    @defer.inlineCallbacks
    def test_key_against_a_server_without_auth(self):
        with self.assertRaises(AuthenticationFailed) as caught:
            yield connect(reactor, self.open_endpoint, auth_key=KEY, auth_timeout=0.5)
        self.assertIn("did not ask for authentication within 0.5 s", str(caught.exception))


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("RPCD_ENDPOINT", "RPCD_AUTH_KEY_FILE")
    }
    environ.update(env or {})
    return subprocess.run(
        [RPCD_CALL, *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=20
    )


def test_rpcd_call_with_a_key(daemon, key_file, wrong_key_file, tmp_path):
    ep = endpoint_of(daemon)
    out = run("-c", ep, "--auth-key-file", key_file, "add", "2", "3")
    assert (out.returncode, out.stdout, out.stderr) == (0, "5\n", "")
    out = run("-c", ep, "ticker", "2", env={"RPCD_AUTH_KEY_FILE": key_file})
    assert (out.returncode, out.stdout) == (0, "0\n1\n2\n"), out.stderr
    out = run("-c", ep, "--auth-key-file", wrong_key_file, "add", "2", "3")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "-32003" in out.stderr, out.stderr
    out = run("-c", ep, "add", "2", "3")  # no key at all
    assert out.returncode == 1 and "-32003" in out.stderr
    out = run("-c", ep, "--auth-key-file", str(tmp_path / "missing"), "add", "2", "3")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "cannot read auth key file" in out.stderr


def test_rpcd_call_with_a_key_against_a_server_without_auth(shared_daemon, key_file):
    d = shared_daemon
    out = run("-c", endpoint_of(d), "--auth-key-file", key_file, "-t", "1", "ping")
    assert out.returncode == 1 and out.stdout == "", out
    assert out.stderr.count("\n") == 1 and "did not ask for authentication" in out.stderr
