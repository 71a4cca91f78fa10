"""RPCProtocol and RPCFactory over StringTransport and Clock: framing, ordering, limits, timeouts.

Ordering and reply-shape tests run a real Dispatcher in gevent greenlets (methods block on
gevent Events, so the test decides which call finishes first); framing, limits and
backpressure tests use a recording dispatcher, which is the clearer unit.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import gevent
from gevent.event import Event
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from rpcd.dispatch import CANCELLED, Call, Dispatcher
from rpcd.methods import Registry
from rpcd.protocol import ConnectionLimits, RPCFactory
from rpcd.wire import Response
from tests import jsonrpc_spec

# -- helpers ----------------------------------------------------------------------------------


class RecordingDispatcher:
    """Takes every call and holds it until the test finishes it."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.cancelled: list[Call] = []

    def submit(self, request: Any, sink: Any) -> Call:
        call = Call(request, None, sink)
        self.calls.append(call)
        return call

    def cancel(self, call: Call, response: Response | None = None) -> bool:
        self.cancelled.append(call)
        if response is not None:
            call.sink.deliver(call, response)
        return True

    def finish(self, call: Call, result: Any = None) -> None:
        call.done = True
        call.sink.deliver(call, Response(call.request, result))

    def requests(self) -> list[tuple]:
        return [(c.request.method, c.request.params, c.request.id) for c in self.calls]


class Gates:
    """Named gevent Events a test method waits on."""

    def __init__(self) -> None:
        self.events: dict[str, Event] = {}
        self.finished: list[str] = []

    def __getitem__(self, name: str) -> Event:
        return self.events.setdefault(name, Event())

    def open(self, name: str) -> None:
        self[name].set()
        gevent.idle()


def real_dispatcher(gates: Gates, **kwargs: Any) -> Dispatcher:
    registry = Registry()

    def wait(name):
        gates[name].wait()
        gates.finished.append(name)
        return name

    def echo(*args):
        gates.finished.append("echo")
        return list(args)

    def count(n):
        yield from range(n)
        return "end"

    registry.add("wait", wait)
    registry.add("echo", echo)
    registry.add("count", count)
    return Dispatcher(registry, **kwargs)


def make_factory(dispatcher: Any = None, clock: Clock | None = None, **limits: Any) -> RPCFactory:
    return RPCFactory(
        dispatcher or RecordingDispatcher(), ConnectionLimits(**limits), clock or Clock()
    )


def connect(factory: RPCFactory, peer: Any = None):
    peer = peer or IPv4Address("TCP", "10.0.0.1", 40000)
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


def disconnect(protocol: Any) -> None:
    protocol.transport.connected = False
    protocol.connectionLost(Failure(ConnectionError("closed by the test")))


def frame(obj: Any, fmt: str = "!I") -> bytes:
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack(fmt, len(body)) + body


def replies(transport: StringTransport, fmt: str = "!I") -> list[Any]:
    """The frames written since the last look, decoded; the transport is cleared."""
    data, out = transport.value(), []
    transport.clear()
    while data:
        (n,) = struct.unpack(fmt, data[:4])
        assert len(data) >= 4 + n, "a partial frame was written"
        out.append(json.loads(data[4 : 4 + n]))
        data = data[4 + n :]
    return out


def call(method: str, *params: Any, id: Any = 1) -> dict:
    return {"jsonrpc": "2.0", "method": method, "params": list(params), "id": id}


# -- framing ----------------------------------------------------------------------------------

STREAM = b"".join(
    [
        frame(call("echo", 1, id=1)),
        frame({"in": "echo", "params": "legacy"}),
        frame([call("echo", 2, id=2), {"jsonrpc": "2.0", "method": "echo"}]),
        frame(call("echo", {"nested": [1, 2]}, id="three")),
        frame(b""),  # an empty body is a parse error, not a stall
        frame(call("echo", "last", id=4)),
    ]
)


def _calls_for(chunks: list[bytes]) -> tuple[list[tuple], list[Any]]:
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher))
    for chunk in chunks:
        protocol.dataReceived(chunk)
    return dispatcher.requests(), replies(transport)


def test_frames_split_at_every_byte_give_the_same_calls():
    whole = _calls_for([STREAM])
    assert [r[0] for r in whole[0]] == ["echo"] * 6
    assert [r["error"]["code"] for r in whole[1]] == [-32700]
    for cut in range(1, len(STREAM)):
        assert _calls_for([STREAM[:cut], STREAM[cut:]]) == whole, cut
    assert _calls_for([STREAM[i : i + 1] for i in range(len(STREAM))]) == whole


def test_byteorder_little():
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher, byteorder="little"))
    protocol.dataReceived(frame(call("echo", 1, id=9), "<I"))
    dispatcher.finish(dispatcher.calls[0], "little")
    assert replies(transport, "<I") == [{"jsonrpc": "2.0", "result": "little", "id": 9}]


# -- reply order and shape (real dispatcher under gevent) -------------------------------------


def test_jsonrpc_replies_come_as_calls_finish():
    gates = Gates()
    protocol, transport = connect(make_factory(real_dispatcher(gates)))
    protocol.dataReceived(frame(call("wait", "a", id=1)) + frame(call("wait", "b", id=2)))
    gevent.idle()
    assert replies(transport) == []
    gates.open("b")
    assert replies(transport) == [{"jsonrpc": "2.0", "result": "b", "id": 2}]
    gates.open("a")
    assert replies(transport) == [{"jsonrpc": "2.0", "result": "a", "id": 1}]


def test_legacy_replies_come_in_request_order():
    gates = Gates()
    protocol, transport = connect(make_factory(real_dispatcher(gates)))
    protocol.dataReceived(
        frame({"in": "wait", "params": "a"})
        + frame({"in": "echo", "params": "b"})
        + frame({"in": "nosuch"})
        + frame({"in": 5})
    )
    gevent.idle()
    assert gates.finished == ["echo"]
    assert replies(transport) == []  # the first call holds back the rest
    gates.open("a")
    assert replies(transport) == [
        {"out": "wait", "result": "a"},
        {"out": "echo", "result": ["b"]},
        {
            "out": "error",
            "result": {
                "code": -32601,
                "message": "method not found: nosuch",
                "data": {"method": "nosuch"},
            },
        },
        {
            "out": "error",
            "result": {"code": -32600, "message": 'invalid request: "in" must be a string'},
        },
    ]


def test_batch_is_answered_with_one_array():
    gates = Gates()
    protocol, transport = connect(make_factory(real_dispatcher(gates)))
    batch = [
        call("wait", "a", id=1),
        call("echo", 2, id=2),
        {"jsonrpc": "2.0", "method": "echo", "params": [3]},  # notification: no entry
        {"jsonrpc": "2.0", "method": 5, "id": 4},
        call("nosuch", id=5),
    ]
    protocol.dataReceived(frame(batch))
    gevent.idle()
    assert replies(transport) == []
    gates.open("a")
    [answer] = replies(transport)
    assert sorted(answer, key=lambda r: r["id"]) == [
        {"jsonrpc": "2.0", "result": "a", "id": 1},
        {"jsonrpc": "2.0", "result": [2], "id": 2},
        {
            "jsonrpc": "2.0",
            "error": {"code": -32600, "message": 'invalid request: "method" must be a string'},
            "id": 4,
        },
        {
            "jsonrpc": "2.0",
            "error": {
                "code": -32601,
                "message": "method not found: nosuch",
                "data": {"method": "nosuch"},
            },
            "id": 5,
        },
    ]
    jsonrpc_spec.check_exchange(json.dumps(batch).encode(), [json.dumps(answer).encode()])


def test_batch_of_notifications_gets_no_reply():
    gates = Gates()
    protocol, transport = connect(make_factory(real_dispatcher(gates)))
    protocol.dataReceived(frame([{"jsonrpc": "2.0", "method": "echo"}] * 3))
    gevent.idle()
    assert gates.finished == ["echo"] * 3
    assert transport.value() == b""


def test_notification_runs_and_gets_no_reply():
    gates = Gates()
    protocol, transport = connect(make_factory(real_dispatcher(gates)))
    protocol.dataReceived(frame({"jsonrpc": "2.0", "method": "echo", "params": [1]}))
    protocol.dataReceived(frame({"jsonrpc": "2.0", "method": "nosuch"}))
    gevent.idle()
    assert gates.finished == ["echo"]
    assert transport.value() == b""


def test_cancel_a_running_call():
    gates = Gates()
    protocol, transport = connect(make_factory(real_dispatcher(gates)))
    protocol.dataReceived(frame(call("wait", "a", id="slow")))
    gevent.idle()
    protocol.dataReceived(frame(call("rpc.cancel", "slow", id=2)))
    gevent.idle()
    cancel_reply, cancelled = replies(transport)
    assert cancel_reply == {"jsonrpc": "2.0", "result": True, "id": 2}
    assert cancelled["id"] == "slow" and cancelled["error"]["code"] == CANCELLED
    gates.open("a")
    assert gates.finished == [] and transport.value() == b""


def test_generator_streams_notifications_then_the_response():
    protocol, transport = connect(make_factory(real_dispatcher(Gates())))
    protocol.dataReceived(frame(call("count", 2, id="s")))
    gevent.idle()
    assert replies(transport) == [
        {"jsonrpc": "2.0", "method": "rpc.stream", "params": {"id": "s", "item": 0}},
        {"jsonrpc": "2.0", "method": "rpc.stream", "params": {"id": "s", "item": 1}},
        {"jsonrpc": "2.0", "result": "end", "id": "s"},
    ]


def test_streaming_needs_a_jsonrpc_call_with_an_id():
    protocol, transport = connect(make_factory(real_dispatcher(Gates())))
    protocol.dataReceived(frame({"in": "count", "params": 2}))
    protocol.dataReceived(frame({"jsonrpc": "2.0", "method": "count", "params": [2]}))
    gevent.idle()
    [legacy] = replies(transport)
    assert legacy["out"] == "error" and legacy["result"]["code"] == -32600


def test_disconnect_kills_the_calls_in_flight():
    gates = Gates()
    dispatcher = real_dispatcher(gates)
    protocol, transport = connect(make_factory(dispatcher))
    protocol.dataReceived(frame(call("wait", "a", id=1)) + frame(call("wait", "b", id=2)))
    gevent.idle()
    assert dispatcher.in_flight == 2
    disconnect(protocol)
    gevent.idle()
    gates.open("a")
    gates.open("b")
    assert dispatcher.in_flight == 0 and gates.finished == []
    assert transport.value() == b""


# Any body through the real protocol and dispatcher: the replies obey the spec.
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
_entries = (
    st.fixed_dictionaries(
        {},
        optional={
            "jsonrpc": st.sampled_from(["2.0", "1.0"]) | _values,
            "method": st.sampled_from(["echo", "nosuch", "rpc.cancel"]) | _values,
            "params": st.lists(_values, max_size=3)
            | st.dictionaries(st.text(max_size=3), _values)
            | _values,
            "id": st.integers(0, 3) | st.text(max_size=2) | _values,
        },
    )
    | _values
)
_bodies = (_entries | st.lists(_entries, max_size=4)).map(
    lambda v: json.dumps(v).encode()
) | st.binary(max_size=16)


@settings(max_examples=200, deadline=None)
@given(_bodies)
def test_every_reply_follows_the_spec(body):
    protocol, transport = connect(make_factory(real_dispatcher(Gates())))
    protocol.dataReceived(frame(body))
    gevent.idle()
    written = [json.dumps(r).encode() for r in replies(transport)]
    jsonrpc_spec.check_exchange(body, written)


# -- connection limits ------------------------------------------------------------------------


def test_connection_past_the_limit_gets_one_error_frame_and_is_closed():
    factory = make_factory(max_connections=2)
    first, _ = connect(factory)
    connect(factory)
    refused, transport = connect(factory)
    [error] = replies(transport)
    assert error["id"] is None and error["error"]["code"] == -32002
    assert "limit of 2" in error["error"]["message"]
    assert error["error"]["data"] == {"limit": "max_connections"}
    assert transport.disconnecting and transport.producerState == "paused"
    refused.dataReceived(frame(call("echo", id=1)) + struct.pack("!I", 2**31))
    assert transport.value() == b"" and factory.dispatcher.calls == []
    disconnect(refused)
    assert len(factory.connections) == 2 and factory.refused["max_connections"] == 1

    disconnect(first)
    again, transport = connect(factory)
    assert not transport.disconnecting and transport.value() == b""
    again.dataReceived(frame(call("echo", id=1)))
    assert len(factory.dispatcher.calls) == 1


def test_per_peer_limit():
    factory = make_factory(max_connections_per_peer=1)
    here, there = IPv4Address("TCP", "10.0.0.1", 1), IPv6Address("TCP", "::1", 2)
    first, _ = connect(factory, here)
    _, refused = connect(factory, IPv4Address("TCP", "10.0.0.1", 3))
    [error] = replies(refused)
    assert error["error"]["code"] == -32002 and "10.0.0.1" in error["error"]["message"]
    assert "per-peer limit of 1" in error["error"]["message"] and refused.disconnecting
    _, other = connect(factory, there)
    assert not other.disconnecting
    disconnect(first)
    _, back = connect(factory, here)
    assert not back.disconnecting and back.value() == b""


# -- idle timeout -----------------------------------------------------------------------------


def test_idle_connection_closes_after_exactly_the_timeout():
    clock = Clock()
    _, transport = connect(make_factory(clock=clock, idle_timeout=10))
    clock.advance(9.999)
    assert not transport.disconnecting
    clock.advance(0.001)
    assert transport.disconnecting


def test_a_frame_restarts_the_idle_clock():
    clock = Clock()
    protocol, transport = connect(make_factory(clock=clock, idle_timeout=10))
    clock.advance(5)
    protocol.dataReceived(frame(b"garbage"))  # a complete frame, even a bad one, is activity
    clock.advance(9.999)
    assert not transport.disconnecting
    clock.advance(0.001)
    assert transport.disconnecting


def test_a_partial_frame_is_not_activity():
    clock = Clock()
    protocol, transport = connect(make_factory(clock=clock, idle_timeout=10))
    clock.advance(5)
    protocol.dataReceived(frame(call("echo", id=1))[:-1])
    clock.advance(5)
    assert transport.disconnecting


def test_no_idle_close_while_a_call_is_pending():
    clock = Clock()
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher, clock, idle_timeout=10))
    clock.advance(1)
    protocol.dataReceived(frame(call("echo", id=1)))
    for _ in range(24):
        clock.advance(1)
    assert not transport.disconnecting
    dispatcher.finish(dispatcher.calls[0])  # t = 25: idle from here
    clock.advance(9.999)
    assert not transport.disconnecting
    clock.advance(0.001)
    assert transport.disconnecting


def test_idle_timeout_zero_means_never():
    clock = Clock()
    _, transport = connect(make_factory(clock=clock, idle_timeout=0))
    clock.advance(10**6)
    assert not transport.disconnecting and clock.getDelayedCalls() == []


def test_closed_connection_leaves_no_timer():
    clock = Clock()
    protocol, _ = connect(make_factory(clock=clock, idle_timeout=10))
    disconnect(protocol)
    assert clock.getDelayedCalls() == []


# -- frame size -------------------------------------------------------------------------------


def test_frame_at_the_limit_is_accepted():
    dispatcher = RecordingDispatcher()
    body = json.dumps(call("echo", "x" * 40, id=1)).encode()
    protocol, transport = connect(make_factory(dispatcher, max_frame_bytes=len(body)))
    protocol.dataReceived(frame(body))
    assert len(dispatcher.calls) == 1 and not transport.disconnecting


def test_frame_too_large_gets_one_error_then_close_without_buffering():
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher, max_frame_bytes=100))
    protocol.dataReceived(frame(call("echo", id=1)))  # a call still in flight
    protocol.dataReceived(struct.pack("!I", 101) + b"x" * 60)
    [error] = replies(transport)
    assert error["error"]["code"] == -32004 and error["id"] is None
    assert "101 bytes exceeds max_frame_bytes 100" in error["error"]["message"]
    assert transport.disconnecting and transport.producerState == "paused"
    assert protocol._unprocessed == b""
    # The call in flight finishing must not restart reading on a connection being closed.
    dispatcher.finish(dispatcher.calls[0], "late")
    assert transport.producerState == "paused"
    # (A paused TCP transport reads nothing more; if bytes did arrive, they are not served.)
    protocol.dataReceived(b"y" * 41 + frame(call("echo", id=2)))
    assert len(dispatcher.calls) == 1
    assert transport.value() == b""  # nothing after the error frame


# -- in-flight cap and backpressure -----------------------------------------------------------


def test_max_inflight_pauses_reading_until_replies_drain():
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher, max_inflight=2))
    protocol.dataReceived(b"".join(frame(call("echo", i, id=i)) for i in range(5)))
    assert len(dispatcher.calls) == 2 and transport.producerState == "paused"
    dispatcher.finish(dispatcher.calls[0])
    # One slot free: reading resumes, one more buffered frame is taken, and it pauses again.
    assert len(dispatcher.calls) == 3 and transport.producerState == "paused"
    for c in list(dispatcher.calls[1:]):
        dispatcher.finish(c)
    assert len(dispatcher.calls) == 5
    for c in dispatcher.calls[3:]:
        dispatcher.finish(c)
    assert transport.producerState == "producing"
    assert sorted(r["id"] for r in replies(transport)) == [0, 1, 2, 3, 4]


def test_batch_counts_against_max_inflight():
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher, max_inflight=3))
    protocol.dataReceived(frame([call("echo", id=i) for i in range(3)]) + frame(call("echo", id=9)))
    assert len(dispatcher.calls) == 3 and transport.producerState == "paused"
    for c in list(dispatcher.calls):
        dispatcher.finish(c)
    assert len(dispatcher.calls) == 4
    [batch] = replies(transport)
    assert sorted(r["id"] for r in batch) == [0, 1, 2]


def test_refused_call_does_not_count_as_in_flight():
    gates = Gates()
    dispatcher = real_dispatcher(gates, max_workers=1, queue_size=0)
    protocol, transport = connect(make_factory(dispatcher, max_inflight=2))
    protocol.dataReceived(frame(call("wait", "a", id=1)) + frame(call("wait", "b", id=2)))
    [busy] = replies(transport)
    assert busy["id"] == 2 and busy["error"]["code"] == -32000
    assert transport.producerState == "producing"
    gates.open("a")
    assert replies(transport) == [{"jsonrpc": "2.0", "result": "a", "id": 1}]
