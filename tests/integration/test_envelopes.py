"""Every frame the client sends and the daemon returns is valid JSON-RPC 2.0, judged by an
independent JSON Schema (written from the specification, checked by `jsonschema`)."""

from __future__ import annotations

import json
import socket
import struct
import threading

import jsonschema
import pytest

from rpcd.client import Client, MethodNotFound

ID = {"type": ["string", "integer", "null"]}
REQUEST = {
    "type": "object",
    "required": ["jsonrpc", "method"],
    "properties": {
        "jsonrpc": {"const": "2.0"},
        "method": {"type": "string"},
        "params": {"type": ["array", "object"]},
        "id": ID,
    },
    "additionalProperties": False,
}
ERROR = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {"code": {"type": "integer"}, "message": {"type": "string"}, "data": {}},
    "additionalProperties": False,
}
RESPONSE = {
    "type": "object",
    "required": ["jsonrpc", "id"],
    "properties": {"jsonrpc": {"const": "2.0"}, "result": {}, "error": ERROR, "id": ID},
    "oneOf": [{"required": ["result"]}, {"required": ["error"]}],
    "additionalProperties": False,
}
CLIENT_MESSAGE = {"oneOf": [REQUEST, {"type": "array", "items": REQUEST, "minItems": 1}]}
# The server sends responses, batches of them, and rpc.stream notifications (requests with no id).
STREAM_ITEM = {
    "allOf": [REQUEST, {"not": {"required": ["id"]}}],
    "properties": {
        "method": {"const": "rpc.stream"},
        "params": {"type": "object", "required": ["id", "item"]},
    },
}
SERVER_MESSAGE = {
    "oneOf": [RESPONSE, STREAM_ITEM, {"type": "array", "items": RESPONSE, "minItems": 1}]
}


class RecordingRelay:
    """Forwards one TCP connection to the daemon and records every frame both ways."""

    def __init__(self, target_port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target_port = target_port
        self.sent: list = []  # client -> server
        self.returned: list = []  # server -> client
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.target_port))
        for source, sink, record in ((client, server, self.sent), (server, client, self.returned)):
            thread = threading.Thread(target=self._pump, args=(source, sink, record), daemon=True)
            thread.start()
            self.threads.append(thread)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, record: list) -> None:
        buffer = b""
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    sink.shutdown(socket.SHUT_WR)  # pass the EOF on; the other pump then ends
                except OSError:
                    pass
                return
            sink.sendall(data)
            buffer += data
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack("!I", buffer[:4])[0]:
                size = struct.unpack("!I", buffer[:4])[0]
                record.append(json.loads(buffer[4 : 4 + size]))
                buffer = buffer[4 + size :]

    def close(self) -> None:
        self.listener.close()
        for thread in self.threads[1:]:
            thread.join(5)


def test_client_and_server_speak_json_rpc_2(shared_daemon):
    d = shared_daemon
    relay = RecordingRelay(d.port)
    c = Client(f"tcp:127.0.0.1:{relay.port}", timeout=10)
    assert c.call("add", 1, 2) == 3
    assert c.call("add", a=1, b=2) == 3
    assert c.call("ping") == "pong"
    c.notify("echo", "note")
    with pytest.raises(MethodNotFound):
        c.call("nosuch")
    with c.batch() as batch:
        batch.call("add", 1, 1)
        batch.call("boom")
        batch.notify("echo", 1)
    stream = c.stream("ticker", 3)
    assert list(stream) == [0, 1, 2]
    endless = c.stream("ticker", 1000, 0.01)
    next(endless)
    endless.close()  # sends rpc.cancel
    with pytest.raises(TimeoutError):  # also sends rpc.cancel
        c.call("sleep", 0.5, _timeout=0.05)
    assert c.call("add", 2, 2) == 4
    c.close()
    relay.close()

    assert len(relay.sent) >= 10 and any(isinstance(m, list) for m in relay.sent)
    assert any(m.get("method") == "rpc.cancel" for m in relay.sent if isinstance(m, dict))
    for message in relay.sent:
        jsonschema.validate(message, CLIENT_MESSAGE)
    kinds = set()
    for message in relay.returned:
        jsonschema.validate(message, SERVER_MESSAGE)
        kinds.add("batch" if isinstance(message, list) else message.get("method", "response"))
    assert kinds == {"batch", "rpc.stream", "response"}


def test_schema_rejects_what_json_rpc_2_forbids():
    """The schema is strict enough to catch a broken envelope (so the test above can fail)."""
    bad_requests = [
        {"jsonrpc": "1.0", "method": "x", "id": 1},
        {"jsonrpc": "2.0", "method": "x", "params": 5, "id": 1},
        {"jsonrpc": "2.0", "method": "x", "id": 1.5},
        [],
    ]
    bad_responses = [
        {"jsonrpc": "2.0", "result": 1, "error": {"code": 1, "message": "x"}, "id": 1},
        {"jsonrpc": "2.0", "result": 1},
        {"jsonrpc": "2.0", "error": {"code": "x", "message": "y"}, "id": 1},
    ]
    for message in bad_requests:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(message, CLIENT_MESSAGE)
    for message in bad_responses:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(message, SERVER_MESSAGE)
