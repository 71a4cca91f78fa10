"""RPCProtocol and RPCFactory over StringTransport and Clock: framing, limits, timeouts,
backpressure, the auth handshake's glue, and replies through a real Dispatcher.

Ordering and reply-shape tests run a real Dispatcher in gevent greenlets (methods block on
gevent Events, so the test decides which call finishes first); framing, limits and
backpressure tests use the recording dispatcher, which is the clearer unit. The session's
own decisions are tested without a transport in tests/test_session.py.
"""

from __future__ import annotations

import gc
import json
import struct
import weakref
from typing import Any

import gevent
import pytest
from gevent.event import Event
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from rpcd import auth
from rpcd.dispatch import Dispatcher
from rpcd.methods import Registry
from rpcd.protocol import ConnectionLimits, RPCFactory
from rpcd.wire import CANCELLED, Response
from tests import jsonrpc_spec
from tests.conftest import BufferingTransport, RecordingDispatcher, frame, unframe

# -- helpers ----------------------------------------------------------------------------------


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


def connect(factory: RPCFactory, peer: Any = None, transport_class: type = StringTransport):
    peer = peer or IPv4Address("TCP", "10.0.0.1", 40000)
    protocol = factory.buildProtocol(peer)
    transport = transport_class(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


def disconnect(protocol: Any) -> None:
    protocol.transport.connected = False
    protocol.connectionLost(Failure(ConnectionError("closed by the test")))


def replies(transport: StringTransport, fmt: str = "!I") -> list[Any]:
    """The frames written since the last look, decoded; the transport is cleared."""
    data = transport.value()
    transport.clear()
    return unframe(data, fmt)


def call(method: str, *params: Any, id: Any = 1) -> dict:
    return {"jsonrpc": "2.0", "method": method, "params": list(params), "id": id}


# -- framing ----------------------------------------------------------------------------------

# Every kind of frame: JSON-RPC calls and a notification, legacy calls, batches (one with a
# notification), non-ASCII text, an empty body (a parse error, not a stall).
STREAM = b"".join(
    [
        frame(call("echo", 1, id=1)),
        frame({"jsonrpc": "2.0", "method": "note", "params": {"x": [1, {"y": None}]}}),
        frame({"in": "echo", "params": "legacy"}),
        frame([call("echo", 2, id=2), {"jsonrpc": "2.0", "method": "echo"}]),
        frame([call("a", 10, id=10), call("b", "é€😀", id=11)]),
        frame(call("echo", {"nested": [1, 2]}, "x" * 300, id="three")),
        frame(b""),
        frame({"in": "echo", "params": [1, 2]}),
        frame(call("echo", "last", id=4)),
    ]
)


def _calls_for(chunks: list[bytes]) -> tuple[list[tuple], list[Any]]:
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher))
    for chunk in chunks:
        protocol.dataReceived(chunk)
    return dispatcher.requests(), replies(transport)


WHOLE = _calls_for([STREAM])


def test_frames_split_at_every_byte_give_the_same_calls():
    assert len(WHOLE[0]) == 10
    assert [r["error"]["code"] for r in WHOLE[1]] == [-32700]
    for cut in range(1, len(STREAM)):
        assert _calls_for([STREAM[:cut], STREAM[cut:]]) == WHOLE, cut
    assert _calls_for([STREAM[i : i + 1] for i in range(len(STREAM))]) == WHOLE


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_frames_split_anywhere_many_times_give_the_same_calls(cuts):
    cuts = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
    assert _calls_for(chunks) == WHOLE


def test_byteorder_little():
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher, byteorder="little"))
    protocol.dataReceived(frame(call("echo", 1, id=9), "<I"))
    dispatcher.finish(dispatcher.submitted[0], "little")
    assert replies(transport, "<I") == [{"jsonrpc": "2.0", "result": "little", "id": 9}]


@pytest.mark.parametrize("byteorder, fmt", [("big", "!I"), ("little", "<I")])
def test_replies_of_every_size_around_the_prefix_table_are_framed_right(byteorder, fmt):
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher, byteorder=byteorder))
    # Results whose replies run from well under to past 512 bytes (the last tabled prefix).
    sizes = range(440, 520)
    protocol.dataReceived(b"".join(frame(call("echo", id=n), fmt) for n in sizes))
    for c in list(dispatcher.submitted):
        dispatcher.finish(c, "x" * c.request.id)
    assert [len(r["result"]) for r in replies(transport, fmt)] == list(sizes)


BAD_FRAMES = [
    (b"[" * 100_000, -32700),
    (b"1" * 5000, -32700),
    (b'{"jsonrpc":"2.0","method":"\xc3\x28","id":1}', -32700),
    (b'{"jsonrpc":"2.0","method":"a","params":[NaN],"id":1}', -32700),
    (b'{"jsonrpc":"2.0","method":"a","params":[Infinity],"id":1}', -32700),
    (b"", -32700),
    (b"17", -32600),
    (b'"ping"', -32600),
    (b'{"jsonrpc":"2.0","method":7,"id":1}', -32600),
    (b'{"jsonrpc":"2.0","method":"a","params":"x","id":1}', -32600),
    (b'{"jsonrpc":"2.0","method":"a","id":[1]}', -32600),
    (b'{"jsonrpc":"1.0","method":"a","id":1}', -32600),
    (json.dumps([call("ping", id=i) for i in range(101)]).encode(), -32600),  # > max_batch
]


@pytest.mark.parametrize(("body", "code"), BAD_FRAMES)
def test_bad_frame_is_answered_and_the_connection_keeps_working(body, code):
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher))
    protocol.dataReceived(frame(body) + frame(call("ping", id=99)))
    [reply] = replies(transport)
    assert reply["error"]["code"] == code
    assert not transport.disconnecting
    [pending] = dispatcher.submitted
    assert pending.request.method == "ping" and pending.request.id == 99
    dispatcher.finish(pending, "pong")
    assert replies(transport) == [{"jsonrpc": "2.0", "result": "pong", "id": 99}]


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


class CountingTransport(StringTransport):
    """A StringTransport that counts its write calls."""

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def test_replies_of_back_to_back_calls_are_written_together_in_order():
    gates = Gates()
    protocol, transport = connect(
        make_factory(real_dispatcher(gates)), transport_class=CountingTransport
    )
    protocol.dataReceived(b"".join(frame(call("echo", i, id=i)) for i in range(20)))
    gevent.idle()
    assert [r["id"] for r in replies(transport)] == list(range(20))
    assert transport.writes == 1  # one worker ran the twenty: one write for their replies


def test_a_blocking_call_does_not_hold_back_the_replies_before_it():
    gates = Gates()
    protocol, transport = connect(make_factory(real_dispatcher(gates, max_workers=1)))
    protocol.dataReceived(
        frame(call("echo", 1, id=1)) + frame(call("wait", "w", id=2)) + frame(call("echo", id=3))
    )
    gevent.idle()
    # The one worker is blocked in call 2: call 1's reply went out all the same.
    assert replies(transport) == [{"jsonrpc": "2.0", "result": [1], "id": 1}]
    gates.open("w")
    assert [r["id"] for r in replies(transport)] == [2, 3]


def test_a_close_writes_the_replies_held_for_a_burst_first():
    gates = Gates()
    dispatcher = real_dispatcher(gates)
    protocol, transport = connect(make_factory(dispatcher))
    dispatcher.bursting = True  # as while a worker runs calls back to back
    protocol.sendString(b'{"held": 1}')
    assert transport.value() == b""
    protocol.close()
    assert replies(transport) == [{"held": 1}] and transport.disconnecting
    dispatcher.bursting = False


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
        7,
    ]
    protocol.dataReceived(frame(batch))
    gevent.idle()
    assert replies(transport) == []
    gates.open("a")
    [answer] = replies(transport)
    assert sorted(answer, key=lambda r: str(r["id"])) == [
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
        {
            "jsonrpc": "2.0",
            "error": {"code": -32600, "message": "invalid request: batch entry is not a request"},
            "id": None,
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


def test_disconnect_cancels_the_calls_in_flight_and_writes_nothing():
    gates = Gates()
    dispatcher = real_dispatcher(gates)
    factory = make_factory(dispatcher)
    protocol, transport = connect(factory)
    protocol.dataReceived(frame(call("wait", "a", id=1)) + frame(call("wait", "b", id=2)))
    gevent.idle()
    assert dispatcher.in_flight == 2
    calls = list(protocol._session.calls)
    disconnect(protocol)
    assert len(factory.connections) == 0
    protocol.deliver(calls[0], Response(calls[0].request, "late"))  # a late answer: dropped
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


def test_connections_past_the_limit_get_one_error_frame_and_are_closed():
    factory = make_factory(max_connections=100)
    conns = [connect(factory, IPv4Address("TCP", "127.0.0.1", 30000 + i)) for i in range(150)]
    served = [t for _, t in conns if not t.disconnecting]
    refused = [(p, t) for p, t in conns if t.disconnecting]
    assert len(served) == 100 and len(refused) == 50
    assert all(t.value() == b"" for t in served)
    for _protocol, transport in refused:
        [error] = replies(transport)
        assert error["id"] is None and error["error"]["code"] == -32002
        assert "limit of 100" in error["error"]["message"]
        assert error["error"]["data"] == {"limit": "max_connections"}
        assert transport.producerState == "paused"
    refused_protocol, refused_transport = refused[0]
    refused_protocol.dataReceived(frame(call("echo", id=1)) + struct.pack("!I", 2**31))
    assert refused_transport.value() == b"" and factory.dispatcher.submitted == []
    disconnect(refused_protocol)
    assert len(factory.connections) == 100 and factory.refused["max_connections"] == 50

    disconnect(conns[0][0])
    again, transport = connect(factory)
    assert not transport.disconnecting and transport.value() == b""
    again.dataReceived(frame(call("echo", id=1)))
    assert len(factory.dispatcher.submitted) == 1
    for protocol, _ in conns[1:]:
        protocol.connectionLost(None)
    again.connectionLost(None)
    assert len(factory.connections) == 0


@pytest.mark.parametrize(
    ("host", "twin"),
    [
        (IPv4Address("TCP", "127.0.0.1", 0), None),
        (IPv6Address("TCP", "::1", 0), None),
        (IPv4Address("TCP", "10.1.2.3", 0), IPv6Address("TCP", "::ffff:10.1.2.3", 0)),
    ],
)
def test_per_peer_limit_counts_open_connections_exactly(host, twin):
    factory = make_factory(max_connections_per_peer=2)
    other = IPv4Address("TCP", "192.0.2.9", 1)
    a, ta = connect(factory, host)
    b, tb = connect(factory, twin or host)  # a mapped IPv4 address is the same peer
    c, tc = connect(factory, host)
    _, tother = connect(factory, other)
    assert not ta.disconnecting and not tb.disconnecting and not tother.disconnecting
    [error] = replies(tc)
    assert tc.disconnecting and error["error"]["code"] == -32002
    assert "per-peer limit of 2" in error["error"]["message"]
    assert host.host.removeprefix("::ffff:") in error["error"]["message"]
    c.connectionLost(None)  # a refused connection closing frees nothing it never held
    a.connectionLost(None)
    a.connectionLost(None)  # a second notice must not count twice
    d, td = connect(factory, host)
    assert not td.disconnecting and td.value() == b""
    e, te = connect(factory, host)
    assert te.disconnecting
    for protocol in (b, d, e):
        protocol.connectionLost(None)
    assert factory._per_peer == {"192.0.2.9": 1}


# -- idle timeout -----------------------------------------------------------------------------


def test_idle_connection_closes_after_exactly_the_timeout():
    clock = Clock()
    _, transport = connect(make_factory(clock=clock, idle_timeout=10))
    clock.advance(9.999)
    assert not transport.disconnecting
    clock.advance(0.001)
    assert transport.disconnecting


@pytest.mark.parametrize(
    "sent", [b"", b"\x00\x00", b'\x00\x00\x00\x10{"jsonrpc"', frame(call("echo", id=1))[:-1]]
)
def test_a_partial_frame_is_not_activity(sent):
    clock = Clock()
    protocol, transport = connect(make_factory(clock=clock, idle_timeout=10.0))
    clock.advance(3.0)
    protocol.dataReceived(sent)
    clock.advance(6.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting


def test_idle_timeout_counts_from_the_last_complete_frame_even_a_bad_one():
    clock = Clock()
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher, clock, idle_timeout=10.0))
    clock.advance(4.0)
    protocol.dataReceived(frame(call("ping")))
    dispatcher.finish(dispatcher.submitted[0])
    clock.advance(1.0)
    protocol.dataReceived(frame(b"garbage"))  # a complete frame, even a bad one, is activity
    protocol.dataReceived(frame(call("ping"))[:6])
    clock.advance(9.999)  # 14.999 s: 9.999 s after the last complete frame
    assert not transport.disconnecting
    clock.advance(0.001)
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
    dispatcher.finish(dispatcher.submitted[0])  # t = 25: idle from here
    clock.advance(9.999)
    assert not transport.disconnecting
    clock.advance(0.001)
    assert transport.disconnecting


def test_frames_that_come_while_calls_are_pending_count_from_the_last_answer():
    clock = Clock()
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher, clock, idle_timeout=10))
    clock.advance(1)
    protocol.dataReceived(frame(call("echo", id=1)))
    clock.advance(2)  # t = 3
    protocol.dataReceived(frame(call("echo", id=2)) + frame(b"garbage"))
    clock.advance(2)  # t = 5
    first, second = dispatcher.submitted
    dispatcher.finish(second)
    clock.advance(1)  # t = 6: idle from here
    dispatcher.finish(first)
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


def _peer(i: int) -> IPv4Address:
    return IPv4Address("TCP", "10.0.0.1", 40000 + i)


def test_one_timer_closes_each_idle_connection_at_its_own_deadline(log_events):
    clock = Clock()
    factory = make_factory(clock=clock, idle_timeout=10)
    transports = []
    for i in range(5):  # opened a second apart
        transports.append(connect(factory, _peer(i))[1])
        clock.advance(1)
    assert len(clock.getDelayedCalls()) == 1  # one timer for the factory, not one each
    clock.advance(5)  # t = 10: the first is idle for 10 s
    assert [t.disconnecting for t in transports] == [True, False, False, False, False]
    clock.advance(2.5)  # t = 12.5
    assert [t.disconnecting for t in transports] == [True, True, True, False, False]
    clock.advance(1.5)  # t = 14
    assert all(t.disconnecting for t in transports)
    lines = [formatEvent(e) for e in log_events if "idle" in formatEvent(e)]
    assert lines == [f"closing 10.0.0.1:{40000 + i}: idle for 10 s" for i in range(5)]


def test_a_busy_connection_is_not_closed_beside_an_idle_one():
    clock = Clock()
    dispatcher = RecordingDispatcher()
    factory = make_factory(dispatcher, clock, idle_timeout=10)
    busy, busy_transport = connect(factory, _peer(1))
    _, idle_transport = connect(factory, _peer(2))
    for i in range(8):  # a call every 4 s, answered at once, for 32 s
        clock.advance(4)
        busy.dataReceived(frame(call("echo", id=i)))
        dispatcher.finish(dispatcher.submitted[-1])
        assert idle_transport.disconnecting == (clock.seconds() >= 10)
    assert not busy_transport.disconnecting
    clock.advance(9.9)
    assert not busy_transport.disconnecting
    clock.advance(0.1)  # 10 s after its last reply
    assert busy_transport.disconnecting


def test_a_connection_with_a_call_pending_is_not_closed_beside_idle_ones():
    clock = Clock()
    dispatcher = RecordingDispatcher()
    factory = make_factory(dispatcher, clock, idle_timeout=10)
    waiting, waiting_transport = connect(factory, _peer(1))
    waiting.dataReceived(frame(call("slow", id=1)))
    others = [connect(factory, _peer(i))[1] for i in range(2, 5)]
    clock.advance(35)
    assert all(t.disconnecting for t in others) and not waiting_transport.disconnecting
    dispatcher.finish(dispatcher.submitted[0])  # t = 35: idle from here
    assert replies(waiting_transport) == [{"jsonrpc": "2.0", "result": "ok", "id": 1}]
    clock.advance(9.9)
    assert not waiting_transport.disconnecting
    clock.advance(0.1)
    assert waiting_transport.disconnecting


def test_closed_connections_are_not_kept_for_the_idle_timer():
    clock = Clock()
    factory = make_factory(clock=clock, idle_timeout=300)
    protocols = [connect(factory, _peer(i))[0] for i in range(100)]
    gone = [weakref.ref(p) for p in protocols[1:]]
    for protocol in protocols[1:]:
        disconnect(protocol)
    del protocols[1:], protocol
    gc.collect()
    # The one still open keeps at most a quarter of its heap's entries closed.
    assert sum(ref() is not None for ref in gone) <= 1
    assert len(clock.getDelayedCalls()) == 1
    disconnect(protocols.pop())
    assert clock.getDelayedCalls() == []


def test_a_connection_closing_already_gets_no_idle_line(log_events):
    clock = Clock()
    factory = make_factory(clock=clock, idle_timeout=10, write_timeout=60)
    protocol, transport = connect(factory, transport_class=BufferingTransport)
    protocol.close()  # its peer has not taken its last bytes yet
    clock.advance(30)
    assert not [e for e in log_events if "idle" in formatEvent(e)]
    assert not transport.aborted
    clock.advance(30)
    assert transport.aborted  # the close's own write timeout, as before


# -- frame size -------------------------------------------------------------------------------


def test_frame_at_the_limit_is_accepted():
    dispatcher = RecordingDispatcher()
    body = json.dumps(call("echo", "x" * 40, id=1)).encode()
    protocol, transport = connect(make_factory(dispatcher, max_frame_bytes=len(body)))
    protocol.dataReceived(frame(body))
    assert len(dispatcher.submitted) == 1 and not transport.disconnecting


@pytest.mark.parametrize("prefix", [struct.pack("!I", 101), b"\xff\xff\xff\xff"])
def test_frame_too_large_gets_one_error_then_close_at_once_without_buffering(prefix):
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher, max_frame_bytes=100))
    protocol.dataReceived(frame(call("echo", id=1)))  # a call still in flight
    protocol.dataReceived(prefix + b"x" * 5000)
    [error] = replies(transport)
    length = struct.unpack("!I", prefix)[0]
    assert error["error"]["code"] == -32004 and error["id"] is None
    assert f"{length} bytes exceeds max_frame_bytes 100" in error["error"]["message"]
    assert transport.disconnecting  # no clock advance: the close is immediate
    assert transport.producerState == "paused"
    assert protocol._decoder.buffered() == 0  # nothing of the body is kept
    # The call in flight finishing must not restart reading on a connection being closed.
    dispatcher.finish(dispatcher.submitted[0], "late")
    assert transport.producerState == "paused"
    # (A paused TCP transport reads nothing more; if bytes did arrive, they are not served.)
    protocol.dataReceived(b"y" * 41 + frame(call("echo", id=2)))
    assert len(dispatcher.submitted) == 1
    assert transport.value() == b""  # nothing after the error frame


# -- in-flight cap and backpressure -----------------------------------------------------------


def test_max_inflight_pauses_reading_until_replies_drain():
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher, max_inflight=2))
    protocol.dataReceived(b"".join(frame(call("echo", i, id=i)) for i in range(5)))
    assert len(dispatcher.submitted) == 2 and transport.producerState == "paused"
    dispatcher.finish(dispatcher.submitted[0])
    # One slot free: reading resumes, one more buffered frame is taken, and it pauses again.
    assert len(dispatcher.submitted) == 3 and transport.producerState == "paused"
    for c in list(dispatcher.submitted[1:]):
        dispatcher.finish(c)
    assert len(dispatcher.submitted) == 5
    for c in dispatcher.submitted[3:]:
        dispatcher.finish(c)
    assert transport.producerState == "producing"
    assert sorted(r["id"] for r in replies(transport)) == [0, 1, 2, 3, 4]


def test_pipelined_calls_never_exceed_max_inflight():
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher, max_inflight=32))
    protocol.dataReceived(b"".join(frame(call("work", id=i)) for i in range(1000)))
    peak = 0
    while dispatcher.running():
        running = dispatcher.running()
        peak = max(peak, len(running))
        dispatcher.finish(running[0], running[0].request.id)
    assert peak == 32
    assert len(dispatcher.submitted) == 1000
    assert sorted(r["result"] for r in replies(transport)) == list(range(1000))


def test_a_batch_never_exceeds_max_inflight_and_holds_the_next_frame():
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher, max_inflight=8, max_batch=100))
    batch = frame([call("work", id=i) for i in range(50)])
    protocol.dataReceived(batch + frame(call("next", id=99)))
    assert len(dispatcher.running()) == 8 and transport.producerState == "paused"
    peak = 0
    while dispatcher.running():
        running = dispatcher.running()
        peak = max(peak, len(running))
        dispatcher.finish(running[0], running[0].request.id)
    assert peak == 8
    [batch, single] = replies(transport)  # the frame after the batch is read only then
    assert sorted(r["result"] for r in batch) == list(range(50))
    assert single == {"jsonrpc": "2.0", "result": 99, "id": 99}
    assert transport.producerState == "producing"


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


def _greedy(clock: Clock, dispatcher: Any = None, **limits: Any):
    factory = make_factory(dispatcher, clock, **limits)
    protocol, transport = connect(factory, transport_class=BufferingTransport)
    assert transport.bufferSize == factory.limits.max_outbuf
    return protocol, transport, factory.dispatcher


def test_peer_that_never_reads_is_no_longer_read_then_aborted_after_write_timeout():
    clock = Clock()
    protocol, transport, dispatcher = _greedy(clock, max_outbuf=4096, write_timeout=30.0)
    for i in range(5):
        protocol.dataReceived(frame(call("echo", id=i)))
        dispatcher.finish(dispatcher.submitted[-1], "x" * 1500)
    # The third reply took the unsent bytes past 4096: reading stopped there.
    assert transport.producerState == "paused"
    assert len(dispatcher.submitted) == 3
    clock.advance(29.9)
    assert not transport.aborted
    clock.advance(0.2)
    assert transport.aborted


def test_replies_written_while_reading_a_chunk_stop_it_once_the_outbuf_is_full():
    clock = Clock()
    protocol, transport, dispatcher = _greedy(clock, max_outbuf=4096)
    # Each bad frame is answered at once; the call after them is read only once they are.
    bad = b"".join(frame(b"{not json") for _ in range(200))
    protocol.dataReceived(frame(call("a")) + bad + frame(call("e")))
    assert transport.producerState == "paused"
    assert [c.request.method for c in dispatcher.submitted] == ["a"]
    while transport.producerState == "paused":
        transport.flush()
    assert [c.request.method for c in dispatcher.submitted] == ["a", "e"]
    assert sum(r.get("error", {}).get("code") == -32700 for r in replies(transport)) == 200


def test_peer_that_catches_up_is_read_again_and_not_aborted():
    clock = Clock()
    protocol, transport, dispatcher = _greedy(clock, max_outbuf=4096)
    protocol.dataReceived(frame(call("echo", id=1)))
    dispatcher.finish(dispatcher.submitted[0], "x" * 5000)
    assert transport.producerState == "paused"
    clock.advance(20)
    transport.flush()
    assert transport.producerState == "producing"
    clock.advance(60)
    assert not transport.aborted and not transport.disconnecting


def test_outbuf_and_inflight_pauses_do_not_undo_each_other():
    clock = Clock()
    protocol, transport, dispatcher = _greedy(clock, max_outbuf=4096, max_inflight=2)
    protocol.dataReceived(b"".join(frame(call("echo", id=i)) for i in range(4)))
    assert len(dispatcher.submitted) == 2 and transport.producerState == "paused"  # in-flight
    first, second = dispatcher.submitted
    dispatcher.finish(first, "x" * 5000)  # frees a slot but fills the outbuf
    assert transport.producerState == "paused" and len(dispatcher.submitted) == 2
    transport.flush()  # outbuf drained, but is the in-flight cap free? yes: one slot
    assert len(dispatcher.submitted) == 3 and transport.producerState == "paused"
    dispatcher.finish(second, "x" * 5000)  # outbuf full again: slot free, still not read
    assert len(dispatcher.submitted) == 3
    transport.flush()
    assert len(dispatcher.submitted) == 4


def test_stream_says_when_the_peer_lags_and_its_drain_wakes_the_dispatcher():
    clock = Clock()
    protocol, transport, dispatcher = _greedy(clock, max_outbuf=4096)
    protocol.dataReceived(frame(call("ticker", id="t")))
    [ticker] = dispatcher.submitted
    assert protocol.stream(ticker, "y" * 3000) is True
    assert protocol.stream(ticker, "y" * 3000) is False  # past 4096 unsent: hold the stream
    assert dispatcher.woken == []
    transport.flush()
    assert dispatcher.woken == [protocol]
    items = [r["params"]["item"] for r in replies(transport)]
    assert items == ["y" * 3000] * 2


def test_a_stream_waits_while_the_outbuf_is_full_holding_nothing_else_back():
    registry = Registry()
    sent = []

    def ticker():
        for i in range(4):
            yield "y" * 3000
            sent.append(i)
        return "end"

    registry.add("ticker", ticker)
    clock = Clock()
    protocol, transport, _ = _greedy(clock, Dispatcher(registry), max_outbuf=4096)
    protocol.dataReceived(frame(call("ticker", id="t")))
    gevent.idle()
    assert sent == [0]  # the second item took the unsent bytes past 4096: it waits
    gevent.sleep(0.01)
    assert sent == [0]
    transport.flush()
    gevent.idle()
    assert sent == [0, 1, 2]  # room for two more, and the fourth waits again
    transport.flush()
    gevent.idle()
    assert sent == [0, 1, 2, 3]
    assert replies(transport)[-1] == {"jsonrpc": "2.0", "result": "end", "id": "t"}


def test_close_unregisters_the_outbuf_watch_so_the_transport_can_close():
    clock = Clock()
    factory = make_factory(clock=clock, write_timeout=5.0)
    protocol, transport = connect(factory, transport_class=BufferingTransport)
    assert transport.producer is not None
    factory.close_all()
    assert transport.producer is None and transport.disconnecting
    clock.advance(5.1)  # the peer never took its last bytes
    assert transport.aborted


# -- the rpc.auth handshake -------------------------------------------------------------------

SECRET = b"never-log-me-0123456789"


class Conn:
    """A connection to a factory with an auth key; the challenge is read at once."""

    def __init__(self, key=SECRET, max_frame_bytes=1024 * 1024):
        self.clock = Clock()
        self.dispatcher = RecordingDispatcher()
        self.factory = make_factory(
            self.dispatcher,
            self.clock,
            max_frame_bytes=max_frame_bytes,
            idle_timeout=0,
            auth_key=auth.Key(key) if key is not None else None,
        )
        self.proto, self.transport = connect(self.factory, IPv4Address("TCP", "127.0.0.1", 40000))
        self._challenge = None
        if key is not None:
            (challenge,) = self.frames()
            assert challenge["method"] == "rpc.auth" and "id" not in challenge
            self._challenge = challenge["params"]

    def send(self, obj):
        self.proto.dataReceived(frame(obj))

    def frames(self):
        return replies(self.transport)

    def challenge(self):
        return self._challenge

    def submitted(self):
        return [c.request for c in self.dispatcher.submitted]

    def authenticate(self, key=SECRET):
        params = auth.respond(auth.Key(key), self.challenge())
        self.send({"jsonrpc": "2.0", "method": "rpc.auth", "params": params, "id": "a"})
        return self.frames()


def test_without_a_key_there_is_no_handshake():
    c = Conn(key=None)
    assert c.transport.value() == b""
    c.send({"jsonrpc": "2.0", "method": "ping", "id": 1})
    assert [r.method for r in c.submitted()] == ["ping"]


def test_challenge_then_success_then_calls_flow():
    c = Conn()
    assert c.challenge()["mechanism"] == "hmac-sha256" and len(c.challenge()["nonce"]) == 64
    assert Conn().challenge()["nonce"] != c.challenge()["nonce"]
    (reply,) = c.authenticate()
    assert reply == {"jsonrpc": "2.0", "result": {"authenticated": True}, "id": "a"}
    assert not c.transport.disconnecting
    c.send({"jsonrpc": "2.0", "method": "ping", "id": 1})
    assert [r.method for r in c.submitted()] == ["ping"]
    c.dispatcher.finish(c.dispatcher.submitted[0], "pong")
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
    c.send({"jsonrpc": "2.0", "method": "ping", "id": 1})
    c.send({"in": "ping"})
    c.send([{"jsonrpc": "2.0", "method": "ping", "id": 2}])
    c.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": 1}, "id": 3})
    c.send({"jsonrpc": "2.0", "method": "ping"})  # a notification: refused silently
    frames = c.frames()
    assert [f.get("error", f.get("result", {})).get("code") for f in frames] == [-32003] * 4
    assert frames[0]["id"] == 1 and frames[1]["out"] == "error" and frames[3]["id"] == 3
    assert c.submitted() == []
    assert not c.transport.disconnecting  # still time to authenticate
    assert c.authenticate()[0]["result"] == {"authenticated": True}


def test_wrong_key_is_refused_and_closed():
    c = Conn()
    (reply,) = c.authenticate(key=b"wrong")
    assert reply["error"]["code"] == -32003 and reply["id"] == "a"
    assert c.transport.disconnecting
    c.send({"jsonrpc": "2.0", "method": "ping", "id": 1})
    assert c.submitted() == []


def test_malformed_auth_params_close():
    c = Conn()
    c.send({"jsonrpc": "2.0", "method": "rpc.auth", "params": [1, 2], "id": 1})
    (reply,) = c.frames()
    assert reply["error"]["code"] == -32003 and c.transport.disconnecting


def test_handshake_must_finish_within_5_s():
    c = Conn()
    c.clock.advance(auth.HANDSHAKE_TIMEOUT - 0.01)
    assert not c.transport.disconnecting
    c.clock.advance(0.02)
    (reply,) = c.frames()
    assert reply["error"]["code"] == -32003 and "timed out" in reply["error"]["message"]
    assert c.transport.disconnecting


def test_preauth_frames_are_capped_small():
    c = Conn()
    c.proto.dataReceived(struct.pack("!I", auth.PREAUTH_MAX_FRAME + 1))
    (reply,) = c.frames()
    assert reply["error"]["code"] == -32004 and c.transport.disconnecting


def test_preauth_frame_at_the_cap_is_read_and_the_cap_lifts_after_auth():
    c = Conn()
    pad = "x" * (auth.PREAUTH_MAX_FRAME - 100)
    c.send({"jsonrpc": "2.0", "method": "ping", "params": [pad], "id": 1})
    assert c.frames()[0]["error"]["code"] == -32003
    c.authenticate()
    c.send({"jsonrpc": "2.0", "method": "ping", "params": ["y" * 100_000], "id": 2})
    assert not c.transport.disconnecting
    assert [r.id for r in c.submitted()] == [2]


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
    c3.clock.advance(10)
    assert any("authentication failed" in repr(e) for e in log_events)
    text = repr(log_events) + repr(c.factory.limits)
    assert SECRET.decode() not in text


# -- half-close (issue 10) --------------------------------------------------------------------


def test_half_close_gets_every_reply_owed_then_closes():
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher, max_inflight=8))
    protocol.dataReceived(b"".join(frame(call("work", id=i)) for i in range(50)))
    assert len(dispatcher.running()) == 8  # the rest still buffered: past the in-flight cap
    assert IHalfCloseableProtocol.providedBy(protocol)
    protocol.readConnectionLost()  # what `printf ... | nc` does: shutdown(SHUT_WR)
    while dispatcher.running():
        assert not transport.disconnecting
        running = dispatcher.running()
        assert len(running) <= 8
        dispatcher.finish(running[0], running[0].request.id)
    assert sorted(r["result"] for r in replies(transport)) == list(range(50))
    assert transport.disconnecting


def test_half_close_with_nothing_owed_closes_at_once():
    protocol, transport = connect(make_factory())
    protocol.dataReceived(frame(call("work", id=1))[:-3])  # a partial frame is owed nothing
    protocol.readConnectionLost()
    assert transport.disconnecting and transport.value() == b""


def test_half_close_before_any_byte_closes_at_once():
    protocol, transport = connect(make_factory())
    protocol.readConnectionLost()
    assert transport.disconnecting and transport.value() == b""


def test_a_frame_handed_to_string_received_first_is_answered():
    # The per-frame hook, as IntNStringReceiver has it, works before any bytes were read.
    dispatcher = RecordingDispatcher()
    protocol, transport = connect(make_factory(dispatcher))
    protocol.stringReceived(json.dumps(call("echo", id=7)).encode())
    dispatcher.finish(dispatcher.submitted[0], "done")
    assert replies(transport) == [{"jsonrpc": "2.0", "result": "done", "id": 7}]


def test_a_connection_that_sent_nothing_is_counted_out_when_it_goes():
    factory = make_factory(max_connections=1)
    protocol, _ = connect(factory)
    protocol.dataReceived(b"")  # nothing yet
    disconnect(protocol)
    assert factory.connections == set()
    _, transport = connect(factory)  # its slot is free again
    assert not transport.disconnecting


# -- memory per connection (issue 10) ---------------------------------------------------------


def test_no_new_call_starts_while_a_peers_unsent_replies_are_past_max_outbuf():
    registry = Registry()
    ran = []

    def big(i):
        ran.append(i)
        return "x" * 5000

    registry.add("big", big)
    clock = Clock()
    protocol, transport, _ = _greedy(clock, Dispatcher(registry), max_outbuf=4096)
    protocol.dataReceived(b"".join(frame(call("big", i, id=i)) for i in range(20)))
    gevent.idle()
    # The first reply took the unsent bytes past 4096: no other call started, so the
    # connection holds max_outbuf plus one reply, not twenty replies.
    assert ran == [0] and transport.unsent < 4096 + 5100
    for n in range(2, 21):
        transport.flush()  # the peer reads: one more call runs, and fills it again
        gevent.idle()
        assert len(ran) == n
    assert sorted(r["id"] for r in replies(transport)) == list(range(20))


def test_a_lagging_peer_that_goes_away_leaves_nothing_in_the_dispatcher():
    registry = Registry()
    registry.add("big", lambda: "x" * 5000)
    dispatcher = Dispatcher(registry)
    protocol, transport, _ = _greedy(Clock(), dispatcher, max_outbuf=4096)
    protocol.dataReceived(b"".join(frame(call("big", id=i)) for i in range(5)))
    gevent.idle()
    assert dispatcher.queued == 4
    disconnect(protocol)
    gevent.idle()
    assert dispatcher.queued == 0 and dispatcher.in_flight == 0 and dispatcher._lagging == {}


# -- unauthenticated connections (issue 10) ---------------------------------------------------


def _auth_factory(**limits: Any) -> RPCFactory:
    return make_factory(
        RecordingDispatcher(), Clock(), idle_timeout=0, auth_key=auth.Key(SECRET), **limits
    )


def _authenticate(protocol: Any, transport: StringTransport) -> list:
    [challenge] = replies(transport)
    params = auth.respond(auth.Key(SECRET), challenge["params"])
    protocol.dataReceived(
        frame({"jsonrpc": "2.0", "method": "rpc.auth", "params": params, "id": 1})
    )
    return replies(transport)


def test_a_full_server_drops_an_unauthenticated_connection_for_a_new_one():
    factory = _auth_factory(max_connections=20)
    squatters = [connect(factory, IPv4Address("TCP", "10.9.9.9", 1000 + i)) for i in range(25)]
    holder, transport = connect(factory, IPv4Address("TCP", "10.0.0.7", 5000))
    assert not transport.disconnecting
    [reply] = _authenticate(holder, transport)
    assert reply["result"]["authenticated"] is True
    assert len(factory.connections) == 20 and holder in factory.connections
    dropped = [t for _, t in squatters if t.disconnecting]
    assert len(dropped) == 6  # the oldest, each when a newer connection needed its slot
    error = unframe(dropped[-1].value())[-1]
    assert error["error"]["code"] == -32002 and error["error"]["data"] == {
        "limit": "max_connections"
    }
    # Once authenticated it is never dropped for a newcomer.
    for i in range(30):
        connect(factory, IPv4Address("TCP", "10.9.9.9", 3000 + i))
    assert not transport.disconnecting and holder in factory.connections


def test_unauthenticated_connections_have_a_cap_of_their_own():
    factory = _auth_factory(max_unauthenticated=3)
    conns = [connect(factory, IPv4Address("TCP", "10.9.9.9", 1000 + i)) for i in range(5)]
    assert [t.disconnecting for _, t in conns] == [True, True, False, False, False]
    error = unframe(conns[0][1].value())[-1]
    assert error["error"]["data"] == {"limit": "max_unauthenticated"}
    assert "max_unauthenticated 3" in error["error"]["message"]
    assert len(factory.connections) == 3 and factory.refused["max_unauthenticated"] == 2
    protocol, transport = conns[2]
    _authenticate(protocol, transport)
    connect(factory, IPv4Address("TCP", "10.9.9.9", 2000))
    assert not transport.disconnecting  # authenticated: no longer counted, never dropped


def _fail_auth(factory: RPCFactory, peer: Any) -> StringTransport:
    protocol, transport = connect(factory, peer)
    [challenge] = replies(transport)
    params = auth.respond(auth.Key(b"wrong"), challenge["params"])
    protocol.dataReceived(
        frame({"jsonrpc": "2.0", "method": "rpc.auth", "params": params, "id": 1})
    )
    return transport


def test_auth_failures_slow_the_next_attempts_of_that_peer_only():
    factory = _auth_factory(auth_failure_delay=0.1)
    clock = factory.clock
    bad = IPv4Address("TCP", "10.6.6.6", 1)
    for _ in range(3):
        failed = _fail_auth(factory, bad)
        clock.advance(0.3)  # the second and third attempts are read after 0.1 s and 0.2 s
        [reply] = replies(failed)
        assert reply["error"]["code"] == -32003
    protocol, transport = connect(factory, IPv4Address("TCP", "10.6.6.6", 2))
    [challenge] = replies(transport)
    params = auth.respond(auth.Key(SECRET), challenge["params"])
    protocol.dataReceived(
        frame({"jsonrpc": "2.0", "method": "rpc.auth", "params": params, "id": 1})
    )
    assert replies(transport) == []  # not read yet: 0.1 s doubled per failure, 0.4 s now
    clock.advance(0.399)
    assert replies(transport) == []
    clock.advance(0.001)
    assert replies(transport)[0]["result"]["authenticated"] is True
    # The handshake timer started after the delay: the client had its whole 5 s.
    other, other_transport = connect(factory, IPv4Address("TCP", "10.0.0.8", 3))
    assert _authenticate(other, other_transport)[0]["result"]["authenticated"] is True
    # A success forgets the peer's failures.
    again, again_transport = connect(factory, IPv4Address("TCP", "10.6.6.6", 4))
    assert _authenticate(again, again_transport)[0]["result"]["authenticated"] is True


def test_auth_failures_are_logged_once_per_peer_per_interval_with_a_count(log_events):
    factory = _auth_factory(auth_failure_delay=0)
    bad = IPv4Address("TCP", "10.6.6.6", 1)
    for _ in range(10):
        _fail_auth(factory, bad)
    _fail_auth(factory, IPv4Address("TCP", "10.7.7.7", 1))

    def lines():
        return [e for e in log_events if "authentication fail" in formatEvent(e)]

    assert len(lines()) == 2  # one per peer
    factory.clock.advance(60)
    [summary] = lines()[2:]
    assert summary["count"] == 9 and summary["peer"] == "10.6.6.6:1"


# -- frame-level errors the operator sees (issue 10) ------------------------------------------


def test_frame_level_errors_are_counted_in_the_stats():
    dispatcher = Dispatcher(Registry())
    factory = make_factory(dispatcher, max_frame_bytes=100)
    protocol, _ = connect(factory)
    protocol.dataReceived(frame(b"{not json") + frame(b"17"))
    protocol.dataReceived(struct.pack("!I", 101))
    assert dispatcher.stats.summary()["errors"] == {"-32700": 1, "-32600": 1, "-32004": 1}


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (b"GET /health HTTP/1.1\r\nHost: rpcd\r\n\r\n", "looks like an HTTP request"),
        (frame(call("ping"), "<I"), "the length prefix looks little-endian"),
    ],
)
def test_a_too_large_prefix_names_its_likely_cause(data, cause, log_events):
    protocol, transport = connect(make_factory())
    protocol.dataReceived(data)
    [error] = replies(transport)
    assert error["error"]["code"] == -32004 and cause in error["error"]["message"]
    assert transport.disconnecting
    assert any(cause in formatEvent(e) for e in log_events)


def test_frame_errors_are_logged_once_per_interval_with_a_count(log_events):
    factory = make_factory()
    for i in range(10):
        protocol, _ = connect(factory, IPv4Address("TCP", "10.1.1.1", 7000 + i))
        protocol.dataReceived(frame(b"{not json"))

    def lines():
        return [formatEvent(e) for e in log_events if "-32700" in formatEvent(e)]

    assert len(lines()) == 1 and "10.1.1.1:7000" in lines()[0]
    factory.clock.advance(60)
    assert len(lines()) == 2 and "9 more" in lines()[1]


class _TCPTransport(StringTransport):
    """A transport with TCP's options, as Twisted's TCP transport (or TLS over it) has them."""

    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


def test_a_tcp_connection_sends_each_reply_at_once_without_nagle():
    # Nagle's algorithm would hold a reply while an earlier one is unacknowledged, until the
    # client's next request brings the ACK: calls answered one request late.
    protocol, transport = connect(make_factory(), transport_class=_TCPTransport)
    assert transport.no_delay is True
    # A transport without the option (a UNIX socket) connects as well.
    protocol, transport = connect(make_factory())
    assert protocol.connected
