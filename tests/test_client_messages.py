"""Client messages name the likely cause and the fix (issue 10, point 28): a byte-order
mismatch, a server that is not rpcd (HTTP), TLS verification, not just "is rpcd running?"."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from pathlib import Path

import pytest
import twisted.test
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from rpcd.client import Client, ConnectFailed, ConnectionLost
from rpcd.client.cli import main
from rpcd.twisted_client import RPCConnection

PEM = Path(twisted.test.__file__).with_name("server.pem")  # self-signed, for "localhost"


class RawPeer:
    """A UNIX-socket peer that reads one request and answers `reply` bytes, raw."""

    def __init__(self, path: Path, reply: bytes) -> None:
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen()
        self.thread = threading.Thread(target=self._run, args=(reply,), daemon=True)
        self.thread.start()

    def _run(self, reply: bytes) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(5)
            conn.recv(65536)
            conn.sendall(reply)
            try:
                conn.recv(65536)  # until the client closes
            except OSError:
                pass
        self.server.close()


def _little_endian_reply() -> bytes:
    body = b'{"jsonrpc":"2.0","result":"pong","id":1}'
    return struct.pack("<I", len(body)) + body


def test_a_byte_order_mismatch_is_named_with_its_fix(tmp_path):
    RawPeer(tmp_path / "s", _little_endian_reply())
    with pytest.raises(ConnectionLost) as raised:
        Client(f"unix:{tmp_path}/s", timeout=5).call("ping")
    message = str(raised.value)
    assert "looks little-endian" in message and "byteorder='little'" in message


def test_an_http_server_is_named_as_not_rpcd(tmp_path):
    RawPeer(tmp_path / "s", b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(ConnectionLost, match="looks like an HTTP response, so this is not an rpcd"):
        Client(f"unix:{tmp_path}/s", timeout=5).call("ping")


def test_the_twisted_client_names_the_byte_order_mismatch():
    conn = RPCConnection()
    conn.makeConnection(StringTransport())
    d = conn.callRemote("ping")
    conn.dataReceived(_little_endian_reply())
    assert conn.transport.disconnecting
    conn.connectionLost(Failure(ConnectionDone()))
    failures: list = []
    d.addErrback(failures.append)
    assert failures[0].check(ConnectionLost)
    assert "looks little-endian" in str(failures[0].value)


@pytest.fixture
def tls_port():
    """A TLS server on 127.0.0.1 with a self-signed certificate, for one handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(PEM))
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def test_a_tls_verification_failure_is_not_blamed_on_rpcd_not_running(tls_port, capsys):
    code = main(["-c", f"ssl:127.0.0.1:{tls_port}", "-t", "5", "ping"])
    err = capsys.readouterr().err
    assert code == 3 and err.count("\n") == 1
    assert "is rpcd running" not in err
    assert "certificate" in err and "caCertsDir=" in err


@pytest.mark.parametrize(
    "reason, hint",
    [
        ("connection refused", "is rpcd running"),
        ("no such file or directory", "is rpcd running"),
        ("timed out", "firewall"),
        ("TLS handshake failed: certificate verify failed", "caCertsDir="),
        ("TLS handshake failed: wrong version number", "not speak TLS"),
        ("TLS handshake failed: WRONG_VERSION_NUMBER", "not speak TLS"),
    ],
)
def test_connect_failures_carry_a_hint(reason, hint):
    assert hint in ConnectFailed("tcp:127.0.0.1:5354", reason).hint


def test_the_twisted_client_sends_each_call_at_once_without_nagle():
    class TCPTransport(StringTransport):
        no_delay = False

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.no_delay = enabled

    transport = TCPTransport()
    RPCConnection().makeConnection(transport)
    assert transport.no_delay is True
    RPCConnection().makeConnection(StringTransport())  # no such option (UNIX): connects too
