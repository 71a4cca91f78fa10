"""rpcd.aio.Client as an asyncio.Protocol over a fake transport: routing, cancellation, bad
replies, the auth handshake (no sockets, no sleeping)."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest

from rpcd import auth
from rpcd.aio import Client
from rpcd.client import AuthenticationFailed, ConnectionLost, MethodNotFound
from rpcd.client.endpoint import Endpoint


class FakeTransport(asyncio.Transport):
    def __init__(self, protocol: Client) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def frames(self) -> list:
        out, data = [], self.written
        while data:
            (n,) = struct.unpack("!I", data[:4])
            out.append(json.loads(data[4 : 4 + n]))
            data = data[4 + n :]
        return out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()


def frame(obj) -> bytes:
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack("!I", len(body)) + body


def client(key: bytes | None = None) -> tuple[Client, FakeTransport]:
    c = Client(
        Endpoint.parse("tcp:127.0.0.1:1"),
        timeout=5.0,
        byteorder="big",
        key=auth.Key(key) if key else None,
        max_frame_bytes=1 << 20,
    )
    transport = FakeTransport(c)
    c.connection_made(transport)
    return c, transport


def test_replies_in_any_order_and_split_across_reads_reach_their_callers():
    async def main():
        c, t = client()
        first = asyncio.ensure_future(c.call("echo", "a"))
        second = asyncio.ensure_future(c.call("nope"))
        await asyncio.sleep(0)
        assert [f["id"] for f in t.frames()] == [1, 2]
        data = frame({"jsonrpc": "2.0", "id": 2, "error": {"code": -32601, "message": "no"}})
        data += frame({"jsonrpc": "2.0", "id": 1, "result": "a"})
        for i in range(len(data)):  # one byte at a time
            c.data_received(data[i : i + 1])
        assert await first == "a"
        with pytest.raises(MethodNotFound):
            await second

    asyncio.run(main())


def test_a_cancelled_call_sends_rpc_cancel_and_its_late_reply_is_dropped():
    async def main():
        c, t = client()
        task = asyncio.ensure_future(c.call("sleep", 10))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert t.frames()[-1] == {"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": 1}}
        c.data_received(frame({"jsonrpc": "2.0", "id": 1, "error": {"code": -32006}}))
        assert c._pending == {}

    asyncio.run(main())


def test_a_frame_that_is_not_json_closes_the_connection_saying_why():
    async def main():
        c, t = client()
        pending = asyncio.ensure_future(c.call("echo", 1))
        await asyncio.sleep(0)
        c.data_received(frame(b"<html>"))
        with pytest.raises(ConnectionLost, match="not JSON"):
            await pending
        assert t.closed

    asyncio.run(main())


def test_the_handshake_answers_the_challenge_and_checks_the_servers_proof():
    async def main():
        key = b"k" * 16
        c, t = client(key)
        assert not c.ready.done()
        params = auth.challenge(auth.new_nonce())
        c.data_received(frame({"jsonrpc": "2.0", "method": "rpc.auth", "params": params}))
        [answer] = t.frames()
        assert answer["method"] == "rpc.auth"
        c.data_received(frame({"jsonrpc": "2.0", "id": answer["id"], "result": {"digest": "x"}}))
        with pytest.raises(AuthenticationFailed, match="did not prove"):
            await c.ready
        assert t.closed

    asyncio.run(main())
