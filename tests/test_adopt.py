"""rpcd.adopt: the systemd protocol read rpcd's way, and the patched close of adopted sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from rpcd import adopt
from rpcd.adopt import ListenError


@pytest.fixture
def listening():
    """A listening loopback socket, and its descriptor as the systemd protocol would pass it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def _env(count: int, names: str | None = None) -> dict:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": str(count)}
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    return env


def test_inherited_reads_names_in_order():
    assert adopt.inherited(_env(2, "rpc:admin")) == [(3, "rpc"), (4, "admin")]


def test_inherited_without_names_keeps_the_descriptors():
    # Twisted's ListenFDs drops them all; systemd would name each "unknown".
    assert adopt.inherited(_env(2)) == [(3, "unknown"), (4, "unknown")]
    assert adopt.inherited(_env(2, "only-one")) == [(3, "unknown"), (4, "unknown")]


def test_inherited_ignores_another_process_descriptors():
    env = _env(1, "rpc")
    env["LISTEN_PID"] = str(os.getpid() + 1)
    assert adopt.inherited(env) == []
    assert adopt.inherited({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "x"}) == []


def test_pick_by_index_name_or_the_only_one(listening):
    fd = listening.fileno()
    found = [(fd, "rpc")]
    assert adopt.systemd_socket("systemd:domain=INET:index=0", found) == (fd, socket.AF_INET)
    assert adopt.systemd_socket("systemd:name=rpc", found) == (fd, socket.AF_INET)
    assert adopt.systemd_socket("systemd:", found) == (fd, socket.AF_INET)


@pytest.mark.parametrize(
    "description, message",
    [
        ("systemd:domain=INET:index=1", "no passed socket at index 1; passed: index 0 name 'rpc'"),
        ("systemd:name=nope", "no passed socket named 'nope'"),
        ("systemd:index=0:name=rpc", "give index= or name=, not both"),
        ("systemd:domain=UNIX:index=0", "the passed socket is INET, not UNIX"),
        ("systemd:domain=INET:port=5", "systemd endpoints take domain=, index= and name= only"),
    ],
)
def test_bad_choice_is_one_line(listening, description, message):
    with pytest.raises(ListenError) as raised:
        adopt.systemd_socket(description, [(listening.fileno(), "rpc")])
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_nothing_passed_says_so():
    with pytest.raises(ListenError, match="no socket was passed to this process"):
        adopt.systemd_socket("systemd:domain=INET:index=0", [])
    with pytest.raises(ListenError, match="say index= or name="):
        adopt.systemd_socket("systemd:", [(3, "a"), (4, "b")])


def test_a_descriptor_not_listening_is_refused():
    a, b = socket.socketpair()
    with a, b, pytest.raises(ListenError, match="not a listening stream socket"):
        adopt.systemd_socket("systemd:index=0", [(a.fileno(), "x")])


def test_public_address_judged_by_the_socket(listening, monkeypatch):
    monkeypatch.setattr(adopt, "inherited", lambda: [(listening.fileno(), "rpc")])
    assert adopt.systemd_public_address("systemd:domain=INET:index=0") is None
    outside = socket.socket()
    outside.bind(("0.0.0.0", 0))
    outside.listen()
    with outside:
        monkeypatch.setattr(adopt, "inherited", lambda: [(outside.fileno(), "rpc")])
        assert adopt.systemd_public_address("systemd:index=0") == (
            "a systemd-passed socket on 0.0.0.0"
        )
    # Nothing passed: nothing is exposed, and adopting it fails with its own one line.
    monkeypatch.setattr(adopt, "inherited", lambda: [])
    assert adopt.systemd_public_address("systemd:index=0") is None
    with pytest.raises(adopt.ListenError, match="no socket was passed"):
        adopt.systemd_socket("systemd:index=0")


def test_twisted_adopted_endpoint_closes_under_patching():
    # gevent's os.close made Twisted's `_close = os.close` (endpoints imported after the
    # patch, as under twistd) a method: TypeError at listen. A fresh interpreter to see it.
    code = (
        "import os, socket\n"
        "from rpcd.reactor import monkey_patch\n"
        "monkey_patch()\n"
        "from twisted.internet.endpoints import AdoptedStreamServerEndpoint as E\n"
        "r, w = os.pipe()\n"
        "E(None, r, socket.AF_INET)._close(r)\n"
        "print('closed')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "closed", result.stderr
