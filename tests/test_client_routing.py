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


def _received(buffer: bytearray, data: bytes) -> int:
    """`data` as a recv_into would leave it in `buffer` (its start), and its size."""
    buffer[: len(data)] = data
    return len(data)


def test_the_reader_decodes_chunks_from_a_reused_buffer():
    reader = routing.MessageReader(1024)
    buffer = bytearray(64)
    one, two = wire.encode_frame(b'{"id": 1}'), wire.encode_frame(b"[1, 2]")
    assert reader.feed_from(buffer, _received(buffer, one)) == [{"id": 1}]  # one whole frame
    assert reader.feed_from(buffer, _received(buffer, one + two)) == [{"id": 1}, [1, 2]]
    # A frame cut short waits for its rest, though the next chunk looks like a whole frame.
    assert reader.feed_from(buffer, _received(buffer, two[:3])) == []
    assert reader.feed_from(buffer, _received(buffer, two[3:] + one)) == [[1, 2], {"id": 1}]
    assert reader.feed_from(buffer, _received(buffer, two)) == [[1, 2]]
    reader.receive(one[:6])  # bytes handed over before (the auth handshake's leftovers)
    assert reader.feed_from(buffer, _received(buffer, one[6:])) == [{"id": 1}]


def test_the_reader_refuses_a_reused_buffer_frame_that_is_not_json_or_too_large():
    buffer = bytearray(64)
    with pytest.raises(routing.BadReply, match="not JSON"):
        routing.MessageReader(1024).feed_from(buffer, _received(buffer, wire.encode_frame(b"x")))
    with pytest.raises(routing.ReplyTooLarge):
        frame = wire.encode_frame(b"[" + b"1," * 20 + b"1]")
        routing.MessageReader(16).feed_from(buffer, _received(buffer, frame))


def test_the_reader_refuses_what_is_not_json():
    reader = routing.MessageReader(1024)
    with pytest.raises(routing.BadReply, match="not JSON"):
        reader.feed(wire.encode_frame(b"\xff"))


def test_encode_call_is_the_wire_request_encoder():
    assert routing.encode_call("m", [1], 3) == wire.encode_request("m", (1,), 3)
    assert routing.encode_call("m", (1,), 3) == wire.encode_request("m", (1,), 3)
    assert routing.encode_call("m", None, 3) == wire.encode_request("m", None, 3)
    assert routing.encode_call("m", {1: "a"}, 3) == wire.encode_request("m", {1: "a"}, 3)
    assert routing.encode_call("m", {"a": 1}) == wire.encode_request("m", {"a": 1})
    assert wire.decode(routing.encode_call("m", None)).notification
    assert wire.decode(routing.encode_cancel(7)).params == {"id": 7}
