"""`--processes N --metrics`: the supervisor's one /metrics, the sum of its workers' scrapes.

Each worker serves its own figures on a private UNIX socket (`--metrics unix:PATH:mode=600`
in a directory only rpcd's user can enter); when Prometheus scrapes the supervisor, it
scrapes every worker in parallel over HTTP, parses the text with prometheus_client's own
parser and emits one set of families, the way prometheus_client's multiprocess mode does:

- `rpcd_*` counters, histograms (buckets, `_sum`, `_count`) and gauges are summed over the
  workers, with no `worker` label, so `sum()` and `rate()` in a dashboard never count a
  worker twice and the series are the ones a single daemon has; `rpcd_build_info` takes the
  largest value (every worker runs the same rpcd);
- the per-process families (`process_*`, `python_*`: memory, CPU, fds, start time, GC)
  mean nothing summed, so they are kept per worker under a distinct name,
  `rpcd_worker_process_*{worker}`; the unprefixed `process_*` are the supervisor's own.

Counters stay monotonic across restarts: the supervisor keeps each worker's last figures,
and when a worker exits they join the figures of the workers gone, added to every later
scrape (what the worker counted after its last scrape is lost; a counter never goes back).
A worker that does not answer within metrics_scrape_timeout is counted in
`rpcd_supervisor_scrape_errors_total`; its last counters are used and its gauges left out.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from rpcd import adopt
from rpcd.config import public_address

log = Logger()

# How long the supervisor waits for one worker's figures: a worker whose loop is blocked must
# not stall the scrape (Prometheus' own scrape_timeout defaults to 10 s).
SCRAPE_TIMEOUT = 2.0
WORKER_PREFIX = "rpcd_worker_"
_SUMMED_TYPES = {"counter", "histogram", "gauge"}
_MONOTONIC_TYPES = {"counter", "histogram"}
_MAX_OF = {"rpcd_build_info"}


class Family:
    """One metric family's metadata and its samples, {(sample name, labels): value}."""

    __slots__ = ("name", "type", "documentation", "samples")

    def __init__(self, name: str, type: str, documentation: str) -> None:
        self.name = name
        self.type = type
        self.documentation = documentation
        self.samples: dict[tuple[str, tuple], float] = {}


Figures = dict  # family name -> Family


def parse(text: str) -> Figures:
    """A worker's scrape, as families keyed by name (prometheus_client's text parser)."""
    figures: Figures = {}
    for parsed in text_string_to_metric_families(text):
        family = figures.get(parsed.name)
        if family is None:
            family = figures[parsed.name] = Family(parsed.name, parsed.type, parsed.documentation)
        for s in parsed.samples:
            family.samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return figures


def add(into: Figures, figures: Figures, types: Iterable[str] = _SUMMED_TYPES) -> None:
    """Add the `rpcd_*` families of `figures` (of the given types) into `into`."""
    for name, family in figures.items():
        if not name.startswith("rpcd_") or family.type not in types:
            continue
        total = into.get(name)
        if total is None:
            total = into[name] = Family(name, family.type, family.documentation)
        samples = total.samples
        if name in _MAX_OF:
            for key, v in family.samples.items():
                samples[key] = max(samples.get(key, v), v)
        else:
            for key, v in family.samples.items():
                samples[key] = samples.get(key, 0.0) + v


def per_worker(figures: Figures, slot: int) -> Iterator[Family]:
    """A worker's per-process families renamed `rpcd_worker_*`, labelled with its slot."""
    for name, family in figures.items():
        if name.startswith("rpcd_"):
            continue
        renamed = Family(WORKER_PREFIX + name, family.type, family.documentation)
        for (sample, labels), v in family.samples.items():
            key = (WORKER_PREFIX + sample, (("worker", str(slot)), *labels))
            renamed.samples[key] = v
        yield renamed


def _order(item: tuple[tuple[str, tuple], float]) -> tuple:
    """One order whichever worker answered first: series by labels, each series' samples
    together, a histogram's buckets by bound before its _count and _sum."""
    (sample, labels), _ = item
    le = dict(labels).get("le")
    series = tuple(pair for pair in labels if pair[0] != "le")
    bound = float(le) if le is not None else 0.0
    return series, not sample.endswith("_bucket"), sample, bound


def to_metric(family: Family) -> Metric:
    metric = Metric(family.name, family.documentation, family.type)
    for (sample, labels), v in sorted(family.samples.items(), key=_order):
        metric.add_sample(sample, dict(labels), v)
    return metric


class Totals:
    """Sans-IO: the workers' last figures, the figures of the workers gone, their sum."""

    def __init__(self) -> None:
        self.last: dict[Any, Figures] = {}  # worker -> its last figures
        self.gone: Figures = {}  # counters and histograms of the workers that exited
        self.scrape_errors = 0

    def answered(self, worker: Any, figures: Figures) -> None:
        self.last[worker] = figures

    def unanswered(self, worker: Any) -> None:
        self.scrape_errors += 1

    def exited(self, worker: Any) -> None:
        figures = self.last.pop(worker, None)
        if figures is not None:
            add(self.gone, figures, _MONOTONIC_TYPES)

    def families(self, fresh: Iterable[Any], current: dict[int, Any]) -> list[Family]:
        """The sum: gauges of the workers that answered this time (`fresh`), counters and
        histograms of every worker's last figures and of the workers gone; then the
        per-process families of the current worker of each slot that answered."""
        fresh = set(fresh)
        total: Figures = {}
        add(total, self.gone)
        for worker, figures in self.last.items():
            add(total, figures, _SUMMED_TYPES if worker in fresh else _MONOTONIC_TYPES)
        out = [total[name] for name in sorted(total)]
        for slot in sorted(current):
            worker = current[slot]
            if worker in fresh and worker in self.last:
                out.extend(per_worker(self.last[worker], slot))
        return _merge_same_names(out)


def _merge_same_names(families: list[Family]) -> list[Family]:
    """One family per name (the per-worker families of several slots become one)."""
    merged: dict[str, Family] = {}
    for family in families:
        seen = merged.get(family.name)
        if seen is None:
            merged[family.name] = family
        else:
            seen.samples.update(family.samples)
    return list(merged.values())


class _UNIXEndpoints:
    """An Agent's endpoint factory: every URI goes to one UNIX socket."""

    def __init__(self, reactor: Any, path: str, timeout: float) -> None:
        self.reactor, self.path, self.timeout = reactor, path, timeout

    def endpointForURI(self, uri: Any) -> Any:
        return endpoints.UNIXClientEndpoint(self.reactor, self.path, timeout=self.timeout)


def fetch(reactor: Any, path: str, timeout: float = SCRAPE_TIMEOUT) -> defer.Deferred:
    """GET /metrics from the worker serving on UNIX socket `path`: its text, within `timeout`."""
    from twisted.web.client import Agent, readBody

    agent = Agent.usingEndpointFactory(reactor, _UNIXEndpoints(reactor, path, timeout))
    d = agent.request(b"GET", b"http://worker/metrics")

    def body(response: Any) -> defer.Deferred:
        def checked(raw: bytes) -> bytes:
            if response.code != 200:
                raise RuntimeError(f"HTTP {response.code}")
            return raw

        return readBody(response).addCallback(checked)  # read whole: the connection closes

    d.addCallback(body)
    d.addCallback(lambda raw: raw.decode())
    return d.addTimeout(timeout, reactor)


class SupervisorCollector:
    """The supervisor's own figures: scrape errors, workers, restarts."""

    def __init__(self, supervisor: Any, totals: Totals) -> None:
        self.supervisor, self.totals = supervisor, totals

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "rpcd_supervisor_scrape_errors_total",
            "Worker scrapes not answered within metrics_scrape_timeout (left out of the sum).",
            value=self.totals.scrape_errors,
        )
        yield CounterMetricFamily(
            "rpcd_supervisor_restarts_total",
            "Workers restarted after an unexpected exit.",
            value=self.supervisor.restarted,
        )
        yield GaugeMetricFamily(
            "rpcd_supervisor_workers",
            "Workers listening now.",
            value=sum(1 for w in self.supervisor.workers.values() if w.is_ready),
        )


class _Summed:
    """A collector yielding the families of one scrape (set just before encoding)."""

    def __init__(self) -> None:
        self.families: list[Family] = []

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield to_metric(family)


class SummedMetricsPage(Resource):
    """GET /metrics on the supervisor: scrape the workers in parallel, then answer the sum."""

    isLeaf = True

    def __init__(self, metrics: SupervisorMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Any) -> Any:
        encoder, content_type = choose_encoder(request.getHeader("accept"))
        finished: list = []
        request.notifyFinish().addBoth(finished.append)  # the scraper may hang up first

        def answer(outcome: Any) -> None:
            if finished:
                return
            if isinstance(outcome, Failure):  # a bug, not a worker's miss: say so, answer
                log.failure("rpcd supervisor: metrics scrape", outcome)
                request.setResponseCode(500)
                request.write(b"rpcd supervisor: metrics scrape failed (see its log)\n")
            else:
                request.setHeader("content-type", content_type)
                request.write(encoder(self.metrics.registry))
            request.finish()

        self.metrics.refresh().addBoth(answer)
        return NOT_DONE_YET


class SupervisorMetrics:
    """The supervisor's /metrics endpoint and the private sockets of its workers."""

    def __init__(
        self, supervisor: Any, endpoint: str, fetch: Any = fetch, timeout: float = SCRAPE_TIMEOUT
    ) -> None:
        self.supervisor = supervisor
        self.reactor = supervisor.reactor
        self.endpoint = endpoint
        self.fetch = fetch
        self.timeout = timeout  # per worker: metrics_scrape_timeout
        self.totals = Totals()
        self.summed = _Summed()
        self.registry = CollectorRegistry()
        self.registry.register(self.summed)
        self.registry.register(SupervisorCollector(supervisor, self.totals))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.directory: str | None = None
        self.port: Any = None
        self._spawned = 0

    def bind(self) -> None:
        """Listen on the endpoint now, before twistd daemonizes (raises ListenError)."""
        if self.port is not None:
            return
        root = Resource()
        root.putChild(b"metrics", SummedMetricsPage(self))
        site = Site(root)
        site.noisy = False
        site.log = lambda request: None  # a scrape every few seconds is not worth a log line
        outcome: list = []
        d = endpoints.serverFromString(self.reactor, self.endpoint).listen(site)
        d.addBoth(outcome.append)
        (result,) = outcome  # tcp: and unix: bind synchronously
        if isinstance(result, Failure):
            if result.check(CannotListenError):
                errno = getattr(result.value.socketError, "errno", None)
                why = os.strerror(errno).lower() if errno else str(result.value.socketError)
            else:
                why = result.getErrorMessage()
            raise adopt.ListenError(f"cannot listen on {self.endpoint} (--metrics): {why}")
        self.port = result
        self.directory = tempfile.mkdtemp(prefix="rpcd-metrics-")  # mode 0700: ours only
        if public_address(self.endpoint) is not None:
            log.warn("metrics on {endpoint} are readable by other hosts", endpoint=self.endpoint)
        log.info("rpcd supervisor: metrics of every worker on {e} at /metrics", e=self.endpoint)

    def worker_option(self, worker: Any) -> list[str]:
        """The worker's `--metrics`: a socket of its own (a new one per process: during a
        SIGHUP the old worker of a slot still holds its own)."""
        assert self.directory is not None
        self._spawned += 1
        worker.metrics_path = os.path.join(self.directory, f"w{worker.slot}-{self._spawned}.sock")
        return ["--metrics", f"unix:{worker.metrics_path}:mode=600"]

    def exited(self, worker: Any) -> None:
        self.totals.exited(worker)
        path = worker.metrics_path
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass

    def refresh(self) -> defer.Deferred:
        """Scrape every listening worker in parallel; fires once each answered or timed out."""
        sup = self.supervisor
        current = dict(sup.workers)
        targets = [
            w
            for w in [*current.values(), *sup.retired]
            if w.is_ready and not w.ended.called and w.metrics_path
        ]
        fresh: list = []

        def got(figures: Figures, worker: Any) -> None:
            if worker.ended.called:  # exited meanwhile: its last figures are in Totals.gone
                return
            self.totals.answered(worker, figures)
            fresh.append(worker)

        def missed(failure: Any, worker: Any) -> None:
            # A retired worker closes its metrics socket while it drains: no error then.
            if current.get(worker.slot) is worker:
                self.totals.unanswered(worker)
                log.warn(
                    "rpcd supervisor: worker {slot} (pid {pid}) metrics not read: {why}",
                    slot=worker.slot,
                    pid=worker.pid,
                    why=failure.getErrorMessage() or failure.type.__name__,
                )

        scrapes = []
        for worker in targets:
            d = self.fetch(self.reactor, worker.metrics_path, self.timeout).addCallback(parse)
            d.addCallbacks(got, missed, callbackArgs=(worker,), errbackArgs=(worker,))
            scrapes.append(d)

        def summed(_: Any) -> None:
            # A worker that exited during the scrape counts only in Totals.gone.
            live = [w for w in fresh if w in self.totals.last]
            self.summed.families = self.totals.families(live, current)

        return defer.DeferredList(scrapes).addCallback(summed)

    def close(self) -> None:
        if self.port is not None:
            self.port.stopListening()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


__all__ = ["SupervisorMetrics", "Totals", "fetch", "parse"]
