"""RPCService start-up: the key reaches the connections, a public unauthenticated bind is logged."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher

from rpcd import config
from rpcd.service import RPCService


def _start(settings, events):
    reactor = MemoryReactorClock()
    service = RPCService(settings, reactor=reactor)
    globalLogPublisher.addObserver(events.append)
    try:
        service.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return service, reactor


def test_public_unauthenticated_listener_is_logged_as_a_warning():
    events: list = []
    settings = config.build(
        overrides={"listen": ["tcp:5354"], "allow_public_unauthenticated": True}
    )
    service, reactor = _start(settings, events)
    assert [port[0] for port in reactor.tcpServers] == [5354]
    warnings = [e for e in events if "without authentication" in e.get("log_format", "")]
    assert len(warnings) == 1 and warnings[0]["endpoint"] == "tcp:5354"
    assert service.factory.limits.auth_key is None


def test_key_file_is_loaded_into_the_connection_policy(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(b"k3y\n")
    key.chmod(0o600)
    events: list = []
    settings = config.build(overrides={"listen": ["tcp:5354"], "auth_key_file": str(key)})
    service, _ = _start(settings, events)
    assert service.factory.limits.auth_key is not None
    assert "k3y" not in repr(service.factory.limits)
    assert not [e for e in events if "without authentication" in e.get("log_format", "")]


def test_a_unix_listener_is_owner_only_unless_its_endpoint_says_otherwise(tmp_path):
    # Twisted creates UNIX sockets 0666: any local user could connect, without a key.
    listen = [
        f"unix:{tmp_path}/a.sock",
        f"unix:address={tmp_path}/b.sock:mode=660",
        f"haproxy:unix:{tmp_path}/c.sock",
        "tcp:5354:interface=127.0.0.1",
    ]
    service, reactor = _start(config.build(overrides={"listen": listen}), [])
    modes = {address.rsplit("/", 1)[1]: mode for address, _, _, mode, _ in reactor.unixServers}
    assert modes == {"a.sock": 0o600, "b.sock": 0o660, "c.sock": 0o600}
    assert [port[0] for port in reactor.tcpServers] == [5354]
