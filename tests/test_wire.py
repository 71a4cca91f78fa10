"""rpcd.wire: frame bodies in, values out; values in, bodies out; checked against the spec."""

from __future__ import annotations

import json
import sys

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpcd import wire
from rpcd.wire import Batch, Request, Response, RPCError
from tests import jsonrpc_spec

# -- decode: requests and notifications -------------------------------------------------------


def test_request_positional_params():
    message = wire.decode(b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 7}')
    assert message == Request("add", (1, 2), 7, False, False)


def test_request_named_params_and_string_id():
    message = wire.decode(b'{"jsonrpc":"2.0","method":"m","params":{"a":[1]},"id":"x"}')
    assert message == Request("m", {"a": [1]}, "x")


def test_the_usual_request_decodes_alike_whatever_its_member_order_or_extra_members():
    # Four members (the usual call) take a shorter path than three or five: same values.
    expected = Request("add", (1, 2), 7, False, False)
    for body in (
        b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":7}',
        b'{"id":7,"params":[1,2],"method":"add","jsonrpc":"2.0"}',
        b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":7,"extra":null}',
    ):
        message = wire.decode(body)
        assert message == expected and repr(message) == repr(expected)
    # Four members, one of them not a request's: a notification, as with any other count.
    message = wire.decode(b'{"jsonrpc":"2.0","method":"log","params":["x"],"extra":1}')
    assert message == Request("log", ("x",), None, True, False)
    with pytest.raises(RPCError) as caught:
        wire.decode(b'{"jsonrpc":"2.0","method":"add","params":[1],"id":true}')
    assert caught.value.code == wire.INVALID_REQUEST


def test_request_without_params_has_empty_tuple():
    assert wire.decode(b'{"jsonrpc":"2.0","method":"ping","id":1}').params == ()


def test_null_id_is_a_call_not_a_notification():
    message = wire.decode(b'{"jsonrpc":"2.0","method":"ping","id":null}')
    assert message.id is None and not message.notification


def test_numeric_ids_are_kept_as_sent():
    # The spec allows any Number as an id (fractions are discouraged, not forbidden).
    assert wire.decode(b'{"jsonrpc":"2.0","method":"m","id":-5}').id == -5
    assert wire.decode(b'{"jsonrpc":"2.0","method":"m","id":2.5}').id == 2.5


def test_notification_has_no_id():
    message = wire.decode(b'{"jsonrpc":"2.0","method":"log","params":["x"]}')
    assert message == Request("log", ("x",), None, True, False)


def test_integers_beyond_64_bits_are_read_as_floats():
    # Documented in the README: JSON leaves number range to implementations.
    message = wire.decode(b'{"jsonrpc":"2.0","method":"m","params":[18446744073709551616],"id":1}')
    assert message.params == (float(2**64),)


# -- decode: the legacy envelope --------------------------------------------------------------


def test_legacy_value_is_the_single_positional_argument():
    assert wire.decode(b'{"in": "echo", "params": [1, 2]}') == Request(
        "echo", ([1, 2],), None, False, True
    )
    assert wire.decode(b'{"in": "echo", "params": null}').params == (None,)


def test_legacy_without_params():
    assert wire.decode(b'{"in": "ping"}') == Request("ping", (), None, False, True)


def test_legacy_method_must_be_a_string():
    with pytest.raises(RPCError) as raised:
        wire.decode(b'{"in": 5}')
    assert raised.value.code == wire.INVALID_REQUEST and raised.value.legacy


def test_jsonrpc_member_wins_over_in():
    message = wire.decode(b'{"jsonrpc":"2.0","method":"m","id":1,"in":"x"}')
    assert not message.legacy and message.method == "m"


# -- decode: batches --------------------------------------------------------------------------


def test_batch_keeps_order_and_invalid_entries_keep_their_ids():
    body = json.dumps(
        [
            {"jsonrpc": "2.0", "method": "a", "id": 1},
            {"jsonrpc": "1.0", "method": "b", "id": 2},
            {"jsonrpc": "2.0", "method": "c"},
            5,
            {"jsonrpc": "2.0", "method": 3, "id": "three"},
            {"in": "ping"},
        ]
    ).encode()
    batch = wire.decode(body)
    assert isinstance(batch, Batch)
    first, second, third, fourth, fifth, sixth = batch.items
    assert first == Request("a", (), 1)
    assert isinstance(second, RPCError) and second.code == wire.INVALID_REQUEST
    assert second.request_id == 2
    assert third == Request("c", (), None, True)
    assert isinstance(fourth, RPCError) and fourth.request_id is None
    assert isinstance(fifth, RPCError) and fifth.request_id == "three"
    assert isinstance(sixth, RPCError) and sixth.code == wire.INVALID_REQUEST


def test_batch_of_notifications():
    body = b'[{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","method":"b","params":[1]}]'
    batch = wire.decode(body)
    assert all(item.notification for item in batch.items)


def test_jsonrpc_entry_with_an_in_member_is_still_a_request_in_a_batch():
    batch = wire.decode(b'[{"jsonrpc":"2.0","method":"m","id":1,"in":"x"}]')
    assert batch.items == (Request("m", (), 1),)


def test_empty_batch_is_one_invalid_request():
    with pytest.raises(RPCError) as raised:
        wire.decode(b"[]")
    assert raised.value.code == wire.INVALID_REQUEST and raised.value.request_id is None


def test_batch_limit():
    body = json.dumps([{"jsonrpc": "2.0", "method": "m", "id": i} for i in range(4)]).encode()
    assert len(wire.decode(body, max_batch=4).items) == 4
    with pytest.raises(RPCError) as raised:
        wire.decode(body, max_batch=3)
    assert raised.value.code == wire.INVALID_REQUEST and "max_batch 3" in raised.value.message


# -- decode: every error path -----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b'{"a": 1}{"b": 2}',
        b"\xff\xfe{}",  # not UTF-8
        b'"\\ud800"',  # an unpaired surrogate
        b"NaN",
        b'{"jsonrpc":"2.0","method":"m","params":[Infinity],"id":1}',
        b"1e400",
        b"[" * 2000 + b"]" * 2000,
        b"\xef\xbb\xbf{}",  # a byte order mark
    ],
)
def test_parse_errors(body):
    with pytest.raises(RPCError) as raised:
        wire.decode(body)
    assert raised.value.code == wire.PARSE_ERROR
    assert raised.value.request_id is None and not raised.value.legacy


@pytest.mark.parametrize(
    ("body", "request_id"),
    [
        (b"5", None),
        (b'"a string"', None),
        (b"null", None),
        (b'{"method":"m","id":1}', 1),  # no "jsonrpc"
        (b'{"jsonrpc":"1.0","method":"m","id":1}', 1),
        (b'{"jsonrpc":2.0,"method":"m","id":"a"}', "a"),
        (b'{"jsonrpc":"2.0","id":1}', 1),  # no "method"
        (b'{"jsonrpc":"2.0","method":null,"id":1}', 1),
        (b'{"jsonrpc":"2.0","method":"m","params":5,"id":1}', 1),
        (b'{"jsonrpc":"2.0","method":"m","params":"ab","id":1}', 1),
        (b'{"jsonrpc":"2.0","method":"m","params":null,"id":1}', 1),
        (b'{"jsonrpc":"2.0","method":"m","id":true}', None),
        (b'{"jsonrpc":"2.0","method":"m","id":[1]}', None),
        (b'{"jsonrpc":"2.0","method":"m","id":{"a":1}}', None),
        (b'{"jsonrpc":"2.0","method":"m","params":5}', None),  # an invalid notification
    ],
)
def test_invalid_requests(body, request_id):
    with pytest.raises(RPCError) as raised:
        wire.decode(body)
    assert raised.value.code == wire.INVALID_REQUEST
    assert raised.value.request_id == request_id


# -- encode -----------------------------------------------------------------------------------


def _call(method="m", rid=1, legacy=False):
    return Request(method, (), rid, False, legacy)


def test_encode_result():
    body = wire.encode(Response(_call(rid="a"), {"x": [1, 2.5, None]}))
    assert json.loads(body) == {"jsonrpc": "2.0", "result": {"x": [1, 2.5, None]}, "id": "a"}


def test_encode_null_result_keeps_the_member():
    assert json.loads(wire.encode(Response(_call(), None))) == {
        "jsonrpc": "2.0",
        "result": None,
        "id": 1,
    }


def test_encode_error_with_and_without_data():
    error = RPCError(wire.INTERNAL_ERROR, "internal error: m raised KeyError", {"type": "KeyError"})
    reply = json.loads(wire.encode(Response(_call(rid=3), error=error)))
    assert reply == {
        "jsonrpc": "2.0",
        "error": {
            "code": -32603,
            "message": "internal error: m raised KeyError",
            "data": {"type": "KeyError"},
        },
        "id": 3,
    }
    reply = json.loads(wire.encode(Response(_call(), error=RPCError(-32601, "method not found"))))
    assert reply["error"] == {"code": -32601, "message": "method not found"}


def test_legacy_replies():
    assert json.loads(wire.encode(Response(_call("ping", None, True), "pong"))) == {
        "out": "pong",
        "result": "pong",
    }
    assert json.loads(wire.encode(Response(_call("echo", None, True), [1]))) == {
        "out": "echo",
        "result": [1],
    }
    error = RPCError(wire.METHOD_NOT_FOUND, "method not found: nosuch")
    assert json.loads(wire.encode(Response(_call("nosuch", None, True), error=error))) == {
        "out": "error",
        "result": {"code": -32601, "message": "method not found: nosuch"},
    }


ERROR_CODES = [
    wire.PARSE_ERROR,
    wire.INVALID_REQUEST,
    wire.METHOD_NOT_FOUND,
    wire.INVALID_PARAMS,
    wire.INTERNAL_ERROR,
    wire.SERVER_BUSY,
    wire.CALL_TIMEOUT,
    wire.TOO_MANY_CONNECTIONS,
    wire.NOT_AUTHENTICATED,
    wire.FRAME_TOO_LARGE,
    wire.SHUTTING_DOWN,
    wire.CANCELLED,
]


@pytest.mark.parametrize("code", ERROR_CODES)
def test_every_error_code_encodes_to_a_valid_error_response(code):
    error = RPCError(code, "the message", request_id=9)
    reply = json.loads(wire.encode_error(error))
    jsonrpc_spec.check_response(reply)
    assert reply["error"]["code"] == code and reply["id"] == 9
    legacy = json.loads(wire.encode_error(RPCError(code, "x", legacy=True)))
    assert legacy == {"out": "error", "result": {"code": code, "message": "x"}}


@pytest.mark.parametrize("result", [object(), {1, 2}, 2**70, {"k": b"\xff"}, {(1, 2): 3}])
@pytest.mark.parametrize("legacy", [False, True])
def test_unencodable_result_is_an_internal_error(result, legacy):
    reply = json.loads(wire.encode(Response(_call("getit", 4, legacy), result)))
    error = reply["result"] if legacy else reply["error"]
    assert error["code"] == wire.INTERNAL_ERROR
    assert "getit" in error["message"] and error["data"] == {"type": "TypeError"}
    if not legacy:
        jsonrpc_spec.check_response(reply)
        assert reply["id"] == 4


def test_a_result_with_integer_keys_is_written_with_string_keys():
    # JSON object keys are strings: a dict keyed by numbers goes out as orjson writes it with
    # OPT_NON_STR_KEYS, inside a result at any depth, as when it is the result itself.
    for legacy in (False, True):
        reply = json.loads(wire.encode(Response(_call("m", 1, legacy), {"a": {1: "x", 2.5: 3}})))
        assert reply["result"] == {"a": {"1": "x", "2.5": 3}}
    assert json.loads(wire.encode(Response(_call(rid=2), {7: None})))["result"] == {"7": None}


def test_unencodable_error_data_is_an_internal_error():
    error = RPCError(wire.INVALID_PARAMS, "bad", data={"what": object()})
    reply = json.loads(wire.encode(Response(_call(), error=error)))
    assert reply["error"]["code"] == wire.INTERNAL_ERROR


def test_encode_batch_and_its_unencodable_member():
    responses = [
        Response(_call(rid=1), 1),
        Response(_call(rid=2), object()),
        Response(_call(rid=3), 3),
    ]
    replies = json.loads(wire.encode_batch(responses))
    assert [r["id"] for r in replies] == [1, 2, 3]
    assert replies[0]["result"] == 1 and replies[2]["result"] == 3
    assert replies[1]["error"]["code"] == wire.INTERNAL_ERROR
    for reply in replies:
        jsonrpc_spec.check_response(reply)


def test_encode_stream_item():
    assert json.loads(wire.encode_stream_item("c1", {"n": 1})) == {
        "jsonrpc": "2.0",
        "method": "rpc.stream",
        "params": {"id": "c1", "item": {"n": 1}},
    }


def test_encode_request_and_notification():
    assert json.loads(wire.encode_request("add", (1, 2), id=5)) == {
        "jsonrpc": "2.0",
        "method": "add",
        "params": [1, 2],
        "id": 5,
    }
    assert json.loads(wire.encode_request("log", {"a": 1})) == {
        "jsonrpc": "2.0",
        "method": "log",
        "params": {"a": 1},
    }
    assert json.loads(wire.encode_request("ping", id=None)) == {
        "jsonrpc": "2.0",
        "method": "ping",
        "id": None,
    }


# -- properties -------------------------------------------------------------------------------

# Hypothesis's per-example deadline measures the machine's load, which is not under test here.
no_deadline = settings(deadline=None)

# orjson's integer range: JSON leaves number range to implementations (RFC 8259 section 6).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=16,
)
ids = st.none() | st.text() | st.integers(-(2**63), 2**64 - 1)
params = st.lists(json_values, max_size=4).map(tuple) | st.dictionaries(
    st.text(), json_values, max_size=4
)
methods = st.text(min_size=1, max_size=32)  # within MAX_METHOD_BYTES (4 bytes a character at most)


@no_deadline
@given(methods, params, ids)
def test_request_round_trip(method, params, rid):
    assert wire.decode(wire.encode_request(method, params, id=rid)) == Request(method, params, rid)


@no_deadline
@given(methods, params)
def test_notification_round_trip(method, params):
    assert wire.decode(wire.encode_request(method, params)) == Request(method, params, None, True)


@no_deadline
@given(json_values, ids)
def test_response_round_trip(result, rid):
    reply = json.loads(wire.encode(Response(_call(rid=rid), result)))
    jsonrpc_spec.check_response(reply)
    assert reply == {"jsonrpc": "2.0", "result": result, "id": rid}


@no_deadline
@given(json_values)
def test_legacy_round_trip(value):
    request = wire.decode(json.dumps({"in": "echo", "params": value}).encode())
    assert request.params == (value,)
    assert json.loads(wire.encode(Response(request, value))) == {"out": "echo", "result": value}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_decode_raises_only_rpc_errors(body):
    try:
        wire.decode(body)
    except RPCError as error:
        assert error.code in (wire.PARSE_ERROR, wire.INVALID_REQUEST)


# Request-shaped objects with every member sometimes missing or of the wrong type.
request_objects = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2.0]) | json_scalars,
        "method": methods | json_scalars,
        "params": params.map(lambda p: list(p) if isinstance(p, tuple) else p) | json_scalars,
        "id": ids | st.floats(allow_nan=False, allow_infinity=False) | json_values,
        "in": methods | json_scalars,
    },
)
entries = request_objects | json_values
bodies = (entries | st.lists(entries, min_size=0, max_size=5)).map(
    lambda v: json.dumps(v).encode()
) | st.binary(max_size=32)


def _server_replies(body: bytes) -> list[bytes]:
    """What a server made only of rpcd.wire sends back, each call's result being its params."""
    try:
        message = wire.decode(body)
    except RPCError as error:
        return [wire.encode_error(error)]
    if isinstance(message, Request):
        return [] if message.notification else [wire.encode(Response(message, message.params))]
    responses = []
    for item in message.items:
        if isinstance(item, RPCError):
            responses.append(Response(Request("", (), item.request_id), error=item))
        elif not item.notification:
            responses.append(Response(item, item.params))
    return [wire.encode_batch(responses)] if responses else []


@settings(max_examples=200, deadline=None)
@given(bodies)
def test_replies_follow_the_spec(body):
    jsonrpc_spec.check_exchange(body, _server_replies(body))


@no_deadline
@given(request_objects)
def test_decode_agrees_with_the_spec_on_each_request(entry):
    kind = jsonrpc_spec.classify(entry)
    try:
        request = wire.decode(json.dumps(entry).encode())
    except RPCError as error:
        assert error.code == wire.INVALID_REQUEST
        name = entry.get("in" if kind[0] == "legacy" else "method")
        if isinstance(name, str) and "max_method_bytes" in error.message:
            # A name over the bound (json_scalars holds long text): refused, whatever the spec.
            assert len(name.encode("utf-8", "surrogatepass")) > wire.MAX_METHOD_BYTES
            assert error.legacy == (kind[0] == "legacy")
        elif kind[0] == "legacy":
            assert error.legacy and not isinstance(kind[1], str)
        else:
            assert kind[0] == "invalid", (kind, error)
            assert error.request_id in (None, kind[1])
        return
    params = request.params if isinstance(request.params, dict) else list(request.params)
    if kind[0] == "call":
        assert (request.id, request.method, params) == kind[1:] and not request.notification
    elif kind[0] == "notification":
        assert (request.method, params) == kind[1:] and request.notification
    else:
        assert kind[0] == "legacy" and request.legacy
        assert (request.method, params) == kind[1:]


# -- framing: the incremental frame decoder ---------------------------------------------------

_bodies = st.lists(st.binary(max_size=300), max_size=12)
_byteorders = st.sampled_from(["big", "little"])


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _drain(decoder: wire.FrameDecoder) -> list[bytes]:
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


@given(_bodies, st.lists(st.integers(min_value=0, max_value=4000), max_size=30), _byteorders)
@settings(max_examples=300, deadline=None)
def test_any_split_of_any_frames_decodes_to_the_same_bodies(bodies, cuts, byteorder):
    stream = b"".join(wire.encode_frame(body, byteorder) for body in bodies)
    decoder = wire.FrameDecoder(1024, byteorder)
    frames = []
    for chunk in _cut(stream, cuts):
        decoder.receive(chunk)
        frames += _drain(decoder)
    assert frames == bodies
    assert decoder.buffered() == 0


@given(_bodies, st.lists(st.integers(min_value=0, max_value=4000), max_size=30), _byteorders)
@settings(max_examples=100, deadline=None)
def test_frames_taken_late_come_out_the_same(bodies, cuts, byteorder):
    # All chunks received before any frame is taken (a paused connection catching up).
    stream = b"".join(wire.encode_frame(body, byteorder) for body in bodies)
    decoder = wire.FrameDecoder(1024, byteorder)
    for chunk in _cut(stream, cuts):
        decoder.receive(chunk)
    assert decoder.buffered() == len(stream)
    assert _drain(decoder) == bodies


def _calls(n: int) -> list[bytes]:
    return [b'{"jsonrpc":"2.0","method":"m","params":[],"id":%d}' % i for i in range(n)]


@given(st.integers(min_value=0, max_value=8), st.integers(min_value=0, max_value=8), _byteorders)
@settings(max_examples=100, deadline=None)
def test_a_messages_loop_stopped_early_leaves_the_rest_buffered(count, stop, byteorder):
    bodies = _calls(count)
    decoder = wire.FrameDecoder(1024, byteorder)
    decoder.receive(b"".join(wire.encode_frame(body, byteorder) for body in bodies))
    taken = []
    if stop:
        for message in decoder.messages():  # each message it gives is taken
            taken.append(message)
            if len(taken) == stop:
                break
    assert taken == [wire.decode(body) for body in bodies[:stop]]
    assert _drain(decoder) == bodies[len(taken) :]


def test_a_messages_loop_follows_the_decoder_read_or_cleared_meanwhile():
    a, b, c, d, e, f = _calls(6)
    decoder = wire.FrameDecoder(100)
    decoder.receive(b"".join(wire.encode_frame(body) for body in (a, b, c, d)))
    loop = decoder.messages()
    assert next(loop) == wire.decode(a)
    assert decoder.next_frame() == b  # taken outside the loop: the loop does not repeat it
    assert list(loop) == [wire.decode(c), wire.decode(d)]
    decoder.receive(wire.encode_frame(e) + wire.encode_frame(f))
    loop = decoder.messages()
    assert next(loop) == wire.decode(e)
    decoder.clear()  # dropped (a frame too large): the loop gives nothing more
    assert list(loop) == []


def test_a_messages_loop_follows_a_new_buffer_that_ends_at_the_same_offset():
    # Read or refilled meanwhile so that the decoder's offset is the number it was: the loop
    # must still see that its buffer is another one (it would repeat and lose frames).
    frames = [wire.encode_frame(body) for body in _calls(8)]
    decoder = wire.FrameDecoder(100)
    decoder.receive(frames[1] + frames[2] + frames[3] + frames[4][:5])
    loop = decoder.messages()
    assert next(loop) == wire.decode(_calls(8)[1])
    decoder.receive(frames[4][5:] + frames[5] + frames[6] + frames[7])
    assert [decoder.next_frame() for _ in range(3)] == list(_calls(8)[2:5])  # joins anew
    assert list(loop) == [wire.decode(body) for body in _calls(8)[5:]]

    decoder = wire.FrameDecoder(100)
    decoder.receive(frames[1] + frames[2] + frames[3])
    loop = decoder.messages()
    next(loop)
    decoder.clear()
    decoder.receive(frames[6] + frames[7])
    assert decoder.next_frame() == _calls(8)[6]
    assert list(loop) == [wire.decode(_calls(8)[7])]


def _decoded(body: bytes, max_batch: int = 100, max_method_bytes: int = 128) -> object:
    try:
        return wire.decode(body, max_batch, max_method_bytes)
    except RPCError as error:
        return error


def _same(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, RPCError):
        fields = ("code", "message", "data", "request_id", "legacy")
        return all(getattr(a, name) == getattr(b, name) for name in fields)
    if isinstance(a, Batch):
        return len(a.items) == len(b.items) and all(map(_same, a.items, b.items))
    return a == b


_usual = st.builds(
    lambda method, params, rid: json.dumps(
        {"jsonrpc": "2.0", "method": method, "params": params, "id": rid}
    ).encode(),
    methods,
    params.map(lambda p: list(p) if isinstance(p, tuple) else p),
    ids,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(bodies | _usual, max_size=8),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
    st.sampled_from([(100, 128), (2, 8)]),
)
def test_the_messages_loop_decodes_each_frame_as_decode_does(frames, cuts, limits):
    # Its in-line fast path is decode's over again: every body, usual or odd, gets the same
    # answer (the same Request, or the same error) and none is raised.
    stream = b"".join(wire.encode_frame(body) for body in frames)
    decoder = wire.FrameDecoder(1 << 20)
    got = []
    for chunk in _cut(stream, cuts):
        decoder.receive(chunk)
        got += decoder.messages(*limits)
    want = [_decoded(body, *limits) for body in frames]
    assert len(got) == len(want)
    assert all(_same(a, b) for a, b in zip(got, want, strict=True)), (got, want)


def test_the_messages_loop_gives_errors_and_goes_on():
    decoder = wire.FrameDecoder(100)
    usual = b'{"jsonrpc":"2.0","method":"echo","params":[1],"id":7}'
    decoder.receive(b"".join(wire.encode_frame(b) for b in (b"{", usual, b"[]", usual)))
    got = list(decoder.messages())
    assert [type(m) for m in got] == [RPCError, Request, RPCError, Request]
    assert got[0].code == wire.PARSE_ERROR and got[2].code == wire.INVALID_REQUEST
    assert got[1] == Request("echo", (1,), 7) and not got[1].notification
    decoder.receive(wire.encode_frame(usual) + b"\x00\x00\x01\x00")  # 256 > 100
    loop = decoder.messages()
    assert next(loop) == Request("echo", (1,), 7)
    with pytest.raises(wire.FrameTooLarge):
        next(loop)


def test_encode_frame_prefixes_the_length_in_either_byte_order():
    assert wire.encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert wire.encode_frame(b"abc", "little") == b"\x03\x00\x00\x00abc"
    with pytest.raises(ValueError):
        wire.encode_frame(b"", "middle")
    with pytest.raises(ValueError):
        wire.FrameDecoder(10, "native")


def test_an_empty_body_is_a_frame():
    decoder = wire.FrameDecoder(10)
    decoder.receive(wire.encode_frame(b"") * 2)
    assert _drain(decoder) == [b"", b""]


def test_a_prefix_over_the_limit_raises_at_once_and_drops_the_buffer():
    decoder = wire.FrameDecoder(10)
    decoder.receive(wire.encode_frame(b"ok") + b"\x00\x00\x00\x0b")  # 11 > 10, body never sent
    assert decoder.next_frame() == b"ok"
    with pytest.raises(wire.FrameTooLarge) as raised:
        decoder.next_frame()
    error = raised.value
    assert isinstance(error, RPCError) and error.code == wire.FRAME_TOO_LARGE
    assert error.length == 11 and error.limit == 10
    assert error.message == "frame too large: 11 bytes exceeds max_frame_bytes 10"
    assert decoder.buffered() == 0 and decoder.next_frame() is None


def test_a_frame_exactly_at_the_limit_is_accepted():
    decoder = wire.FrameDecoder(10)
    decoder.receive(wire.encode_frame(b"x" * 10))
    assert decoder.next_frame() == b"x" * 10


def test_the_limit_is_writable_and_applies_to_the_next_prefix():
    decoder = wire.FrameDecoder(4096)
    decoder.receive(wire.encode_frame(b"a" * 100) + wire.encode_frame(b"b" * 100))
    decoder.max_frame_bytes = 100
    assert decoder.next_frame() == b"a" * 100
    decoder.max_frame_bytes = 99
    with pytest.raises(wire.FrameTooLarge):
        decoder.next_frame()


def test_a_large_frame_in_many_pieces_is_joined_once():
    body = bytes(range(256)) * 1024
    frame = wire.encode_frame(body)
    decoder = wire.FrameDecoder(len(body))
    *pieces, last = [frame[i : i + 1000] for i in range(0, len(frame), 1000)]
    for piece in pieces:
        decoder.receive(piece)
        assert decoder.next_frame() is None
        assert len(decoder._buffer) <= 1000  # nothing joined while the frame is incomplete
    decoder.receive(last)
    assert decoder.next_frame() == body


def test_a_decoder_with_every_frame_taken_keeps_no_chunk():
    # An idle connection's decoder holds none of the bytes it last received.
    decoder = wire.FrameDecoder(100)
    chunk = wire.encode_frame(b"first") + wire.encode_frame(b"second")
    before = sys.getrefcount(chunk)
    decoder.receive(chunk)
    assert _drain(decoder) == [b"first", b"second"]
    assert sys.getrefcount(chunk) == before and decoder.buffered() == 0
    decoder.receive(wire.encode_frame(b"third")[:3])  # a partial prefix is kept, of course
    decoder.receive(wire.encode_frame(b"third")[3:])
    assert _drain(decoder) == [b"third"]


def test_a_messages_loop_that_takes_every_frame_keeps_no_chunk():
    decoder = wire.FrameDecoder(100)
    chunk = b"".join(wire.encode_frame(body) for body in _calls(3))
    before = sys.getrefcount(chunk)
    decoder.receive(chunk)
    assert list(decoder.messages()) == [wire.decode(body) for body in _calls(3)]
    assert sys.getrefcount(chunk) == before and decoder.buffered() == 0
    # A partial frame left at the end is kept, whole or joined from pieces.
    first, second = wire.encode_frame(_calls(2)[0]), wire.encode_frame(_calls(2)[1])
    decoder.receive(first + second[:2])
    assert list(decoder.messages()) == [wire.decode(_calls(2)[0])]
    decoder.receive(second[2:7])
    assert list(decoder.messages()) == [] and decoder.buffered() == 7
    decoder.receive(second[7:])
    assert list(decoder.messages()) == [wire.decode(_calls(2)[1])]
    assert decoder.buffered() == 0


def test_take_buffered_hands_on_what_follows():
    decoder = wire.FrameDecoder(100)
    decoder.receive(wire.encode_frame(b"first") + b"\x00\x00")
    decoder.receive(b"\x00\x01z")
    assert decoder.next_frame() == b"first"
    assert decoder.take_buffered() == b"\x00\x00\x00\x01z"
    assert decoder.buffered() == 0


@pytest.mark.parametrize(
    ("prefix", "byteorder", "cause"),
    [
        (b"GET ", "big", "looks like an HTTP request"),
        (b"HTTP", "big", "looks like an HTTP response"),
        (b"\x16\x03\x01\x02", "big", "looks like TLS"),
        ((300).to_bytes(4, "little"), "big", "looks little-endian"),
        ((300).to_bytes(4, "big"), "little", "looks big-endian"),
    ],
)
def test_an_oversized_prefix_names_its_likely_cause(prefix, byteorder, cause):
    decoder = wire.FrameDecoder(4 * 1024 * 1024, byteorder)
    decoder.receive(prefix + b"rest")
    with pytest.raises(wire.FrameTooLarge) as raised:
        decoder.next_frame()
    assert cause in raised.value.likely_cause(byteorder)


def test_a_real_oversized_frame_has_no_invented_cause():
    limit = 4 * 1024 * 1024
    assert wire.prefix_cause((limit + 1).to_bytes(4, "big"), limit) is None
    assert wire.prefix_cause((17 * 1024 * 1024 + 5).to_bytes(4, "big"), limit) is None


# -- issue 10: hostile input and unencodable results -------------------------------------------


@pytest.mark.parametrize("literal", [b"123456789012345678901234567890", b"18446744073709551616",
                                     b"-9223372036854775809"])  # fmt: skip
def test_an_id_beyond_64_bits_is_refused_saying_which_ids_rpcd_accepts(literal):
    # Point 12: orjson reads such an integer as a float; answering it would change the id.
    body = b'{"jsonrpc":"2.0","method":"m","id":' + literal + b"}"
    with pytest.raises(RPCError) as raised:
        wire.decode(body)
    error = raised.value
    assert error.code == wire.INVALID_REQUEST and error.request_id is None
    assert "-9223372036854775808 to 18446744073709551615" in error.message
    assert wire.decode(body.replace(literal, b"18446744073709551615")).id == 2**64 - 1
    assert wire.decode(body.replace(literal, b"-9223372036854775808")).id == -(2**63)
    assert wire.decode(body.replace(literal, b"1.5e3")).id == 1500.0  # a float id stays one


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"),
                                   [1, {"a": float("nan")}], {"x": (float("inf"),)}])  # fmt: skip
def test_a_nan_or_infinite_result_is_an_internal_error(value):
    # Point 4: orjson writes NaN and Infinity as null, silently.
    reply = orjson.loads(wire.encode(Response(Request("m", (), 1), value)))
    assert reply["id"] == 1 and reply["error"]["code"] == wire.INTERNAL_ERROR
    assert "JSON has no NaN or Infinity" in reply["error"]["message"]
    assert reply["error"]["data"] == {"type": "ValueError"}


def test_finite_results_with_nulls_are_untouched():
    result = [None, 1.5, {"a": None}]
    reply = orjson.loads(wire.encode(Response(Request("m", (), 1), result)))
    assert reply["result"] == result


def test_a_result_over_the_reply_limit_is_an_internal_error():
    # Point 5: a reply the peer would refuse as too large is never sent.
    request = Request("big", (), 1)
    body = wire.encode(Response(request, "x" * 1000), max_bytes=500)
    reply = orjson.loads(body)
    assert reply["error"]["code"] == wire.INTERNAL_ERROR and len(body) <= 500
    assert (
        "result of big is 1036 bytes, over the reply limit of 500 bytes"
        in reply["error"]["message"]
    )
    assert wire.encode(Response(request, "x" * 400), max_bytes=500) == wire.encode(
        Response(request, "x" * 400)
    )
    legacy = orjson.loads(wire.encode(Response(Request("big", (), None, False, True), "x" * 1000),
                                      max_bytes=500))  # fmt: skip
    assert legacy["out"] == "error" and legacy["result"]["code"] == wire.INTERNAL_ERROR


def test_a_batch_over_the_reply_limit_replaces_its_largest_results():
    responses = [Response(Request("m", (), i), "x" * size) for i, size in enumerate([10, 600, 200])]
    body = wire.encode_batch(responses, max_bytes=500)
    assert len(body) <= 500
    small, big, middle = orjson.loads(body)
    assert small["result"] == "x" * 10 and middle["result"] == "x" * 200
    assert big["id"] == 1 and big["error"]["code"] == wire.INTERNAL_ERROR


def test_a_method_name_over_the_bound_is_refused_with_the_name_cut_short():
    # Point 10: a 3 MiB name must not come back whole (nor reach a log line whole).
    name = "n" * (3 * 1024 * 1024)
    body = orjson.dumps({"jsonrpc": "2.0", "method": name, "id": 1})
    with pytest.raises(RPCError) as raised:
        wire.decode(body, max_method_bytes=128)
    error = raised.value
    assert error.code == wire.INVALID_REQUEST and error.request_id == 1
    assert "n" * 128 + "...[3145728 bytes, cut]" in error.message and len(error.message) < 300
    assert wire.decode(orjson.dumps({"in": "é" * 64}), max_method_bytes=128).method == "é" * 64
    with pytest.raises(RPCError) as raised:
        wire.decode(orjson.dumps({"in": "é" * 65}), max_method_bytes=128)
    assert raised.value.legacy


def test_cut_marks_what_it_cut_and_never_splits_a_character():
    assert wire.cut("short", 128) == "short"
    assert wire.cut("abcdef", 3) == "abc...[6 bytes, cut]"
    assert wire.cut("éé", 3) == "é...[4 bytes, cut]"


@pytest.mark.parametrize("char", ["\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85",
                                  "\u2028", "\u2029", "\x00", "\x1b"])  # fmt: skip
def test_log_text_escapes_every_line_break_and_control(char):
    # Point 11: tools that split with str.splitlines() must see one line.
    text = wire.log_text(f"evil{char}2026 info [x] forged")
    assert len(text.splitlines()) == 1 and text.isprintable()
    assert text.startswith("evil\\") and text.endswith("2026 info [x] forged")


def test_log_text_leaves_printable_text_alone_and_bounds_it():
    assert wire.log_text("math.add") == "math.add"
    assert wire.log_text("ünïcode ok") == "ünïcode ok"
    assert wire.log_text("a\nb") == "a\\nb"
    assert wire.log_text("x" * 1000, 10) == "xxxxxxxxxx...[1000 bytes, cut]"
