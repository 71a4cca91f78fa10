"""rpcd.client.routing: bytes to messages, messages to the call each one answers (sans-IO)."""

from __future__ import annotations

import pytest

from rpcd import wire
from rpcd.client import routing
from rpcd.client.errors import InvalidParams, RemoteError, TooManyConnections


class Recorder:
    def __init__(self):
        self.items, self.results, self.errors = [], [], []

    def on_item(self, item):
        self.items.append(item)

    def on_result(self, result):
        self.results.append(result)

    def on_error(self, error):
        self.errors.append(error)


def test_replies_items_and_batches_reach_their_calls():
    one, two = Recorder(), Recorder()
    pending = {1: one, 2: two}
    stream = {"jsonrpc": "2.0", "method": "rpc.stream", "params": {"id": 1, "item": "x"}}
    assert routing.route(pending, stream) is None
    batch = [
        {"jsonrpc": "2.0", "result": 5, "id": 1},
        {"jsonrpc": "2.0", "error": {"code": -32602, "message": "m"}, "id": 2},
    ]
    assert routing.route(pending, batch) is None
    assert (one.items, one.results) == (["x"], [5])
    assert type(two.errors[0]) is InvalidParams
    assert pending == {}


def test_unknown_ids_and_odd_messages_are_dropped():
    call = Recorder()
    pending = {1: call}
    for message in [
        {"jsonrpc": "2.0", "result": 1, "id": 9},
        {"jsonrpc": "2.0", "result": 1, "id": [1]},  # not hashable: no crash
        {"jsonrpc": "2.0", "method": "rpc.stream", "params": {"id": [1], "item": 0}},
        {"jsonrpc": "2.0", "method": "rpc.auth", "params": {}},
        "text",
        None,
    ]:
        assert routing.route(pending, message) is None
    assert pending == {1: call} and not (call.items or call.results or call.errors)


def test_an_error_for_no_call_is_returned_for_the_whole_connection():
    error = routing.route({}, {"jsonrpc": "2.0", "error": {"code": -32002, "message": "full"}})
    assert type(error) is TooManyConnections and isinstance(error, RemoteError)


def test_the_reader_decodes_frames_in_pieces():
    reader = routing.MessageReader(1024)
    data = wire.encode_frame(b'{"id": 1}') + wire.encode_frame(b"[1, 2]")
    assert reader.feed(data[:5]) == []
    assert reader.feed(data[5:]) == [{"id": 1}, [1, 2]]


def test_the_reader_refuses_what_is_not_json():
    reader = routing.MessageReader(1024)
    with pytest.raises(routing.BadReply, match="not JSON"):
        reader.feed(wire.encode_frame(b"\xff"))


def test_encode_call_is_the_wire_request_encoder():
    assert routing.encode_call("m", [1], 3) == wire.encode_request("m", (1,), 3)
    assert wire.decode(routing.encode_call("m", None)).notification
    assert wire.decode(routing.encode_cancel(7)).params == {"id": 7}
