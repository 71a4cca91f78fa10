"""The real daemon on the connection paths rpcd.session decides: half-close over real TCP."""

from __future__ import annotations

import json
import socket
import struct


def _read_replies(sock: socket.socket, timeout: float = 10.0) -> list:
    """Every frame until the server closes (the socket timeout bounds each read)."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    out = []
    while len(data) >= 4:
        (n,) = struct.unpack("!I", data[:4])
        out.append(json.loads(data[4 : 4 + n]))
        data = data[4 + n :]
    return out


def test_half_close_gets_every_reply_then_the_close(start_daemon):
    daemon = start_daemon("--max-inflight", "8")
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
    bodies = [
        json.dumps({"jsonrpc": "2.0", "method": "ping", "params": [i], "id": i}).encode()
        for i in range(50)
    ]
    sock.sendall(b"".join(struct.pack("!I", len(b)) + b for b in bodies))
    sock.shutdown(socket.SHUT_WR)  # what `printf ... | nc` does
    replies = _read_replies(sock)  # returns once the server closed its side
    sock.close()
    assert sorted(r["result"] for r in replies) == list(range(50))
