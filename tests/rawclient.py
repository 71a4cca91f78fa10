"""A minimal raw-socket JSON-RPC client for the tests: independent of rpcd's own code."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import socket
import ssl
import struct
from typing import Any


class RawClient:
    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        byteorder: str = "big",
        timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
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


def authenticate(client: RawClient, key: bytes, mutual: bool = True) -> Any:
    """Do the rpc.auth handshake by hand, from the README's description; return the reply."""
    challenge = client.recv()
    assert challenge["method"] == "rpc.auth" and challenge["params"]["mechanism"] == "hmac-sha256"
    nonce = challenge["params"]["nonce"]
    digest = hmac.new(key, b"rpcd-auth client " + nonce.encode(), hashlib.sha256).hexdigest()
    params = {"digest": digest}
    mine = os.urandom(32).hex()
    if mutual:
        params["nonce"] = mine
    reply = client.call("rpc.auth", params)
    if mutual and "result" in reply:
        proof = hmac.new(key, b"rpcd-auth server " + mine.encode(), hashlib.sha256).hexdigest()
        assert hmac.compare_digest(reply["result"]["digest"], proof), "server does not hold the key"
    return reply
