"""rpcd.metrics without sockets: histogram mapping, frame counting, refusal labels, exposition."""

from __future__ import annotations

import json
import struct
from types import SimpleNamespace

import gevent
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rpcd.dispatch import Dispatcher
from rpcd.methods import Registry
from rpcd.metrics import Counts, _histogram, build_registry, counting_protocol
from rpcd.protocol import ConnectionLimits, RPCFactory, RPCProtocol
from rpcd.stats import LatencyHistogram


def frame(obj) -> bytes:
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack("!I", len(body)) + body


def service() -> SimpleNamespace:
    registry = Registry()
    registry.add("add", lambda a, b: a + b)
    dispatcher = Dispatcher(registry)
    factory = RPCFactory(dispatcher, ConnectionLimits(), Clock())
    return SimpleNamespace(registry=registry, dispatcher=dispatcher, factory=factory)


def samples(registry) -> dict:
    text = generate_latest(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[s.name, tuple(sorted(s.labels.items()))] = s.value
    return found


def connect(factory):
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


def test_histogram_buckets_are_exact_at_each_doubling():
    h = LatencyHistogram()
    for seconds in (10e-6, 100e-6, 1000e-6, 0.5, 1000.0):
        h.record(seconds, False)
    buckets = dict(_histogram(h)[0])
    assert buckets["1.6e-05"] == 1  # 10 µs
    assert buckets["6.4e-05"] == 1
    assert buckets["0.000128"] == 2  # 100 µs
    assert buckets["0.001024"] == 3  # 1 ms
    assert buckets["0.524288"] == 4  # 0.5 s
    assert buckets["67.108864"] == 4
    assert buckets["+Inf"] == 5  # past the last bound, still counted


def test_histogram_sum_is_exact():
    h = LatencyHistogram()
    for seconds in (0.003, 0.02, 0.2):
        h.record(seconds, False)
    total = _histogram(h)[1]
    assert abs(total - 0.223) < 1e-9


def test_the_counting_protocol_counts_frames_in_out_and_frame_errors():
    s = service()
    counts = Counts()
    s.factory.protocol = counting_protocol(RPCProtocol, counts)
    protocol, transport = connect(s.factory)
    protocol.dataReceived(frame({"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}))
    protocol.dataReceived(frame(b"{nope"))
    gevent.sleep(0)  # let the worker run the call
    assert counts.received == 2
    assert counts.sent == 2
    assert dict(s.factory.frame_errors) == {-32700: 1}
    assert b'"result":3' in transport.value()


def test_refusals_are_labelled_by_known_method_or_unknown_and_the_old_hook_kept():
    s = service()
    seen = []
    s.dispatcher.on_refused = lambda request, sink, error: seen.append(request.method)
    registry, collector = build_registry(s)
    collector.count_refusals()
    protocol, _ = connect(s.factory)
    protocol.dataReceived(frame({"jsonrpc": "2.0", "method": "made.up", "id": 1}))
    s.dispatcher._draining = True  # now every call is refused as shutting down
    protocol.dataReceived(frame({"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 2}))
    assert seen == ["made.up", "add"]
    found = samples(registry)
    assert found["rpcd_server_handled_total", (("code", "-32601"), ("method", "unknown"))] == 1
    assert found["rpcd_server_handled_total", (("code", "-32005"), ("method", "add"))] == 1
    assert found["rpcd_server_started_total", (("method", "unknown"),)] == 1
    assert found["rpcd_server_refused_total", (("reason", "shutting_down"),)] == 1
    assert found["rpcd_server_refused_total", (("reason", "method_not_found"),)] == 1
    assert not any("made.up" in str(labels) for _, labels in found)


def test_a_scrape_reads_calls_finished_and_in_flight():
    s = service()
    registry, _ = build_registry(s)
    protocol, _ = connect(s.factory)
    for i in range(3):
        protocol.dataReceived(frame({"jsonrpc": "2.0", "method": "add", "params": [i, 1], "id": i}))
    # Submitted, not yet run: in flight and started, not handled.
    found = samples(registry)
    assert found["rpcd_server_calls_in_flight", ()] == 3
    assert found["rpcd_server_started_total", (("method", "add"),)] == 3
    assert found["rpcd_server_connections", ()] == 1
    gevent.sleep(0)
    found = samples(registry)
    assert found["rpcd_server_calls_in_flight", ()] == 0
    assert found["rpcd_server_started_total", (("method", "add"),)] == 3
    assert found["rpcd_server_handled_total", (("code", "OK"), ("method", "add"))] == 3
    assert found["rpcd_server_handling_seconds_count", (("method", "add"),)] == 3
    assert found["rpcd_server_msg_received_total", ()] == 3


def test_frame_errors_are_read_from_the_factory_at_scrape_time():
    s = service()
    registry, _ = build_registry(s)
    protocol, _ = connect(s.factory)
    protocol.dataReceived(frame(b"{nope"))
    too_large, _ = connect(s.factory)
    too_large.dataReceived(b"\xff\xff\xff\xff")
    found = samples(registry)
    assert found["rpcd_server_frame_errors_total", (("code", "-32700"),)] == 1
    assert found["rpcd_server_frame_errors_total", (("code", "-32004"),)] == 1
