"""The server side of the rpc.auth handshake in RPCProtocol, with StringTransport and Clock."""

from __future__ import annotations

import json
import struct

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from rpcd import auth
from rpcd.protocol import ConnectionLimits, RPCFactory
from rpcd.wire import Response

SECRET = b"never-log-me-0123456789"


class FakeCall:
    def __init__(self, request, sink):
        self.request = request
        self.sink = sink
        self.context = None


class FakeDispatcher:
    """Records what reaches the dispatcher; answers each call at once with its params."""

    def __init__(self):
        self.submitted = []

    def submit(self, request, sink):
        call = FakeCall(request, sink)
        self.submitted.append(request)
        return call

    def cancel(self, call, response=None):
        return False


class Conn:
    def __init__(self, key=SECRET, max_frame_bytes=1024 * 1024):
        self.clock = Clock()
        self.dispatcher = FakeDispatcher()
        limits = ConnectionLimits(
            max_frame_bytes=max_frame_bytes, idle_timeout=0,
            auth_key=auth.Key(key) if key is not None else None,
        )
        self.factory = RPCFactory(self.dispatcher, limits, clock=self.clock)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.proto = self.factory.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)
        self._challenge = None
        if key is not None:
            (frame,) = self.frames()
            assert frame["method"] == "rpc.auth" and "id" not in frame
            self._challenge = frame["params"]

    def send(self, obj):
        body = json.dumps(obj).encode()
        self.proto.dataReceived(struct.pack("!I", len(body)) + body)

    def frames(self):
        data = self.transport.value()
        self.transport.clear()
        out = []
        while data:
            (n,) = struct.unpack("!I", data[:4])
            out.append(json.loads(data[4:4 + n]))
            data = data[4 + n:]
        return out

    def challenge(self):
        return self._challenge

    def authenticate(self, key=SECRET):
        params = auth.respond(auth.Key(key), self.challenge())
        self.send({"jsonrpc": "2.0", "method": "rpc.auth", "params": params, "id": "a"})
        return self.frames()


def test_without_a_key_there_is_no_handshake():
    c = Conn(key=None)
    assert c.transport.value() == b""
    c.send({"jsonrpc": "2.0", "method": "ping", "id": 1})
    assert [r.method for r in c.dispatcher.submitted] == ["ping"]


def test_challenge_then_success_then_calls_flow():
    c = Conn()
    assert c.challenge()["mechanism"] == "hmac-sha256" and len(c.challenge()["nonce"]) == 64
    assert Conn().challenge()["nonce"] != c.challenge()["nonce"]
    (reply,) = c.authenticate()
    assert reply == {"jsonrpc": "2.0", "result": {"authenticated": True}, "id": "a"}
    assert not c.transport.disconnecting
    c.send({"jsonrpc": "2.0", "method": "ping", "id": 1})
    assert [r.method for r in c.dispatcher.submitted] == ["ping"]
    call = c.proto._calls.copy().pop()
    c.proto.deliver(call, Response(call.request, "pong"))
    assert c.frames() == [{"jsonrpc": "2.0", "result": "pong", "id": 1}]
    # The handshake timer is gone: nothing happens at 5 s.
    c.clock.advance(auth.HANDSHAKE_TIMEOUT + 1)
    assert not c.transport.disconnecting


def test_mutual_authentication():
    c = Conn()
    client_nonce = auth.new_nonce()
    params = auth.respond(auth.Key(SECRET), c.challenge(), client_nonce)
    c.send({"jsonrpc": "2.0", "method": "rpc.auth", "params": params, "id": 7})
    (reply,) = c.frames()
    assert auth.check_server(auth.Key(SECRET), client_nonce, reply["result"])


def test_legacy_envelope_handshake():
    c = Conn()
    params = auth.respond(auth.Key(SECRET), c.challenge())
    c.send({"in": "rpc.auth", "params": params})
    assert c.frames() == [{"out": "rpc.auth", "result": {"authenticated": True}}]


def test_everything_else_before_auth_is_refused_with_32003():
    c = Conn()
    c.challenge()
    c.send({"jsonrpc": "2.0", "method": "ping", "id": 1})
    c.send({"in": "ping"})
    c.send([{"jsonrpc": "2.0", "method": "ping", "id": 2}])
    c.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": 1}, "id": 3})
    c.send({"jsonrpc": "2.0", "method": "ping"})  # a notification: refused silently
    frames = c.frames()
    assert [f.get("error", f.get("result", {})).get("code") for f in frames] == [-32003] * 4
    assert frames[0]["id"] == 1 and frames[1]["out"] == "error" and frames[3]["id"] == 3
    assert c.dispatcher.submitted == []
    assert not c.transport.disconnecting  # still time to authenticate
    assert c.authenticate()[0]["result"] == {"authenticated": True}


def test_wrong_key_is_refused_and_closed():
    c = Conn()
    (reply,) = c.authenticate(key=b"wrong")
    assert reply["error"]["code"] == -32003 and reply["id"] == "a"
    assert c.transport.disconnecting
    c.send({"jsonrpc": "2.0", "method": "ping", "id": 1})
    assert c.dispatcher.submitted == []


def test_malformed_auth_params_close():
    c = Conn()
    c.challenge()
    c.send({"jsonrpc": "2.0", "method": "rpc.auth", "params": [1, 2], "id": 1})
    (reply,) = c.frames()
    assert reply["error"]["code"] == -32003 and c.transport.disconnecting


def test_handshake_must_finish_within_5_s():
    c = Conn()
    c.challenge()
    c.clock.advance(auth.HANDSHAKE_TIMEOUT - 0.01)
    assert not c.transport.disconnecting
    c.clock.advance(0.02)
    (reply,) = c.frames()
    assert reply["error"]["code"] == -32003 and "timed out" in reply["error"]["message"]
    assert c.transport.disconnecting


def test_preauth_frames_are_capped_small():
    c = Conn()
    c.challenge()
    c.proto.dataReceived(struct.pack("!I", auth.PREAUTH_MAX_FRAME + 1))
    (reply,) = c.frames()
    assert reply["error"]["code"] == -32004 and c.transport.disconnecting


def test_preauth_frame_at_the_cap_is_read_and_the_cap_lifts_after_auth():
    c = Conn()
    c.challenge()
    pad = "x" * (auth.PREAUTH_MAX_FRAME - 100)
    c.send({"jsonrpc": "2.0", "method": "ping", "params": [pad], "id": 1})
    assert c.frames()[0]["error"]["code"] == -32003
    c.authenticate()
    c.send({"jsonrpc": "2.0", "method": "ping", "params": ["y" * 100_000], "id": 2})
    assert not c.transport.disconnecting
    assert [r.id for r in c.dispatcher.submitted] == [2]


def test_a_failed_handshake_cancels_its_timer():
    c = Conn()
    c.authenticate(key=b"wrong")
    assert c.clock.getDelayedCalls() == []


def test_connection_lost_cancels_the_handshake_timer():
    c = Conn()
    c.proto.connectionLost(None)
    assert c.clock.getDelayedCalls() == []


@pytest.fixture
def log_events():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_key_never_logged(log_events):
    c = Conn()
    c.authenticate(key=b"wrong")  # logs a warning
    c2 = Conn()
    c2.authenticate()
    c3 = Conn()
    c3.challenge()
    c3.clock.advance(10)
    assert any("authentication failed" in repr(e) for e in log_events)
    text = repr(log_events) + repr(c.factory.limits)
    assert SECRET.decode() not in text
