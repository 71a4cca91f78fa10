"""rpcd.config: malformed listen endpoints are one line naming the endpoint and the problem,
found while the settings are validated (issue 10, point 26), not a traceback at listen time."""

from __future__ import annotations

import pytest

from rpcd import config
from rpcd.config import ConfigError


def _refusal(endpoint: str) -> str:
    with pytest.raises(ConfigError) as raised:
        config.build(overrides={"listen": ["tcp:5354:interface=127.0.0.1", endpoint]})
    message = str(raised.value)
    assert "\n" not in message and endpoint in message
    return message


@pytest.mark.parametrize(
    "endpoint, problem",
    [
        ("tcp:abc:interface=127.0.0.1", "the port must be a number from 0 to 65535, not 'abc'"),
        ("tcp:99999:interface=127.0.0.1", "the port must be a number from 0 to 65535, not '99999'"),
        ("tcp:interface=127.0.0.1", "no port"),
        ("tcp6:-1:interface=\\:\\:1", "not '-1'"),
        ("ssl:port=x:privateKey=k.pem:interface=127.0.0.1", "not 'x'"),
        ("haproxy:tcp:abc:interface=127.0.0.1", "not 'abc'"),
        ("unix:", "no path"),
    ],
)
def test_a_malformed_endpoint_is_one_line(endpoint, problem):
    assert problem in _refusal(endpoint)


def test_a_unix_socket_in_a_missing_directory():
    message = _refusal("unix:/nodir/x.sock")
    assert "directory /nodir does not exist" in message


def test_an_ssl_listener_without_a_certificate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no server.pem here, Twisted's default privateKey
    message = _refusal("ssl:5355:interface=127.0.0.1")
    assert "needs a certificate" in message and "privateKey=" in message
    message = _refusal(f"ssl:5355:privateKey={tmp_path}/missing.pem:interface=127.0.0.1")
    assert f"cannot read privateKey {tmp_path}/missing.pem" in message


def test_good_endpoints_pass(tmp_path):
    pem = tmp_path / "server.pem"
    pem.write_text("-----BEGIN-----\n")
    listen = [
        "tcp:0:interface=127.0.0.1",
        "tcp:port=65535:interface=127.0.0.1",
        f"ssl:5355:privateKey={pem}:interface=127.0.0.1",
        f"unix:{tmp_path}/rpcd.sock",
        f"unix:address={tmp_path}/rpcd.sock:mode=600",
        "systemd:domain=UNIX:index=0",
        "haproxy:tcp:5354:interface=127.0.0.1",
    ]
    assert config.build(overrides={"listen": listen}).listen == tuple(listen)
