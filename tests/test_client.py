"""The blocking client's parts: endpoint strings, error classes, params, and the reader
against a scripted peer on a socketpair-like UNIX socket (out-of-order replies, bad frames)."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import sys
import threading
import time

import pytest

from rpcd.client import (
    CallCancelled,
    Client,
    ConnectFailed,
    ConnectionLost,
    Endpoint,
    InvalidParams,
    RemoteError,
    ServerBusy,
    TooManyConnections,
    make_params,
)


@pytest.mark.parametrize(
    "text, kind, host, port, path",
    [
        ("tcp:127.0.0.1:5354", "tcp", "127.0.0.1", 5354, ""),
        ("tcp:host=example.org:port=99:timeout=3", "tcp", "example.org", 99, ""),
        (r"tcp:\:\:1:5354", "tcp", "::1", 5354, ""),
        ("tcp:[::1]:5354", "tcp", "::1", 5354, ""),
        ("unix:/run/rpcd.sock", "unix", "", 0, "/run/rpcd.sock"),
        ("unix:path=/run/rpcd.sock:timeout=2", "unix", "", 0, "/run/rpcd.sock"),
        ("ssl:rpc.example.org:5355:caCertsDir=/etc/rpcd/ca", "ssl", "rpc.example.org", 5355, ""),
    ],
)
def test_endpoint_strings(text, kind, host, port, path):
    endpoint = Endpoint.parse(text)
    assert (endpoint.kind, endpoint.host, endpoint.port, endpoint.path) == (kind, host, port, path)


@pytest.mark.parametrize(
    "text",
    [
        "5354",
        "tcp:",
        "tcp:localhost",
        "tcp:localhost:http",
        "tcp:a:1:2",
        "tcp:a:1:colour=red",
        "udp:a:1",
        "unix:",
    ],
)
def test_bad_endpoint_strings(text):
    with pytest.raises(ValueError, match="bad endpoint"):
        Endpoint.parse(text)


def test_host_and_port_form():
    assert Client("::1", 5354).endpoint.host == "::1"
    assert Client("localhost", 5354).endpoint.text == "tcp:host=localhost:port=5354"


def test_error_classes_by_code():
    assert type(RemoteError.from_object({"code": -32602, "message": "m"})) is InvalidParams
    assert type(RemoteError.from_object({"code": -32000, "message": "m"})) is ServerBusy
    assert type(RemoteError.from_object({"code": -32006, "message": "m"})) is CallCancelled
    other = RemoteError.from_object({"code": 7, "message": "app", "data": {"x": 1}})
    assert type(other) is RemoteError
    assert (other.code, other.message, other.data) == (7, "app", {"x": 1})
    assert RemoteError.from_object("garbage").code == -32603
    assert str(InvalidParams(-32602, "bad b")) == "bad b (-32602)"


def test_params():
    assert make_params((), {}) is None
    assert make_params((1, 2), {}) == [1, 2]
    assert make_params((), {"a": 1}) == {"a": 1}
    with pytest.raises(TypeError):
        make_params((1,), {"a": 1})


def test_cannot_connect_says_why(tmp_path):
    with pytest.raises(ConnectFailed) as info:
        Client(f"unix:{tmp_path}/missing.sock").call("ping")
    assert info.value.reason == "no such file or directory"
    assert isinstance(info.value, ConnectionError)


class ScriptedPeer:
    """A UNIX-socket peer that reads requests and runs `script(requests, send)` on them."""

    def __init__(self, path, script):
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen()
        self.script = script
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        conn, _ = self.server.accept()
        buffer = b""

        def recv_request():
            nonlocal buffer
            while len(buffer) < 4 or len(buffer) < 4 + struct.unpack("!I", buffer[:4])[0]:
                chunk = conn.recv(65536)
                if not chunk:
                    raise EOFError("the client closed the connection")
                buffer += chunk
            size = struct.unpack("!I", buffer[:4])[0]
            message, buffer = json.loads(buffer[4 : 4 + size]), buffer[4 + size :]
            return message

        def send(obj, raw=None):
            body = raw if raw is not None else json.dumps(obj).encode()
            conn.sendall(struct.pack("!I", len(body)) + body)

        send.conn = conn  # for a script that sends raw bytes
        try:
            self.script(recv_request, send)
        finally:
            conn.close()
            self.server.close()


def test_replies_out_of_order_reach_their_callers(tmp_path):
    def script(recv, send):
        first, second = recv(), recv()
        send({"jsonrpc": "2.0", "method": "rpc.stream", "params": {"id": 999, "item": 1}})
        send({"jsonrpc": "2.0", "result": "second", "id": second["id"]})
        send({"jsonrpc": "2.0", "result": "first", "id": first["id"]})

    ScriptedPeer(tmp_path / "s", script)
    c = Client(f"unix:{tmp_path}/s", timeout=5)
    results = {}
    one = threading.Thread(target=lambda: results.setdefault("one", c.call("one")))
    one.start()
    while not c._conn or not c._conn.pending:
        time.sleep(0.001)  # until "one" is on the wire, so the order is certain
    results["two"] = c.call("two")
    one.join(5)
    assert results == {"one": "first", "two": "second"}


def test_an_error_for_no_call_fails_every_pending_call(tmp_path):
    def script(recv, send):
        recv()
        send({"jsonrpc": "2.0", "error": {"code": -32002, "message": "full"}, "id": None})

    ScriptedPeer(tmp_path / "s", script)
    with pytest.raises(TooManyConnections):
        Client(f"unix:{tmp_path}/s", timeout=5).call("ping")


def test_a_frame_that_is_not_json_breaks_the_connection(tmp_path):
    def script(recv, send):
        recv()
        send(None, raw=b"\xff not json")

    ScriptedPeer(tmp_path / "s", script)
    with pytest.raises(ConnectionLost, match="not JSON"):
        Client(f"unix:{tmp_path}/s", timeout=5).call("ping")


def test_a_peer_that_closes_mid_call(tmp_path):
    ScriptedPeer(tmp_path / "s", lambda recv, send: recv())
    with pytest.raises(ConnectionLost, match="closed by the server"):
        Client(f"unix:{tmp_path}/s", timeout=5).call("ping")


class _HeldSends:
    """Wraps a client's socket: the first sendall waits for `release` (or fails with `error`)."""

    def __init__(self, sock, error=None):
        self._sock = sock
        self.error = error
        self.entered = threading.Event()
        self.release = threading.Event()
        self.sends: list[bytes] = []

    def sendall(self, data):
        if not self.sends:
            self.entered.set()
            assert self.release.wait(5)
        self.sends.append(data)
        if self.error is not None:
            raise self.error
        self._sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _hold_sends(c: Client, error=None) -> _HeldSends:
    conn = c._connection()
    conn.sock = held = _HeldSends(conn.sock, error)
    return held


def _calls_behind_a_held_send(c: Client, held: _HeldSends, methods: list[str]) -> dict:
    results: dict = {}

    def call(method):
        try:
            results[method] = c.call(method)
        except Exception as exc:
            results[method] = exc

    threads = [threading.Thread(target=call, args=(m,)) for m in methods]
    threads[0].start()
    assert held.entered.wait(5)  # the first caller is sending (and holds the send)
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 5
    while len(c._conn.pending) < len(methods):  # every later call is queued, not sent
        assert time.monotonic() < deadline
        time.sleep(0.001)
    held.release.set()
    for t in threads:
        t.join(5)
    return results


def test_calls_queued_behind_a_send_go_out_in_the_next_one(tmp_path):
    def script(recv, send):
        requests = [recv() for _ in range(3)]
        for request in reversed(requests):
            send({"jsonrpc": "2.0", "result": request["method"], "id": request["id"]})

    ScriptedPeer(tmp_path / "s", script)
    c = Client(f"unix:{tmp_path}/s", timeout=5)
    held = _hold_sends(c)
    results = _calls_behind_a_held_send(c, held, ["one", "two", "three"])
    assert results == {"one": "one", "two": "two", "three": "three"}
    assert len(held.sends) == 2  # the first frame, then the two queued ones together


def test_a_failed_send_fails_the_calls_queued_behind_it(tmp_path):
    def script(recv, send):
        with contextlib.suppress(EOFError):  # the client closes its end: nothing reaches us
            recv()

    ScriptedPeer(tmp_path / "s", script)
    c = Client(f"unix:{tmp_path}/s", timeout=5)
    held = _hold_sends(c, BrokenPipeError(32, "Broken pipe"))
    results = _calls_behind_a_held_send(c, held, ["one", "two", "three"])
    assert sorted(results) == ["one", "three", "two"]
    for error in results.values():
        assert isinstance(error, ConnectionLost) and "lost" in str(error), results


def _notify_behind_a_held_send(c: Client, held: _HeldSends) -> dict:
    """A call holds the send; a notification is queued behind it; then the send goes on."""
    outcome: dict = {}

    def call():
        with contextlib.suppress(Exception):
            c.call("first")

    def notify():
        try:
            outcome["returned"] = c.notify("note")
        except Exception as exc:
            outcome["raised"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    assert held.entered.wait(5)
    notifier = threading.Thread(target=notify)
    notifier.start()
    deadline = time.monotonic() + 5
    while not c._conn.outbox:  # the notification is queued behind the held send
        assert time.monotonic() < deadline
        time.sleep(0.001)
    time.sleep(0.05)
    outcome["waited"] = notifier.is_alive()  # it does not return before its frame is sent
    held.release.set()
    notifier.join(5)
    caller.join(5)
    assert not notifier.is_alive()
    return outcome


def test_a_notification_queued_behind_a_send_returns_once_sent(tmp_path):
    received = []

    def script(recv, send):
        first, note = recv(), recv()
        received.append(note["method"])
        send({"jsonrpc": "2.0", "result": "ok", "id": first["id"]})

    ScriptedPeer(tmp_path / "s", script)
    c = Client(f"unix:{tmp_path}/s", timeout=5)
    held = _hold_sends(c)
    outcome = _notify_behind_a_held_send(c, held)
    assert outcome == {"waited": True, "returned": None}
    assert len(held.sends) == 2 and b'"note"' in held.sends[1]


def test_a_notification_queued_behind_a_failed_send_raises(tmp_path):
    def script(recv, send):
        with contextlib.suppress(EOFError):
            recv()

    ScriptedPeer(tmp_path / "s", script)
    c = Client(f"unix:{tmp_path}/s", timeout=5)
    held = _hold_sends(c, BrokenPipeError(32, "Broken pipe"))
    outcome = _notify_behind_a_held_send(c, held)
    # Not lost in silence: its caller learns that it was not sent.
    assert outcome["waited"] is True and "returned" not in outcome
    assert isinstance(outcome["raised"], ConnectionLost), outcome


def test_serial_calls_each_get_their_own_answer(tmp_path):
    def script(recv, send):
        first = recv()
        send({"jsonrpc": "2.0", "error": {"code": -32602, "message": "bad"}, "id": first["id"]})
        second = recv()
        send({"jsonrpc": "2.0", "result": "two", "id": second["id"]})
        third = recv()
        send({"jsonrpc": "2.0", "result": "stray", "id": 999})  # answers no call: dropped
        send({"jsonrpc": "2.0", "result": ["three"], "id": third["id"]})

    ScriptedPeer(tmp_path / "s", script)
    c = Client(f"unix:{tmp_path}/s", timeout=5)
    with pytest.raises(InvalidParams, match="bad"):
        c.call("one")
    assert c.call("two") == "two"
    assert c.call("three") == ["three"]


def test_a_call_past_its_timeout_is_cancelled_and_its_late_reply_dropped(tmp_path):
    seen = []

    def script(recv, send):
        first = recv()  # not answered in time
        seen.append((first["id"], recv()))  # the cancel
        send({"jsonrpc": "2.0", "result": "late", "id": first["id"]})
        second = recv()
        send({"jsonrpc": "2.0", "result": "second", "id": second["id"]})

    ScriptedPeer(tmp_path / "s", script)
    c = Client(f"unix:{tmp_path}/s", timeout=0.2)
    with pytest.raises(TimeoutError, match="no reply to slow"):
        c.call("slow")
    assert c.call("fast") == "second"
    [(first_id, cancel)] = seen
    assert (cancel["method"], cancel["params"], "id" in cancel) == (
        "rpc.cancel",
        {"id": first_id},
        False,
    )


def test_params_are_sent_as_the_wire_encoder_writes_them(tmp_path):
    requests = []

    def script(recv, send):
        for _ in range(3):
            requests.append(recv())
            send({"jsonrpc": "2.0", "result": None, "id": requests[-1]["id"]})

    ScriptedPeer(tmp_path / "s", script)
    c = Client(f"unix:{tmp_path}/s", timeout=5)
    c.call("keys", {1: "a"})  # a key that is not a string, as rpcd.wire writes it
    c.call("named", a=1)
    c.call("none")
    assert [(r["method"], r.get("params", "absent")) for r in requests] == [
        ("keys", [{"1": "a"}]),
        ("named", {"a": 1}),
        ("none", "absent"),
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel-bounded waits: Linux")
def test_a_sub_microsecond_timeout_still_bounds_the_kernel_waits():
    # SO_RCVTIMEO of zero means "wait for ever": a timeout under 1 µs must not become that.
    from rpcd.client.blocking import _bound_waits

    a, b = socket.socketpair()
    with a, b:
        assert _bound_waits(a, 5e-7) == 5e-7
        seconds, micros = struct.unpack(
            "@ll", a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
        )
        assert (seconds, micros) != (0, 0)
        with pytest.raises(BlockingIOError):  # the kernel ends the wait: no reply is coming
            a.recv(1)


def test_a_serial_call_waits_past_what_does_not_answer_it(tmp_path):
    # Whole frames that are not its reply: an id equal to its own only as a number, a stream
    # item, a reply split over two reads. The call takes only its own reply.
    def script(recv, send):
        request = recv()
        call_id = request["id"]
        send(None, raw=b'{"jsonrpc":"2.0","result":"float","id":%d.0}' % call_id)
        send({"jsonrpc": "2.0", "result": "bool", "id": True})
        send({"jsonrpc": "2.0", "method": "rpc.stream", "params": {"id": call_id, "item": 1}})
        body = json.dumps({"jsonrpc": "2.0", "result": "mine", "id": call_id}).encode()
        frame = struct.pack("!I", len(body)) + body
        send.conn.sendall(frame[:6])
        time.sleep(0.05)
        send.conn.sendall(frame[6:])
        second = recv()
        send({"jsonrpc": "2.0", "result": "next", "id": second["id"]})

    ScriptedPeer(tmp_path / "s", script)
    c = Client(f"unix:{tmp_path}/s", timeout=5)
    assert c.call("one") == "mine"
    assert c.call("two") == "next"


def test_a_lone_reply_over_the_frame_limit_breaks_the_connection(tmp_path):
    def script(recv, send):
        request = recv()
        send({"jsonrpc": "2.0", "result": "x" * 100, "id": request["id"]})

    class Small(Client):
        max_frame_bytes = 64

    ScriptedPeer(tmp_path / "s", script)
    with pytest.raises(ConnectionLost, match="exceeds"):
        Small(f"unix:{tmp_path}/s", timeout=5).call("big")
