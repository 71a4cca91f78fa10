"""Call statistics: histogram percentiles, fixed memory, and the dispatcher's bookkeeping."""

from __future__ import annotations

import pytest

from rpcd.dispatch import Dispatcher
from rpcd.methods import Registry
from rpcd.stats import CallStats, LatencyHistogram
from rpcd.wire import Request, RPCError
from tests.conftest import CollectingSink as Sink


def test_percentiles_within_a_bucket():
    h = LatencyHistogram()
    for ms in range(1, 101):  # 1..100 ms, uniformly
        h.record(ms / 1000, failed=False)
    assert h.count == 100 and h.max == pytest.approx(0.1)
    # A quarter-octave bucket: reported values are at most 19 % above the true percentile.
    assert 0.050 <= h.percentile(0.50) <= 0.050 * 1.19
    assert 0.099 <= h.percentile(0.99) <= 0.1
    summary = h.summary()
    assert summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"] == 100.0


def test_extremes_stay_in_fixed_memory():
    h = LatencyHistogram()
    size = len(h.buckets)
    for seconds in (0.0, 1e-9, 5e-7, 1e-6, 3600.0 * 24 * 365):
        h.record(seconds, failed=True)
    assert len(h.buckets) == size and h.count == 5 and h.errors == 5
    assert LatencyHistogram().percentile(0.5) == 0.0


def test_call_stats_counts_errors_by_code():
    stats = CallStats()
    stats.record("add", 0.001, None)
    stats.record("add", 0.002, -32602)
    stats.refused(-32601)
    summary = stats.summary()
    assert summary["errors"] == {"-32602": 1, "-32601": 1}
    assert summary["methods"]["add"]["count"] == 2 and summary["methods"]["add"]["errors"] == 1


def test_dispatcher_records_each_finished_call():
    registry = Registry()
    registry.add("add", lambda a, b: a + b)
    registry.add("fail", lambda: 1 / 0)
    dispatcher = Dispatcher(registry, max_workers=4, queue_size=10)
    sink = Sink()
    for i, (method, params) in enumerate([("add", (1, 2)), ("add", (1,)), ("fail", ())]):
        dispatcher.submit(Request(method, params, i), sink)
    with pytest.raises(RPCError):
        dispatcher.submit(Request("nosuch", (), 9), sink)
    sink.wait_count(3)
    summary = dispatcher.stats.summary()
    assert summary["methods"]["add"]["count"] == 2 and summary["methods"]["add"]["errors"] == 1
    assert summary["methods"]["fail"]["errors"] == 1
    assert summary["errors"] == {"-32603": 1, "-32602": 1, "-32601": 1}
    assert "nosuch" not in summary["methods"]  # client-chosen names never get a histogram
    dispatcher.stop_workers()
