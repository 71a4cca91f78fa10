"""A minimal raw-socket JSON-RPC client for the tests: independent of rpcd's own code."""

from __future__ import annotations

import itertools
import json
import socket
import struct
from typing import Any


class RawClient:
    def __init__(
        self, port: int, host: str = "127.0.0.1", byteorder: str = "big", timeout: float = 10.0
    ):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.prefix = "!I" if byteorder == "big" else "<I"
        self._ids = itertools.count(1)

    def send_bytes(self, body: bytes) -> None:
        self.sock.sendall(struct.pack(self.prefix, len(body)) + body)

    def send(self, obj: Any) -> None:
        self.send_bytes(json.dumps(obj).encode())

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
        return data

    def recv(self) -> Any:
        (n,) = struct.unpack(self.prefix, self._exactly(4))
        return json.loads(self._exactly(n))

    def request(self, method: str, *params: Any, id: Any = None) -> Any:
        """Send a JSON-RPC 2.0 request; return its id."""
        rid = next(self._ids) if id is None else id
        msg = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params:
            msg["params"] = list(params)
        self.send(msg)
        return rid

    def call(self, method: str, *params: Any) -> Any:
        """Request and wait for the reply (the whole reply object)."""
        rid = self.request(method, *params)
        reply = self.recv()
        assert reply.get("id") == rid, reply
        return reply

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()
