"""Call statistics: histogram percentiles, fixed memory, and the dispatcher's bookkeeping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpcd.dispatch import Dispatcher
from rpcd.methods import Registry
from rpcd.stats import _BOUNDS, FOLD_AT, JOURNAL_VALUES, CallStats, LatencyHistogram
from rpcd.wire import Request, RPCError
from tests.conftest import CollectingSink as Sink


def _succeeded(stats: CallStats, method: str, seconds: float) -> None:
    """As the dispatcher journals a call that succeeded, in line."""
    stats.journal += (method, seconds)
    if len(stats.journal) >= stats.due:
        stats.fold()


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
    _succeeded(stats, "add", 0.001)
    stats.failed("add", 0.002, -32602)
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
        _succeeded(stats, "m", seconds)
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
        _succeeded(stats, "m", 0.001)
        assert len(stats.journal) < JOURNAL_VALUES  # folded as it fills: memory does not grow
    histogram = stats.methods["m"]  # read: the journal folds first
    assert len(histogram.pending) < FOLD_AT
    assert histogram.count == 10 * FOLD_AT + 3
    assert stats.summary()["methods"]["m"]["count"] == 10 * FOLD_AT + 3
    assert 0.001 <= histogram.percentile(0.5) <= 0.001 * 1.19


def _dispatcher() -> Dispatcher:
    registry = Registry()
    registry.add("add", lambda a, b: a + b)
    registry.add("other", lambda: None)
    return Dispatcher(registry, max_workers=2, queue_size=100)


def test_figures_read_between_folds_count_every_call_made():
    dispatcher, sink = _dispatcher(), Sink()
    for i in range(5):  # far fewer than the journal holds before it folds
        dispatcher.submit(Request("add", (i, 1), i), sink)
    dispatcher.submit(Request("other", (), "o"), sink)
    dispatcher.submit(Request("add", (1,), "bad"), sink)
    sink.wait_count(7)
    assert dispatcher.stats.journal  # not folded yet: read now, the figures fold it
    summary = dispatcher.stats.summary()
    assert summary["methods"]["add"]["count"] == 6 and summary["methods"]["add"]["errors"] == 1
    assert summary["methods"]["other"]["count"] == 1 and summary["errors"] == {"-32602": 1}
    assert dispatcher.calls_total == 7
    histogram = dispatcher.stats.methods["add"]
    assert histogram.count == 6 and histogram.codes == {-32602: 1}
    dispatcher.stop_workers()


def test_the_journal_stays_bounded_when_no_one_reads_the_figures():
    dispatcher, sink = _dispatcher(), Sink()
    calls = 3 * JOURNAL_VALUES
    for i in range(calls):
        dispatcher.submit(Request("add", (i, 1), i), sink)
        if i % 50 == 49:
            sink.wait_count(i + 1)
            assert len(dispatcher.stats.journal) < JOURNAL_VALUES
    sink.wait_count(calls)
    assert len(dispatcher.stats.journal) < JOURNAL_VALUES
    assert dispatcher.stats.summary()["methods"]["add"]["count"] == calls
    dispatcher.stop_workers()


def test_a_follower_is_handed_every_call_once_in_order():
    from rpcd.stats import ERROR, ID, LOG_WIDTH, NAME, NO_ANSWER

    batches: list[list] = []
    dispatcher, sink = _dispatcher(), Sink()
    dispatcher.stats.follow(batches.append)
    dispatcher.submit(Request("add", (1, 2), 1), sink)
    sink.wait(1)
    dispatcher.submit(Request("add", (1,), 2), sink)  # fails: -32602
    sink.wait(2)
    with pytest.raises(RPCError):
        dispatcher.submit(Request("nosuch", (), 3), sink)  # refused: journaled too
    queued = dispatcher.submit(Request("add", (3, 4), 4), sink)
    dispatcher.cancel(queued)  # no answer is sent, but the call is counted
    summary = dispatcher.stats.summary()  # folds: the follower gets what is left
    facts = [value for batch in batches for value in batch]
    rows = [facts[i : i + LOG_WIDTH] for i in range(0, len(facts), LOG_WIDTH)]
    assert [row[ID] for row in rows] == [1, 2, 3, 4]
    assert [row[NAME] for row in rows] == ["add", "add", "nosuch", "add"]
    assert rows[0][ERROR] is None and rows[1][ERROR].code == -32602
    assert rows[2][ERROR].code == -32601 and rows[3][ERROR] is NO_ANSWER
    assert summary["methods"]["add"]["count"] == 3 and summary["methods"]["add"]["errors"] == 2
    assert summary["errors"] == {"-32602": 1, "-32601": 1, "-32006": 1}
    assert "nosuch" not in summary["methods"]
    dispatcher.stop_workers()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "".join(["a"])] + [f"m{i}" for i in range(12)])))
def test_a_batch_of_many_methods_counts_each_once(names):
    stats = CallStats()
    for name in names:  # "".join(["a"]): another object equal to "a", as a reloaded module's
        _succeeded(stats, name, 0.001)
    counts = {name: h.count for name, h in stats.methods.items()}
    assert counts == {name: names.count(name) for name in set(names)}
