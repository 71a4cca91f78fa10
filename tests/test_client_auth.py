"""The clients' rpc.auth handshake against scripted peers: what the real daemon never does
(a wrong server proof, a refusal before the challenge), and the Twisted client's timer."""

from __future__ import annotations

import json
import struct

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rpcd import auth
from rpcd.client import AuthenticationFailed, Client, NotAuthenticated, TooManyConnections
from rpcd.twisted_client import RPCConnection
from tests.test_client import ScriptedPeer

KEY = b"unit-test-key"
NONCE = "ab" * 32


def challenge() -> dict:
    return {"jsonrpc": "2.0", "method": "rpc.auth", "params": auth.challenge(NONCE)}


def peer_script(proof: str | None, after: list):
    """Challenge, check the client's digest, answer with `proof` (None: the right one),
    then record in `after` what else the client sent before closing."""

    def script(recv, send):
        send(challenge())
        request = recv()
        assert request["method"] == "rpc.auth"
        result = auth.verify(auth.Key(KEY), NONCE, request["params"])  # raises if wrong
        assert "digest" in result  # the client asked for mutual proof
        if proof is not None:
            result["digest"] = proof
        send({"jsonrpc": "2.0", "result": result, "id": request["id"]})
        try:
            while True:
                message = recv()
                after.append(message["method"])
                send({"jsonrpc": "2.0", "result": "pong", "id": message["id"]})
        except (EOFError, OSError):
            pass

    return script


def test_the_right_proof_lets_calls_through(tmp_path):
    after: list = []
    peer = ScriptedPeer(tmp_path / "s", peer_script(None, after))
    c = Client(f"unix:{tmp_path}/s", timeout=5, auth_key=KEY)
    assert c.call("ping") == "pong"
    c.close()
    peer.thread.join(5)
    assert after == ["ping"]


@pytest.mark.parametrize("proof", ["00" * 32, ""])
def test_a_wrong_server_proof_fails_before_any_call(tmp_path, proof):
    after: list = []
    peer = ScriptedPeer(tmp_path / "s", peer_script(proof, after))
    c = Client(f"unix:{tmp_path}/s", timeout=5, auth_key=KEY)
    with pytest.raises(AuthenticationFailed, match="did not prove it holds the key"):
        c.call("ping")
    peer.thread.join(5)
    assert after == [] and not peer.thread.is_alive()  # the client closed without sending it


def test_a_refusal_instead_of_a_challenge(tmp_path):
    def script(recv, send):
        send({"jsonrpc": "2.0", "error": {"code": -32002, "message": "full"}, "id": None})

    ScriptedPeer(tmp_path / "s", script)
    with pytest.raises(TooManyConnections):
        Client(f"unix:{tmp_path}/s", timeout=5, auth_key=KEY).call("ping")


# -- the Twisted client, on a StringTransport and a Clock ----------------------------------------


def frame(obj: dict) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack("!I", len(body)) + body


def sent(transport: StringTransport) -> list:
    data, messages = transport.value(), []
    transport.clear()
    while data:
        size = struct.unpack("!I", data[:4])[0]
        messages.append(json.loads(data[4 : 4 + size]))
        data = data[4 + size :]
    return messages


def connected(clock: Clock, timeout: float = 10.0):
    conn = RPCConnection(auth_key=KEY)
    transport = StringTransport()
    conn.makeConnection(transport)
    return conn, transport, conn._authenticated(clock, timeout)


def test_twisted_handshake_fires_once_authenticated():
    clock = Clock()
    conn, transport, ready = connected(clock)
    assert not ready.called and transport.value() == b""  # nothing sent before the challenge
    conn.dataReceived(frame(challenge()))
    (request,) = sent(transport)
    result = auth.verify(auth.Key(KEY), NONCE, request["params"])
    conn.dataReceived(frame({"jsonrpc": "2.0", "result": result, "id": request["id"]}))
    assert ready.result is conn
    clock.advance(60)  # the timer was stopped: nothing closes the connection later
    assert not transport.disconnecting


@pytest.mark.parametrize(
    "reply, error",
    [
        ({"result": {"authenticated": True, "digest": "00" * 32}}, AuthenticationFailed),
        (
            {"error": {"code": -32003, "message": "authentication failed: wrong digest"}},
            NotAuthenticated,
        ),
    ],
)
def test_twisted_handshake_failures_close_the_connection(reply, error):
    conn, transport, ready = connected(Clock())
    conn.dataReceived(frame(challenge()))
    (request,) = sent(transport)
    conn.dataReceived(frame({"jsonrpc": "2.0", "id": request["id"], **reply}))
    failure = []
    ready.addErrback(failure.append)
    assert failure[0].check(error) and transport.disconnecting


def test_twisted_no_challenge_times_out():
    clock = Clock()
    _, transport, ready = connected(clock, 0.5)
    clock.advance(0.4)
    assert not ready.called
    clock.advance(0.1)
    failure = []
    ready.addErrback(failure.append)
    assert failure[0].check(AuthenticationFailed) and transport.disconnecting
    assert "did not ask for authentication within 0.5 s" in str(failure[0].value)


def test_twisted_cancelling_the_wait_drops_the_connection():
    _, transport, ready = connected(Clock())
    ready.cancel()
    failure = []
    ready.addErrback(failure.append)
    assert failure[0].check(CancelledError) and transport.disconnecting
