"""`systemd:` listeners: a socket really handed over by systemd-socket-activate, under patching."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import warnings

import pytest

from tests.integration.conftest import ROOT, TWISTD, free_port
from tests.rawclient import RawClient

ACTIVATE = shutil.which("systemd-socket-activate")
REASON = "systemd-socket-activate not installed (Debian package systemd)"
pytestmark = pytest.mark.skipif(ACTIVATE is None, reason=REASON)
if ACTIVATE is None:  # pytest -q lists no skip reason: a warning is always shown
    warnings.warn(f"{__name__} skipped: {REASON}", stacklevel=1)


def _activate(tmp_path, listen: str, *args: str, fdname: str | None = None):
    """twistd rpcd started by systemd-socket-activate, which binds 127.0.0.1:port itself."""
    port = free_port()
    out = (tmp_path / f"activate-{port}.out").open("wb")
    cmd = [ACTIVATE, "-l", f"127.0.0.1:{port}"]
    if fdname:
        cmd.append(f"--fdname={fdname}")
    cmd += [TWISTD, "-n", "--pidfile=", "rpcd", "--listen", listen, *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, port, tmp_path / f"activate-{port}.out"


def _ping_until(port: int, proc, output, timeout: float = 20.0) -> dict:
    # systemd-socket-activate starts rpcd on the first connection; the socket exists before.
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = RawClient(port)
            client.request("ping")
            reply = client.recv()
            client.close()
            return reply
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(output.read_text(errors="replace")) from None
            time.sleep(0.1)


def _stop(proc) -> int:
    proc.terminate()
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@pytest.mark.parametrize(
    "listen, fdname",
    [
        # Named the systemd way: LISTEN_FDNAMES set, the socket picked by name (and domain).
        ("systemd:domain=INET:name=rpc", "rpc"),
        # No --fdname: LISTEN_FDS without LISTEN_FDNAMES, which Twisted alone ignores.
        ("systemd:domain=INET:index=0", None),
        # The only passed socket, no index or name given.
        ("systemd:", None),
    ],
)
def test_passed_socket_serves_under_monkey_patching(tmp_path, listen, fdname):
    proc, port, output = _activate(tmp_path, listen, fdname=fdname)
    try:
        assert _ping_until(port, proc, output)["result"] == "pong"
    finally:
        assert _stop(proc) == 0
    assert "Traceback" not in output.read_text()


def test_loopback_passed_socket_is_not_public(tmp_path):
    proc, port, output = _activate(tmp_path, "systemd:domain=INET:index=0")
    try:
        assert _ping_until(port, proc, output, timeout=10)["result"] == "pong"
    finally:
        _stop(proc)
    assert "reachable from other hosts" not in output.read_text()


def test_no_socket_passed_is_one_line_error(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("LISTEN_FDS", None)
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "rpcd", "--listen", "systemd:domain=UNIX:index=0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert "no socket was passed to this process" in result.stderr


def test_wrong_name_lists_what_was_passed(tmp_path):
    proc, port, output = _activate(tmp_path, "systemd:name=other", fdname="rpc")
    try:
        # The activator only starts rpcd on the first connection, which then fails.
        with pytest.raises(AssertionError):
            _ping_until(port, proc, output, timeout=10)
    finally:
        _stop(proc)
    text = output.read_text()
    assert "no passed socket named 'other'; passed: index 0 name 'rpc'" in text
    assert "Traceback" not in text


def test_supervisor_shares_a_socket_systemd_passed_it(tmp_path):
    # conf/rpcd.service: the socket unit's port, --processes, workers adopting it in turn.
    proc, port, output = _activate(
        tmp_path,
        "systemd:domain=INET:name=rpc",
        "--processes",
        "2",
        fdname="rpc",
    )
    try:
        _ping_until(port, proc, output)
        deadline = time.monotonic() + 30
        seen = set()
        while len(seen) < 2 and time.monotonic() < deadline:
            client = RawClient(port)
            seen.add(client.call("rpc.stats")["result"]["process"]["worker"])
            client.close()
        assert seen == {0, 1}
    finally:
        assert _stop(proc) == 0
    assert "every worker stopped" in output.read_text()
