"""Call statistics: histogram percentiles, fixed memory, and the dispatcher's bookkeeping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpcd.dispatch import Dispatcher
from rpcd.methods import Registry
from rpcd.stats import _BOUNDS, FOLD_AT, CallStats, LatencyHistogram
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


def _bucket_of(seconds: float) -> int:
    """The bucket a latency belongs in, one at a time (the definition the folding must keep)."""
    return sum(1 for bound in _BOUNDS if bound <= seconds)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.floats(min_value=0, max_value=1e4)
        | st.sampled_from(_BOUNDS)  # a latency on a bucket's lower bound belongs in that bucket
        | st.integers(0, 40).map(lambda i: 2.0 ** (i / 4) / 1e6),
        max_size=3 * FOLD_AT,
    )
)
def test_latencies_land_in_their_buckets_however_they_are_folded(latencies):
    h = LatencyHistogram()
    stats = CallStats()
    expected = [0] * len(h.buckets)
    for i, seconds in enumerate(latencies):
        h.record(seconds)
        stats.record("m", seconds, None)
        expected[_bucket_of(seconds)] += 1
        if i % 97 == 0:
            assert h.count == i + 1  # read between folds: every latency recorded counts
    for histogram in (h, stats.methods.get("m", LatencyHistogram())):
        assert histogram.count == len(latencies)
        assert histogram.buckets == expected
        assert histogram.sum == pytest.approx(sum(latencies))
        assert histogram.max == max(latencies, default=0.0)


def test_pending_latencies_stay_bounded_and_show_in_every_figure():
    stats = CallStats()
    for _ in range(10 * FOLD_AT + 3):
        stats.record("m", 0.001, None)
    histogram = stats.methods["m"]
    assert len(histogram.pending) < FOLD_AT  # folded as it filled: memory does not grow
    assert histogram.count == 10 * FOLD_AT + 3
    assert stats.summary()["methods"]["m"]["count"] == 10 * FOLD_AT + 3
    assert 0.001 <= histogram.percentile(0.5) <= 0.001 * 1.19
