"""RPCProtocol/RPCFactory under bad input and slow or greedy peers: StringTransport and Clock."""

from __future__ import annotations

import json
import struct

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rpcd.dispatch import Call
from rpcd.protocol import ConnectionLimits, RPCFactory
from rpcd.wire import Response


class FakeDispatcher:
    """Records what the protocol submits; the test decides when each call finishes."""

    def __init__(self) -> None:
        self.submitted: list[Call] = []
        self.cancelled: list[Call] = []

    def submit(self, request, sink) -> Call:
        call = Call(request, None, sink)
        self.submitted.append(call)
        return call

    def cancel(self, call, response=None) -> bool:
        self.cancelled.append(call)
        call.done = True
        if response is not None:
            call.sink.deliver(call, response)
        return True

    def finish(self, call, result="ok") -> None:
        call.done = True
        call.sink.deliver(call, Response(call.request, result))

    def running(self) -> list[Call]:
        return [c for c in self.submitted if not c.done]


class BufferingTransport(StringTransport):
    """A StringTransport that, like Twisted's TCP transport, pauses its registered producer
    when unsent bytes pass `bufferSize` and resumes it once everything is written."""

    bufferSize = 65536

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unsent = 0
        self.producer_paused = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unsent += len(data)
        if self.producer is not None and not self.producer_paused and self.unsent > self.bufferSize:
            self.producer_paused = True
            self.producer.pauseProducing()

    def flush(self) -> None:
        """The peer read everything."""
        self.unsent = 0
        if self.producer is not None and self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


PEER4 = IPv4Address("TCP", "127.0.0.1", 40000)


def frame(body) -> bytes:
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return struct.pack("!I", len(body)) + body


def request(method: str = "ping", id=1, *params) -> dict:
    message = {"jsonrpc": "2.0", "method": method, "id": id}
    if params:
        message["params"] = list(params)
    return message


def frames_out(transport: StringTransport) -> list:
    data, out = transport.value(), []
    while data:
        (n,) = struct.unpack("!I", data[:4])
        out.append(json.loads(data[4 : 4 + n]))
        data = data[4 + n :]
    return out


def connect(limits=None, peer=PEER4, clock=None, factory=None, transport_class=StringTransport):
    if factory is None:
        factory = RPCFactory(FakeDispatcher(), limits or ConnectionLimits(), clock or Clock())
    protocol = factory.buildProtocol(peer)
    transport = transport_class(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport, factory


# -- bad input -------------------------------------------------------------------------------

STREAM = [
    request("add", 1, 2, 3),
    {"jsonrpc": "2.0", "method": "note", "params": {"x": [1, {"y": None}]}},  # notification
    {"in": "ping"},
    [request("a", 10), request("b", 11, "é€😀")],
    request("echo", "s-id", "x" * 300),
    {"in": "echo", "params": [1, 2]},
]
WIRE = b"".join(frame(m) for m in STREAM)


def _calls_for(chunks: list[bytes]) -> list:
    protocol, transport, factory = connect()
    for chunk in chunks:
        protocol.dataReceived(chunk)
    assert frames_out(transport) == []
    return [call.request for call in factory.dispatcher.submitted]


EXPECTED = _calls_for([WIRE])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=40))
def test_every_byte_split_yields_the_same_calls(cuts):
    cuts = sorted(set(cuts))
    chunks = [WIRE[a:b] for a, b in zip([0, *cuts], [*cuts, len(WIRE)], strict=True)]
    assert _calls_for(chunks) == EXPECTED


def test_one_byte_at_a_time_yields_the_same_calls():
    assert len(EXPECTED) == 7
    assert _calls_for([WIRE[i : i + 1] for i in range(len(WIRE))]) == EXPECTED


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
    (json.dumps([request("ping", i) for i in range(101)]).encode(), -32600),  # > max_batch
]


@pytest.mark.parametrize(("body", "code"), BAD_FRAMES)
def test_bad_frame_is_answered_and_the_connection_keeps_working(body, code):
    protocol, transport, factory = connect()
    protocol.dataReceived(frame(body) + frame(request("ping", 99)))
    [reply] = frames_out(transport)
    assert reply["error"]["code"] == code
    assert not transport.disconnecting
    [call] = factory.dispatcher.submitted
    assert call.request.method == "ping" and call.request.id == 99
    factory.dispatcher.finish(call, "pong")
    assert frames_out(transport)[-1] == {"jsonrpc": "2.0", "result": "pong", "id": 99}


def test_batch_entries_with_bad_types_are_answered_one_by_one():
    protocol, transport, factory = connect()
    protocol.dataReceived(frame([request("ping", 1), 5, {"jsonrpc": "2.0", "method": 3, "id": 2}]))
    factory.dispatcher.finish(factory.dispatcher.submitted[0], "pong")
    [reply] = frames_out(transport)
    by_id = {r["id"]: r for r in reply}
    assert len(reply) == 3 and by_id[1]["result"] == "pong"
    assert by_id[2]["error"]["code"] == -32600 and by_id[None]["error"]["code"] == -32600


def test_huge_length_prefix_is_refused_and_closed_at_once_without_buffering():
    protocol, transport, factory = connect(ConnectionLimits(max_frame_bytes=1024))
    protocol.dataReceived(b"\xff\xff\xff\xff" + b"x" * 5000)
    [reply] = frames_out(transport)
    assert reply["error"]["code"] == -32004
    assert transport.disconnecting  # no clock advance: the close is immediate
    assert transport.producerState == "paused"
    assert protocol._unprocessed == b""  # nothing of the body is kept
    protocol.dataReceived(frame(request()))
    assert factory.dispatcher.submitted == []


# -- connection limits -----------------------------------------------------------------------


def test_connections_past_max_connections_get_one_error_frame_and_are_closed():
    factory = RPCFactory(FakeDispatcher(), ConnectionLimits(max_connections=100), Clock())
    conns = [connect(factory=factory, peer=IPv4Address("TCP", "127.0.0.1", 30000 + i))
             for i in range(150)]
    served = [t for _, t, _ in conns if not t.disconnecting]
    refused = [t for _, t, _ in conns if t.disconnecting]
    assert len(served) == 100 and len(refused) == 50
    assert all(t.value() == b"" for t in served)
    for t in refused:
        [reply] = frames_out(t)
        assert reply["error"]["code"] == -32002
    assert len(factory.connections) == 100 and factory.refused["max_connections"] == 50
    for protocol, _, _ in conns:
        protocol.connectionLost(None)
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
    factory = RPCFactory(FakeDispatcher(), ConnectionLimits(max_connections_per_peer=2), Clock())
    other = IPv4Address("TCP", "192.0.2.9", 1)
    a, ta, _ = connect(factory=factory, peer=host)
    b, tb, _ = connect(factory=factory, peer=twin or host)  # a mapped IPv4 address is the same peer
    c, tc, _ = connect(factory=factory, peer=host)
    _, tother, _ = connect(factory=factory, peer=other)
    assert not ta.disconnecting and not tb.disconnecting and not tother.disconnecting
    assert tc.disconnecting and frames_out(tc)[0]["error"]["code"] == -32002
    c.connectionLost(None)  # a refused connection closing frees nothing it never held
    a.connectionLost(None)
    a.connectionLost(None)  # a second notice must not count twice
    d, td, _ = connect(factory=factory, peer=host)
    assert not td.disconnecting
    e, te, _ = connect(factory=factory, peer=host)
    assert te.disconnecting
    for protocol in (b, d, e):
        protocol.connectionLost(None)
    assert factory._per_peer == {"192.0.2.9": 1}


# -- slow peers ------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"", b"\x00\x00", b"\x00\x00\x00\x10{\"jsonrpc\""])
def test_stalled_peer_is_closed_at_the_idle_timeout(sent):
    clock = Clock()
    protocol, transport, _ = connect(ConnectionLimits(idle_timeout=10.0), clock=clock)
    clock.advance(3.0)
    protocol.dataReceived(sent)  # part of a frame (or nothing) does not count as activity
    clock.advance(6.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting


def test_idle_timeout_counts_from_the_last_complete_frame():
    clock = Clock()
    protocol, transport, factory = connect(ConnectionLimits(idle_timeout=10.0), clock=clock)
    clock.advance(4.0)
    protocol.dataReceived(frame(request()))
    factory.dispatcher.finish(factory.dispatcher.submitted[0])
    clock.advance(1.0)
    protocol.dataReceived(frame(request())[:6])
    clock.advance(8.9)  # 13.9 s: 9.9 s after the frame
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting


def _greedy(limits: ConnectionLimits, clock: Clock):
    protocol, transport, factory = connect(limits, clock=clock, transport_class=BufferingTransport)
    assert transport.bufferSize == limits.max_outbuf
    return protocol, transport, factory.dispatcher


def test_peer_that_never_reads_is_no_longer_read_then_aborted_after_write_timeout():
    clock = Clock()
    limits = ConnectionLimits(max_outbuf=4096, write_timeout=30.0)
    protocol, transport, dispatcher = _greedy(limits, clock)
    for i in range(5):
        protocol.dataReceived(frame(request("echo", i)))
        dispatcher.finish(dispatcher.submitted[-1], "x" * 1500)
    # The third reply took the unsent bytes past 4096: reading stopped there.
    assert transport.producerState == "paused"
    assert len(dispatcher.submitted) == 3
    clock.advance(29.9)
    assert not transport.aborted
    clock.advance(0.2)
    assert transport.aborted


def test_peer_that_catches_up_is_read_again_and_not_aborted():
    clock = Clock()
    protocol, transport, dispatcher = _greedy(ConnectionLimits(max_outbuf=4096), clock)
    protocol.dataReceived(frame(request("echo", 1)))
    dispatcher.finish(dispatcher.submitted[0], "x" * 5000)
    assert transport.producerState == "paused"
    clock.advance(20)
    transport.flush()
    assert transport.producerState == "producing"
    clock.advance(60)
    assert not transport.aborted and not transport.disconnecting


def test_outbuf_and_inflight_pauses_do_not_undo_each_other():
    clock = Clock()
    limits = ConnectionLimits(max_outbuf=4096, max_inflight=2)
    protocol, transport, dispatcher = _greedy(limits, clock)
    protocol.dataReceived(b"".join(frame(request("echo", i)) for i in range(4)))
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


def test_stream_waits_while_the_outbuf_is_full():
    clock = Clock()
    protocol, transport, dispatcher = _greedy(ConnectionLimits(max_outbuf=4096), clock)
    protocol.dataReceived(frame(request("ticker", 1)))
    [call] = dispatcher.submitted
    sent = []

    def produce():
        for i in range(4):
            protocol.stream(call, "y" * 3000)
            sent.append(i)

    streamer = gevent.spawn(produce)
    gevent.sleep(0)
    assert sent == [0]  # the second item took the unsent bytes past 4096: it waits
    gevent.sleep(0.01)
    assert sent == [0]
    transport.flush()
    gevent.sleep(0)
    assert sent == [0, 1, 2]  # room for two more, and the fourth waits again
    transport.flush()
    streamer.join(1)
    assert sent == [0, 1, 2, 3]


def test_close_unregisters_the_outbuf_watch_so_the_transport_can_close():
    clock = Clock()
    protocol, transport, factory = connect(ConnectionLimits(write_timeout=5.0), clock=clock,
                                           transport_class=BufferingTransport)
    assert transport.producer is not None
    factory.close_all()
    assert transport.producer is None and transport.disconnecting
    clock.advance(5.1)  # the peer never took its last bytes
    assert transport.aborted


def test_pipelined_calls_never_exceed_max_inflight():
    protocol, transport, factory = connect(ConnectionLimits(max_inflight=32))
    dispatcher = factory.dispatcher
    protocol.dataReceived(b"".join(frame(request("work", i)) for i in range(1000)))
    peak = 0
    while dispatcher.running():
        running = dispatcher.running()
        peak = max(peak, len(running))
        dispatcher.finish(running[0], running[0].request.id)
    assert peak == 32
    assert len(dispatcher.submitted) == 1000
    assert sorted(r["result"] for r in frames_out(transport)) == list(range(1000))


def test_disconnect_mid_call_cancels_the_call_and_writes_nothing():
    protocol, transport, factory = connect()
    protocol.dataReceived(frame(request("sleep", 1)) + frame(request("sleep", 2)))
    calls = list(factory.dispatcher.submitted)
    protocol.connectionLost(None)
    assert set(factory.dispatcher.cancelled) == set(calls)
    protocol.deliver(calls[0], Response(calls[0].request, "late"))
    assert transport.value() == b""
    assert len(factory.connections) == 0


def test_a_batch_never_exceeds_max_inflight_either():
    protocol, transport, factory = connect(ConnectionLimits(max_inflight=8, max_batch=100))
    dispatcher = factory.dispatcher
    batch = frame([request("work", i) for i in range(50)])
    protocol.dataReceived(batch + frame(request("next", 99)))
    assert len(dispatcher.running()) == 8 and transport.producerState == "paused"
    peak = 0
    while dispatcher.running():
        running = dispatcher.running()
        peak = max(peak, len(running))
        dispatcher.finish(running[0], running[0].request.id)
    assert peak == 8
    [batch, single] = frames_out(transport)  # the frame after the batch is read only then
    assert sorted(r["result"] for r in batch) == list(range(50))
    assert single == {"jsonrpc": "2.0", "result": 99, "id": 99}
