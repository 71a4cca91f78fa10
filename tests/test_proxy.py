"""rpcd.proxy: the PROXY v1/v2 header parser, byte by byte, and the wrapper that admits late."""

from __future__ import annotations

import json
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rpcd.protocol import ConnectionLimits, RPCFactory
from rpcd.proxy import V2_SIGNATURE, HeaderParser, ProxyFactory, ProxyHeaderError
from tests.conftest import RecordingDispatcher

BALANCER = IPv4Address("TCP", "127.0.0.1", 40000)


def v1(source: str, dest: str, sport: int, dport: int, family: str = "TCP4") -> bytes:
    return f"PROXY {family} {source} {dest} {sport} {dport}\r\n".encode()


def v2(
    source: str = "127.0.0.9",
    dest: str = "127.0.0.1",
    sport: int = 51000,
    dport: int = 5354,
    *,
    command: int = 1,
    family: int = 1,
    tlvs: bytes = b"",
) -> bytes:
    if family == 1:
        block = socket.inet_pton(socket.AF_INET, source) + socket.inet_pton(socket.AF_INET, dest)
        block += struct.pack("!HH", sport, dport)
    elif family == 2:
        block = socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(socket.AF_INET6, dest)
        block += struct.pack("!HH", sport, dport)
    elif family == 3:
        block = source.encode().ljust(108, b"\0") + dest.encode().ljust(108, b"\0")
    else:
        block = b""
    block += tlvs
    return (
        V2_SIGNATURE
        + bytes([0x20 | command, family << 4 | 1])
        + struct.pack("!H", len(block))
        + block
    )


def frame(obj) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack("!I", len(body)) + body


PING = frame({"jsonrpc": "2.0", "method": "ping", "id": 1})

HEADERS = [
    (v1("192.0.2.7", "127.0.0.1", 51000, 5354), ("192.0.2.7", 51000)),
    (v1("2001:db8::7", "::1", 1, 65535, "TCP6"), ("2001:db8::7", 1)),
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
    (v2("192.0.2.8", "127.0.0.1", 51001, 5354), ("192.0.2.8", 51001)),
    (v2("2001:db8::8", "::1", 2, 3, family=2), ("2001:db8::8", 2)),
    (v2("/run/client.sock", "/run/rpcd.sock", family=3), "/run/client.sock"),
    (v2(command=0), None),  # LOCAL: HAProxy's own health check
    (v2(family=0), None),  # UNSPEC
    # TLVs after the addresses are skipped (ALPN, authority, a CRC).
    (v2(tlvs=b"\x01\x00\x02h2" + b"\x02\x00\x04host" + b"\x03\x00\x04abcd"), ("127.0.0.9", 51000)),
]


def _peer(info):
    if info.source is None:
        return None
    if isinstance(info.source, UNIXAddress):
        return (
            info.source.name.decode() if isinstance(info.source.name, bytes) else info.source.name
        )
    return (info.source.host, info.source.port)


@pytest.mark.parametrize("header, peer", HEADERS)
def test_every_header_byte_by_byte(header, peer):
    parser = HeaderParser()
    data = header + PING
    for i, byte in enumerate(data):
        info = parser.feed(bytes([byte]))
        if i < len(header) - 1:
            assert info is None, i
        elif i == len(header) - 1:
            assert info is not None
            assert _peer(info) == peer
            assert parser.rest == b""
            break


@given(st.sampled_from(HEADERS), st.lists(st.integers(1, 200), max_size=20))
def test_any_split_gives_the_same_answer(case, sizes):
    header, peer = case
    data = header + PING
    parser = HeaderParser()
    chunks, at = [], 0
    for size in sizes:
        chunks.append(data[at : at + size])
        at += size
    chunks.append(data[at:])
    found = None
    rest = b""
    for chunk in chunks:
        if found is None:
            found = parser.feed(chunk)
            if found is not None:
                rest = parser.rest
        else:
            rest += chunk
    assert found is not None
    assert _peer(found) == peer
    assert rest == PING


@pytest.mark.parametrize(
    "data, message",
    [
        (PING, "no PROXY protocol header"),
        (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4\r\n", "is not PROXY TCP4|TCP6|UNKNOWN"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "not a port number"),
        (b"PROXY TCP4 ::1 ::1 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not an IPv6 address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "not a port number"),
        (b"PROXY " + b"x" * 200, "no CRLF within 107 bytes"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "no CRLF"),
        (V2_SIGNATURE[:5] + b"X", "no PROXY protocol header"),
        (V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\0" * 12, "version 3, not 2"),
        (V2_SIGNATURE + b"\x2f\x11\x00\x0c" + b"\0" * 12, "unknown command 15"),
        (V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\0" * 4, "family needs 12"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "exceeds proxy_max_header_bytes 4096"),
    ],
)
def test_bad_headers_are_refused_clearly(data, message):
    parser = HeaderParser()
    with pytest.raises(ProxyHeaderError, match=message.replace("|", r"\|")):
        for byte in data:
            parser.feed(bytes([byte]))


def test_refused_as_early_as_the_bytes_show():
    # The first byte that cannot begin a header is enough: nothing more is waited for.
    with pytest.raises(ProxyHeaderError):
        HeaderParser().feed(b"\x00")
    with pytest.raises(ProxyHeaderError):
        HeaderParser().feed(b"PRX")


# -- the Twisted wrapper ---------------------------------------------------------------------


class Dispatcher(RecordingDispatcher):
    def answer(self) -> None:
        for call in self.running():
            self.finish(call, "pong")


def proxied(factory: ProxyFactory, peer=BALANCER):
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 5354))
    protocol.makeConnection(transport)
    return protocol, transport


def make_factory(clock=None, **limits) -> tuple[ProxyFactory, RPCFactory]:
    inner = RPCFactory(Dispatcher(), ConnectionLimits(**limits), clock or Clock())
    return ProxyFactory(inner, timeout=5.0, clock=clock or inner.clock), inner


def replies(transport, factory=None) -> list:
    if factory is not None:
        factory.dispatcher.answer()
    data, out = transport.value(), []
    while data:
        (n,) = struct.unpack("!I", data[:4])
        out.append(json.loads(data[4 : 4 + n]))
        data = data[4 + n :]
    return out


def test_admitted_only_after_the_header_with_the_real_address():
    factory, inner = make_factory()
    protocol, transport = proxied(factory)
    assert inner.connections == set()  # nothing admitted on the balancer's address
    header = v2("192.0.2.44", "127.0.0.1", 6000, 5354)
    protocol.dataReceived(header[:5])  # a split first read (twisted#8287 drops it)
    protocol.dataReceived(header[5:] + PING)
    (conn,) = inner.connections
    assert conn.peer == "192.0.2.44:6000"
    assert conn.transport.getPeer() == IPv4Address("TCP", "192.0.2.44", 6000)
    assert replies(transport, inner) == [{"jsonrpc": "2.0", "result": "pong", "id": 1}]


def test_per_peer_limit_counts_real_clients():
    # Four clients behind one balancer, limit 3 per peer: all four are admitted.
    factory, inner = make_factory(max_connections_per_peer=3)
    for n in range(4):
        protocol, transport = proxied(factory)
        protocol.dataReceived(v1(f"192.0.2.{n + 1}", "127.0.0.1", 7000, 5354) + PING)
        assert replies(transport, inner)[0]["result"] == "pong"
    assert len(inner.connections) == 4
    # The same client a fourth time is refused, by its own address.
    for _ in range(3):
        proxied(factory)[0].dataReceived(v1("192.0.2.99", "127.0.0.1", 1, 2))
    protocol, transport = proxied(factory)
    protocol.dataReceived(v1("192.0.2.99", "127.0.0.1", 1, 2))
    assert (
        "192.0.2.99 has reached the per-peer limit of 3"
        in replies(transport)[0]["error"]["message"]
    )


def test_unknown_and_local_keep_the_connection_address():
    for header in (b"PROXY UNKNOWN\r\n", v2(command=0)):
        factory, inner = make_factory()
        protocol, transport = proxied(factory)
        protocol.dataReceived(header + PING)
        (conn,) = inner.connections
        assert conn.peer == "127.0.0.1:40000"
        assert replies(transport, inner)[0]["result"] == "pong"


def test_ipv6_client():
    factory, inner = make_factory()
    protocol, _ = proxied(factory)
    protocol.dataReceived(v2("2001:db8::1", "::1", 9, 5354, family=2))
    (conn,) = inner.connections
    assert conn.transport.getPeer() == IPv6Address("TCP", "2001:db8::1", 9)
    assert conn.peer == "2001:db8::1:9"


def test_bad_header_gets_one_error_frame_and_is_counted():
    factory, inner = make_factory()
    protocol, transport = proxied(factory)
    protocol.dataReceived(PING)
    (reply,) = replies(transport)
    assert reply["error"]["code"] == -32600
    assert reply["error"]["message"].startswith("bad PROXY protocol header: no PROXY protocol")
    assert transport.disconnecting
    assert inner.connections == set()
    assert inner.refused["proxy_header"] == 1
    protocol.connectionLost(None)
    assert factory.protocols == {}


def test_header_not_sent_in_time_is_refused():
    clock = Clock()
    factory, inner = make_factory(clock)
    protocol, transport = proxied(factory)
    protocol.dataReceived(b"PROXY TCP4 ")
    clock.advance(5.0)
    assert "no PROXY header within 5 s" in replies(transport)[0]["error"]["message"]
    assert transport.disconnecting
    protocol.connectionLost(None)
    assert clock.getDelayedCalls() == []


def test_closed_before_the_header_cancels_the_timer():
    clock = Clock()
    factory, inner = make_factory(clock)
    protocol, _ = proxied(factory)
    protocol.connectionLost(None)
    assert clock.getDelayedCalls() == []
    assert inner.connections == set()


def test_close_after_admission_releases_the_peer():
    factory, inner = make_factory(max_connections_per_peer=1)
    protocol, _ = proxied(factory)
    protocol.dataReceived(v1("192.0.2.5", "127.0.0.1", 1, 2))
    assert len(inner.connections) == 1
    protocol.connectionLost(None)
    assert inner.connections == set()
    protocol, transport = proxied(factory)
    protocol.dataReceived(v1("192.0.2.5", "127.0.0.1", 1, 2) + PING)
    assert replies(transport, inner)[0]["result"] == "pong"
