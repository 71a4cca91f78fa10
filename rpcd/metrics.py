"""Prometheus metrics: a collector reading rpcd's own counters at scrape time, served over HTTP.

Names follow go-grpc-prometheus with an `rpcd_` prefix, so dashboards written for gRPC
servers read rpcd with a change of prefix. Nothing is counted per call for them: the
dispatcher already keeps per-method counts and a latency histogram (`rpcd.stats`), and the
collector turns those into metric families when Prometheus scrapes, and the connection
factory counts frame-level errors. What rpcd does not keep is counted here, as cheaply as it
can be from outside: refused calls (a hook on the refusal path only) and frames in and out (a
subclass of the connection's protocol, installed only when --metrics is on).

Labels stay bounded: `method` is a registered method's name, or "unknown" for a name a client
made up; `code` is "OK" or the JSON-RPC error code; `reason` is one of a fixed few.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry
from twisted.application import strports
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

import rpcd
from rpcd.config import public_address
from rpcd.wire import METHOD_NOT_FOUND, SERVER_BUSY, SHUTTING_DOWN

log = Logger()

UNKNOWN_METHOD = "unknown"
# Histogram bounds: every doubling from 16 µs to about 67 s. They fall on bucket edges of
# rpcd.stats.LatencyHistogram (four per doubling from 1 µs), so each cumulative count is exact.
_OCTAVES = range(4, 27)
_PER_OCTAVE = 4
_BOUNDS = [(repr(2.0**k / 1e6), k * _PER_OCTAVE) for k in _OCTAVES]
_REFUSAL_REASONS = {
    SERVER_BUSY: "server_busy",
    SHUTTING_DOWN: "shutting_down",
    METHOD_NOT_FOUND: "method_not_found",
}


class Counts:
    """What rpcd's own statistics do not count yet: frames in and out, frame-level errors,
    calls refused before they were queued (by method label and code)."""

    __slots__ = ("received", "sent", "refused")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
        self.refused: Counter = Counter()  # (method label, code) -> calls


def counting_protocol(base: type, counts: Counts) -> type:
    """`base` (the connection protocol) counting its frames into `counts`.

    Paid only with --metrics on: about 0.25 µs per call (a frame in, a frame out), the base
    methods taken once here so each frame costs one extra call and no attribute lookups.
    """
    received, sent = base.stringReceived, base.sendString

    class CountingProtocol(base):
        def stringReceived(self, body: bytes) -> None:
            counts.received += 1
            received(self, body)

        def sendString(self, string: bytes) -> None:
            counts.sent += 1
            sent(self, string)

    CountingProtocol.__name__ = CountingProtocol.__qualname__ = base.__name__
    return CountingProtocol


class RPCDCollector:
    """Reads the running service's figures at scrape time (in the reactor's thread)."""

    def __init__(self, service: Any, counts: Counts) -> None:
        self.service = service
        self.counts = counts

    def count_refusals(self) -> None:
        """Count calls refused at submit from now on, keeping the hook already there."""
        dispatcher, registry = self.service.dispatcher, self.service.registry
        previous = dispatcher.on_refused
        refused = self.counts.refused

        def on_refused(request: Any, sink: Any, error: Any) -> None:
            name = request.method if request.method in registry else UNKNOWN_METHOD
            refused[name, error.code] += 1
            if previous is not None:
                previous(request, sink, error)

        dispatcher.on_refused = on_refused

    def collect(self) -> Iterator[Metric]:
        service, counts = self.service, self.counts
        dispatcher, factory = service.dispatcher, service.factory
        methods = dispatcher.stats.methods

        in_flight: Counter = Counter(call.method.name for call in dispatcher.in_flight_calls())
        started = CounterMetricFamily(
            "rpcd_server_started_total",
            "Calls that reached the dispatcher, by method (refused ones included).",
            labels=["method"],
        )
        handled = CounterMetricFamily(
            "rpcd_server_handled_total",
            'Calls answered, by method and code ("OK" or the JSON-RPC error code).',
            labels=["method", "code"],
        )
        seconds = HistogramMetricFamily(
            "rpcd_server_handling_seconds",
            "Time from a call's acceptance (queue wait included) to its answer, by method.",
            labels=["method"],
        )
        refused_by_method: Counter = Counter()
        for (name, code), n in counts.refused.items():
            refused_by_method[name] += n
            handled.add_metric([name, str(code)], n)
        for name in sorted(set(methods) | set(in_flight) | set(refused_by_method)):
            histogram = methods.get(name)
            finished = histogram.count if histogram is not None else 0
            started.add_metric([name], finished + in_flight[name] + refused_by_method[name])
            if histogram is None:
                continue
            handled.add_metric([name, "OK"], histogram.count - histogram.errors)
            for code, n in sorted(histogram.codes.items()):
                handled.add_metric([name, str(code)], n)
            seconds.add_metric([name], *_histogram(histogram))
        yield started
        yield handled
        yield seconds

        yield CounterMetricFamily(
            "rpcd_server_msg_received_total",
            "Frames received (a batch is one frame).",
            value=counts.received,
        )
        yield CounterMetricFamily(
            "rpcd_server_msg_sent_total",
            "Frames sent: replies, batch replies, stream items, error frames.",
            value=counts.sent,
        )
        frame_errors = CounterMetricFamily(
            "rpcd_server_frame_errors_total",
            "Frames answered with an error and no call: unparsable, not a request, too large.",
            labels=["code"],
        )
        for code, n in sorted(factory.frame_errors.items()):
            frame_errors.add_metric([str(code)], n)
        yield frame_errors

        refusals = CounterMetricFamily(
            "rpcd_server_refused_total",
            "Connections and calls refused, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(factory.refused.items()):
            refusals.add_metric([reason], n)
        by_reason: Counter = Counter()
        for (_, code), n in counts.refused.items():
            by_reason[_REFUSAL_REASONS.get(code, f"code_{code}")] += n
        for reason, n in sorted(by_reason.items()):
            refusals.add_metric([reason], n)
        yield refusals

        yield CounterMetricFamily(
            "rpcd_server_connections_accepted_total",
            "Connections accepted.",
            value=factory.accepted,
        )
        yield GaugeMetricFamily(
            "rpcd_server_connections", "Open connections.", value=len(factory.connections)
        )
        yield GaugeMetricFamily(
            "rpcd_server_calls_in_flight",
            "Calls accepted and not yet answered (queued or running).",
            value=dispatcher.in_flight,
        )
        yield GaugeMetricFamily(
            "rpcd_server_calls_queued", "Calls waiting for a worker.", value=dispatcher.queued
        )
        yield GaugeMetricFamily(
            "rpcd_server_workers_busy", "Worker greenlets running a call.", value=dispatcher.busy
        )
        yield GaugeMetricFamily(
            "rpcd_server_workers",
            "Worker greenlets started (they are kept warm).",
            value=dispatcher.workers,
        )
        info = GaugeMetricFamily("rpcd_build_info", "rpcd's version.", labels=["version"])
        info.add_metric([rpcd.__version__], 1)
        yield info


def _histogram(histogram: Any) -> tuple[list[tuple[str, float]], float]:
    """Cumulative buckets and the sum of a stats.LatencyHistogram, in seconds."""
    counts = histogram.buckets
    buckets = []
    seen, edge = 0, 0
    for bound, index in _BOUNDS:
        seen += sum(counts[edge : index + 1])
        edge = index + 1
        buckets.append((bound, seen))
    buckets.append(("+Inf", histogram.count))
    total = histogram.sum
    return buckets, total


def build_registry(service: Any) -> tuple[CollectorRegistry, RPCDCollector]:
    """A registry with rpcd's collector (and the process and platform collectors): the one
    scrape of this process. Installs the frame counting on the service's factory."""
    counts = Counts()
    factory = service.factory
    factory.protocol = counting_protocol(factory.protocol, counts)
    registry = CollectorRegistry()
    collector = RPCDCollector(service, counts)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry, collector


class MetricsPage(Resource):
    """Renders a registry in the format the scraper asks for (text or OpenMetrics).

    prometheus_client.twisted's resource runs the exposition in the reactor's thread pool;
    rpcd's figures live in the reactor's thread, so this renders there instead (a scrape
    takes well under a millisecond).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:
        encoder, content_type = choose_encoder(request.getHeader("accept"))
        request.setHeader("content-type", content_type)
        return encoder(self.registry)


class MetricsService(MultiService):
    """GET /metrics on one endpoint; a child of the RPC service, so it stops with it."""

    def __init__(self, service: Any, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.registry, self.collector = build_registry(service)
        root = Resource()
        root.putChild(b"metrics", MetricsPage(self.registry))
        site = Site(root)
        site.noisy = False
        site.log = lambda request: None  # a scrape every few seconds is not worth a log line
        port = strports.service(endpoint, site, reactor=service.reactor)
        port.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        # Now, not earlier: makeService has set the access log's refusal hook, which is kept.
        self.collector.count_refusals()
        if public_address(self.endpoint) is not None:
            log.warn("metrics on {endpoint} are readable by other hosts", endpoint=self.endpoint)
        log.info("rpcd metrics on {endpoint} at /metrics", endpoint=self.endpoint)
