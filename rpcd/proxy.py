"""PROXY protocol v1 and v2: a sans-IO header parser and the Twisted wrapper behind `haproxy:`.

A balancer such as HAProxy opens its connection to rpcd with one header naming the real
client. `HeaderParser` takes bytes as they come (a first read of any size) and returns the
addresses once the whole header is in. `ProxyFactory` connects the wrapped protocol only
then, with those addresses as its peer and host: admission, per-peer limits and log lines
see the client, never the balancer (Twisted's own wrapper admits before the header is read
and drops a first read shorter than the header's minimum).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import directlyProvides, providedBy

from rpcd import wire
from rpcd.wire import INVALID_REQUEST, RPCError

log = Logger()

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the spec's longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version/command, family/protocol, length
_V2_ADDRESSES = {0x1: 12, 0x2: 36, 0x3: 216}  # INET, INET6, UNIX: bytes of the address block
_LENGTH = struct.Struct("!H")


class ProxyHeaderError(Exception):
    """The peer's PROXY header is malformed or too long (the peer's fault); one line why."""


class ProxyInfo:
    """What a header says: the real client and the address it reached, or None for either
    when the header names none (v1 UNKNOWN, v2 LOCAL or an unspecified family)."""

    __slots__ = ("version", "source", "destination")

    def __init__(self, version: int, source: Any = None, destination: Any = None) -> None:
        self.version = version
        self.source = source
        self.destination = destination

    def __repr__(self) -> str:
        return f"ProxyInfo(v{self.version}, {self.source!r} -> {self.destination!r})"


def _ip(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"not an IPv{version} address: {text[:45]!r}") from None
    if address.version != version:
        raise ProxyHeaderError(f"not an IPv{version} address: {text!r}")
    return str(address)


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535 or text != str(int(text)):
        raise ProxyHeaderError(f"not a port number: {text[:8]!r}")
    return int(text)


def _address(version: int, host: str, port: int) -> IPv4Address | IPv6Address:
    return (IPv4Address if version == 4 else IPv6Address)("TCP", host, port)


def parse_v1(line: bytes) -> ProxyInfo:
    """One whole v1 line, CRLF included."""
    try:
        text = line[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("v1 header is not ASCII") from None
    parts = text.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyInfo(1)  # whatever follows UNKNOWN is to be ignored
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"v1 header is not PROXY TCP4|TCP6|UNKNOWN ...: {text[:60]!r}")
    version = 4 if parts[1] == "TCP4" else 6
    source = _address(version, _ip(parts[2], version), _port(parts[4]))
    destination = _address(version, _ip(parts[3], version), _port(parts[5]))
    return ProxyInfo(1, source, destination)


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_v2(header: bytes) -> ProxyInfo:
    """One whole v2 header: the 16 fixed bytes and the block its length gives (TLVs skipped)."""
    command = header[12] & 0x0F
    family, transport = header[13] >> 4, header[13] & 0x0F
    if header[12] >> 4 != 2:
        raise ProxyHeaderError(f"v2 header of version {header[12] >> 4}, not 2")
    if command == 0x0:
        return ProxyInfo(2)  # LOCAL: the balancer's own connection (its health checks)
    if command != 0x1:
        raise ProxyHeaderError(f"v2 header with unknown command {command}")
    block = header[V2_FIXED:]
    need = _V2_ADDRESSES.get(family)
    if need is None or transport != 0x1:
        return ProxyInfo(2)  # UNSPEC or not a stream: no address to use, as the spec says
    if len(block) < need:
        raise ProxyHeaderError(f"v2 address block of {len(block)} bytes, family needs {need}")
    if family == 0x1:
        src, dst = (
            socket.inet_ntop(socket.AF_INET, block[:4]),
            socket.inet_ntop(socket.AF_INET, block[4:8]),
        )
        sport, dport = struct.unpack_from("!HH", block, 8)
        return ProxyInfo(2, _address(4, src, sport), _address(4, dst, dport))
    if family == 0x2:
        src, dst = (
            socket.inet_ntop(socket.AF_INET6, block[:16]),
            socket.inet_ntop(socket.AF_INET6, block[16:32]),
        )
        sport, dport = struct.unpack_from("!HH", block, 32)
        return ProxyInfo(2, _address(6, src, sport), _address(6, dst, dport))
    return ProxyInfo(
        2, UNIXAddress(_unix_path(block[:108])), UNIXAddress(_unix_path(block[108:216]))
    )


class HeaderParser:
    """Bytes in, a `ProxyInfo` out once the whole header has arrived; `rest` is what followed.

    `feed` returns None while more bytes are needed and raises ProxyHeaderError as soon as
    the bytes cannot begin a valid header, or the header would pass `max_header` bytes.
    """

    __slots__ = ("max_header", "rest", "_buffer")

    def __init__(self, max_header: int = 4096) -> None:
        self.max_header = max_header
        self.rest = b""
        self._buffer = b""

    def feed(self, data: bytes) -> ProxyInfo | None:
        buffer = self._buffer = self._buffer + data
        if buffer[:1] == b"\r":
            return self._v2(buffer)
        return self._v1(buffer)

    def _v1(self, buffer: bytes) -> ProxyInfo | None:
        head = buffer[: len(V1_PREFIX)]
        if not V1_PREFIX.startswith(head):
            raise ProxyHeaderError("no PROXY protocol header (expected v1 or v2)")
        end = buffer.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buffer) >= V1_MAX or b"\n" in buffer[:V1_MAX]:
                raise ProxyHeaderError(f"v1 header has no CRLF within {V1_MAX} bytes")
            return None
        self.rest = buffer[end + 2 :]
        self._buffer = b""
        return parse_v1(buffer[: end + 2])

    def _v2(self, buffer: bytes) -> ProxyInfo | None:
        head = buffer[: len(V2_SIGNATURE)]
        if not V2_SIGNATURE.startswith(head):
            raise ProxyHeaderError("no PROXY protocol header (expected v1 or v2)")
        if len(buffer) < V2_FIXED:
            return None
        total = V2_FIXED + _LENGTH.unpack_from(buffer, 14)[0]
        if total > self.max_header:
            raise ProxyHeaderError(
                f"v2 header of {total} bytes exceeds proxy_max_header_bytes {self.max_header}"
            )
        if len(buffer) < total:
            return None
        self.rest = buffer[total:]
        self._buffer = b""
        return parse_v2(buffer[:total])


class ProxyProtocol(ProtocolWrapper):
    """Reads the header, then connects the wrapped protocol, acting as its transport."""

    factory: ProxyFactory

    def __init__(self, factory: ProxyFactory, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self._parser: HeaderParser | None = HeaderParser(factory.max_header)
        self._peer: Any = None
        self._host: Any = None
        self._timer: Any = None
        self._connected = False  # the wrapped protocol is connected (the header was read)

    def makeConnection(self, transport: Any) -> None:
        # As ProtocolWrapper does, without connecting the wrapped protocol: that waits for
        # the header, so it is admitted with the real client's address.
        self._peer, self._host = transport.getPeer(), transport.getHost()
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._timed_out)

    def getPeer(self) -> Any:
        return self._peer

    def getHost(self) -> Any:
        return self._host

    # RPCProtocol sets the write-buffer size where the transport pauses its producer.
    @property
    def bufferSize(self) -> int:
        return self.transport.bufferSize

    @bufferSize.setter
    def bufferSize(self, value: int) -> None:
        self.transport.bufferSize = value

    def dataReceived(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            self.wrappedProtocol.dataReceived(data)
            return
        try:
            info = parser.feed(data)
        except ProxyHeaderError as exc:
            self._refuse(str(exc))
            return
        if info is None:
            return
        self._parser = None
        self._cancel_timer()
        if info.source is not None:
            self._peer, self._host = info.source, info.destination
        self._connected = True
        self.wrappedProtocol.makeConnection(self)
        if parser.rest and not self.disconnecting:
            self.wrappedProtocol.dataReceived(parser.rest)

    def connectionLost(self, reason: Any) -> None:
        self._cancel_timer()
        self._parser = None
        if self._connected:
            super().connectionLost(reason)
        else:
            self.factory.unregisterProtocol(self)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._refuse(f"no PROXY header within {self.factory.timeout:g} s")

    def _refuse(self, reason: str) -> None:
        """Tell the peer why in one error frame, close, and count it (rpc.stats)."""
        self._cancel_timer()
        self._parser = None
        peer = self._peer
        where = f"{peer.host}:{peer.port}" if hasattr(peer, "port") else str(peer)
        log.warn("connection from {peer} refused: {reason}", peer=where, reason=reason)
        refused = getattr(self.factory.wrappedFactory, "refused", None)
        if refused is not None:
            refused["proxy_header"] += 1
        body = wire.encode_error(RPCError(INVALID_REQUEST, f"bad PROXY protocol header: {reason}"))
        self.transport.write(self.factory.prefix.pack(len(body)) + body)
        self.loseConnection()


class ProxyFactory(WrappingFactory):
    """Wraps a factory so each connection reads a PROXY v1 or v2 header first."""

    protocol = ProxyProtocol
    noisy = False

    def __init__(
        self,
        wrappedFactory: Any,
        timeout: float = 10.0,
        max_header: int = 4096,
        clock: Any = None,
    ) -> None:
        super().__init__(wrappedFactory)
        if clock is None:
            from twisted.internet import reactor as clock
        self.timeout = timeout
        self.max_header = max_header
        self.clock = clock
        limits = getattr(wrappedFactory, "limits", None)
        little = limits is not None and limits.byteorder == "little"
        self.prefix = struct.Struct("<I" if little else "!I")

    def logPrefix(self) -> str:
        return "ProxyFactory"


__all__ = [
    "HeaderParser",
    "ProxyFactory",
    "ProxyHeaderError",
    "ProxyInfo",
    "ProxyProtocol",
    "parse_v1",
    "parse_v2",
]
