"""Access-control settings: which listeners count as public, and refusing them without a key."""

from __future__ import annotations

import pytest

from rpcd import config
from rpcd.config import ConfigError, Settings, public_address


def test_default_listener_is_loopback_only():
    assert Settings().listen == ("tcp:5354:interface=127.0.0.1",)
    assert public_address(Settings().listen[0]) is None
    assert config.build().auth_key_file == "" and not config.build().allow_public_unauthenticated


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp:5354:interface=127.0.0.1",
        "tcp:5354:interface=127.1.2.3",
        "tcp:5354:127.0.0.1",
        "tcp:port=5354:interface=\\:\\:1",
        "tcp:5354:interface=localhost",
        "tcp:5354:interface=\\:\\:ffff\\:127.0.0.1",
        "tcp6:5354:interface=\\:\\:1",
        "ssl:5354:privateKey=k.pem:certKey=c.pem:interface=127.0.0.1",
        "unix:/run/rpcd.sock",
        "unix:address=/run/rpcd.sock:mode=600",
        "systemd:domain=UNIX:index=0",
        "haproxy:tcp:5354:interface=127.0.0.1",
    ],
)
def test_local_endpoints(endpoint):
    assert public_address(endpoint) is None


@pytest.mark.parametrize(
    "endpoint, why",
    [
        ("tcp:5354", "all interfaces"),
        ("tcp:5354:interface=0.0.0.0", "all interfaces"),
        ("tcp:5354:interface=\\:\\:", "all interfaces"),
        ("tcp:5354:interface=10.1.2.3", "non-loopback address 10.1.2.3"),
        ("tcp:5354:192.168.0.1", "non-loopback address 192.168.0.1"),
        ("tcp:5354:interface=example.com", "non-loopback address example.com"),
        ("tcp6:5354", "all interfaces"),
        ("ssl:5354:privateKey=k.pem", "all interfaces"),
        ("ssl:5354:privateKey=k.pem:interface=10.0.0.1", "non-loopback address 10.0.0.1"),
        ("haproxy:tcp:5354", "all interfaces"),
        ("onion:5354", "cannot check"),
    ],
)
def test_public_endpoints(endpoint, why):
    assert why in public_address(endpoint)


def test_public_listener_refused_without_auth():
    with pytest.raises(ConfigError) as exc:
        config.build(overrides={"listen": ["tcp:5354:interface=127.0.0.1", "tcp:5355"]})
    message = str(exc.value)
    assert "\n" not in message
    assert "tcp:5355 (all interfaces)" in message and "--auth-key-file" in message


def test_public_listener_allowed_with_a_key_or_the_override(tmp_path):
    public = {"listen": ["tcp:5355"]}
    assert config.build(overrides={**public, "auth_key_file": "k"}).listen == ("tcp:5355",)
    allowed = config.build(overrides={**public, "allow_public_unauthenticated": True})
    assert allowed.allow_public_unauthenticated
    toml = tmp_path / "rpcd.toml"
    toml.write_text('listen = ["tcp:5355"]\nallow_public_unauthenticated = true\n')
    assert config.build(str(toml)).listen == ("tcp:5355",)


def test_shipped_config_file_matches_defaults():
    from pathlib import Path

    shipped = config.build(str(Path(__file__).resolve().parents[1] / "conf" / "rpcd.toml"))
    assert shipped == Settings()
