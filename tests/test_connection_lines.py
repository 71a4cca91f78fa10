"""The "connection opened/closed" lines: info for clients, debug for a balancer's checks."""

from __future__ import annotations

import json
import struct

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from rpcd.protocol import ConnectionLimits, RPCFactory
from rpcd.proxy import V2_SIGNATURE, ProxyFactory
from tests.conftest import RecordingDispatcher

BALANCER = IPv4Address("TCP", "127.0.0.1", 40000)
LOCAL = V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)  # v2 LOCAL, no addresses
CHECK = {"jsonrpc": "2.0", "method": "rpc.health", "id": 1}
PING = {"jsonrpc": "2.0", "method": "ping", "id": 2}


def frame(obj) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack("!I", len(body)) + body


@pytest.fixture
def lines():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: [
        (e["log_level"].name, formatEvent(e)) for e in events if "connection from" in formatEvent(e)
    ]
    globalLogPublisher.removeObserver(events.append)


def connect(proxy: bool = False):
    clock = Clock()
    factory = RPCFactory(RecordingDispatcher(), ConnectionLimits(), clock)
    if proxy:
        factory = ProxyFactory(factory, timeout=5.0, clock=clock)
    protocol = factory.buildProtocol(BALANCER)
    transport = StringTransport(peerAddress=BALANCER)
    protocol.makeConnection(transport)
    return protocol, clock


def test_a_connection_of_health_checks_only_logs_one_debug_line(lines):
    protocol, clock = connect()
    protocol.dataReceived(frame(CHECK))
    clock.advance(0.25)
    protocol.dataReceived(frame({**CHECK, "method": "rpc.health.watch"}))
    protocol.connectionLost(None)
    assert lines() == [
        (
            "debug",
            "connection from 127.0.0.1:40000 opened and closed after 0.250 s: health checks only",
        )
    ]


def test_a_client_call_writes_the_opened_line_at_info(lines):
    protocol, clock = connect()
    protocol.dataReceived(frame(CHECK))  # checks first, then a real call: a client after all
    assert lines() == []
    protocol.dataReceived(frame(PING))
    protocol.connectionLost(None)
    assert lines() == [
        ("info", "connection from 127.0.0.1:40000 opened"),
        ("info", "connection from 127.0.0.1:40000 closed"),
    ]


def test_a_late_first_call_says_when_the_connection_opened(lines):
    protocol, clock = connect()
    clock.advance(2.5)
    protocol.dataReceived(frame([CHECK, PING]))  # a batch with one real call in it
    assert lines() == [("info", "connection from 127.0.0.1:40000 opened 2.5 s ago")]


def test_a_connection_without_calls_is_still_lined_at_info(lines):
    protocol, clock = connect()
    clock.advance(1)
    protocol.connectionLost(None)
    assert lines() == [
        ("info", "connection from 127.0.0.1:40000 opened and closed after 1.000 s: no calls")
    ]


def test_a_proxy_local_connection_is_a_check_even_without_calls(lines):
    protocol, clock = connect(proxy=True)
    protocol.dataReceived(LOCAL)
    protocol.connectionLost(None)
    assert [level for level, _ in lines()] == ["debug"]


def test_a_proxied_client_keeps_its_info_lines(lines):
    protocol, clock = connect(proxy=True)
    protocol.dataReceived(b"PROXY TCP4 192.0.2.7 127.0.0.1 6000 5354\r\n" + frame(PING))
    protocol.connectionLost(None)
    assert lines() == [
        ("info", "connection from 192.0.2.7:6000 opened"),
        ("info", "connection from 192.0.2.7:6000 closed"),
    ]
