"""wire.decode on hostile input: only RPCError ever escapes, with the right JSON-RPC code."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcd import wire
from rpcd.wire import INVALID_REQUEST, PARSE_ERROR, Batch, Request, RPCError

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# Objects that look like requests, every field possibly of the wrong type.
request_like = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2.0]) | json_values,
        "method": st.text(max_size=10) | json_values,
        "params": json_values,
        "id": json_values,
        "in": st.text(max_size=10) | json_values,
    },
)
documents = request_like | st.lists(request_like | json_values, max_size=5) | json_values


def _decode(body: bytes, max_batch: int = 100):
    try:
        return wire.decode(body, max_batch)
    except RPCError as error:
        assert isinstance(error.code, int) and error.message
        wire.encode_error(error)  # and it can always be answered
        return error


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_rpc_error(body):
    _decode(body)


@given(documents)
def test_arbitrary_json_documents_raise_only_rpc_error(document):
    result = _decode(json.dumps(document).encode())
    if isinstance(result, Request):
        assert isinstance(result.method, str)
        assert isinstance(result.params, (tuple, dict))
    elif isinstance(result, Batch):
        assert all(isinstance(item, (Request, RPCError)) for item in result.items)


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=1, max_size=64).map(lambda b: b"{" + b))
def test_short_fuzz_run_of_object_prefixed_bytes(body):
    # A bounded fuzz run (about a second): mutations near valid object syntax.
    _decode(body)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[" * 100_000, PARSE_ERROR),  # nesting is bounded while parsing, no RecursionError
        (b'{"a":' * 50_000, PARSE_ERROR),
        (b"9" * 5000, PARSE_ERROR),  # a 5,000-digit integer
        (b'{"jsonrpc":"2.0","method":"add","params":[' + b"9" * 5000 + b'],"id":1}', PARSE_ERROR),
        (b'{"jsonrpc":"2.0","method":"\xff\xfe","id":1}', PARSE_ERROR),  # invalid UTF-8
        (b'{"jsonrpc":"2.0","method":"a","params":[NaN],"id":1}', PARSE_ERROR),
        (b'{"jsonrpc":"2.0","method":"a","params":[Infinity],"id":1}', PARSE_ERROR),
        (b'{"jsonrpc":"2.0","method":"a","params":[-Infinity],"id":1}', PARSE_ERROR),
        (b"", PARSE_ERROR),  # an empty frame
        (b"   ", PARSE_ERROR),
        (b"42", INVALID_REQUEST),  # JSON scalars
        (b'"ping"', INVALID_REQUEST),
        (b"null", INVALID_REQUEST),
        (b"true", INVALID_REQUEST),
        (b"[]", INVALID_REQUEST),  # an empty batch
    ],
)
def test_bad_frames_get_the_right_code(body, code):
    with pytest.raises(RPCError) as raised:
        wire.decode(body)
    assert raised.value.code == code


@pytest.mark.parametrize(
    ("message", "request_id"),
    [
        ({"jsonrpc": "2.0", "method": "a", "id": [1]}, None),
        ({"jsonrpc": "2.0", "method": "a", "id": {"x": 1}}, None),
        ({"jsonrpc": "2.0", "method": "a", "id": True}, None),
        ({"jsonrpc": 2.0, "method": "a", "id": 7}, 7),
        ({"jsonrpc": "1.0", "method": "a", "id": 7}, 7),
        ({"method": "a", "id": 7}, 7),
        ({"jsonrpc": "2.0", "method": 5, "id": 7}, 7),
        ({"jsonrpc": "2.0", "method": None, "id": 7}, 7),
        ({"jsonrpc": "2.0", "method": ["a"], "id": 7}, 7),
        ({"jsonrpc": "2.0", "id": 7}, 7),
        ({"jsonrpc": "2.0", "method": "a", "params": 3, "id": 7}, 7),
        ({"jsonrpc": "2.0", "method": "a", "params": "x", "id": 7}, 7),
        ({"jsonrpc": "2.0", "method": "a", "params": None, "id": 7}, 7),
        ({"jsonrpc": "2.0", "method": "a", "params": True, "id": 7}, 7),
        ({"in": 5}, None),
        ({"in": None, "params": 1}, None),
        ({"in": ["ping"]}, None),
    ],
)
def test_wrong_types_in_every_field_are_invalid_requests(message, request_id):
    with pytest.raises(RPCError) as raised:
        wire.decode(json.dumps(message).encode())
    assert raised.value.code == INVALID_REQUEST
    assert raised.value.request_id == request_id


def test_batch_over_max_batch_is_refused_whole():
    batch = [{"jsonrpc": "2.0", "method": "ping", "id": i} for i in range(101)]
    with pytest.raises(RPCError) as raised:
        wire.decode(json.dumps(batch).encode(), max_batch=100)
    assert raised.value.code == INVALID_REQUEST and "max_batch" in raised.value.message
    assert len(wire.decode(json.dumps(batch[:100]).encode(), max_batch=100).items) == 100
