"""rpcd.metrics_sum without processes: what is summed, what stays per worker, restarts, misses."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from rpcd.metrics_sum import SummedMetricsPage, SupervisorMetrics, Totals, parse


def worker_text(calls: int, in_flight: int, fds: int, le_01: int | None = None) -> str:
    le_01 = calls if le_01 is None else le_01
    return f"""\
# HELP rpcd_server_handled_total Calls answered.
# TYPE rpcd_server_handled_total counter
rpcd_server_handled_total{{method="add",code="OK"}} {calls}
# HELP rpcd_server_handling_seconds Time.
# TYPE rpcd_server_handling_seconds histogram
rpcd_server_handling_seconds_bucket{{method="add",le="0.1"}} {le_01}
rpcd_server_handling_seconds_bucket{{method="add",le="+Inf"}} {calls}
rpcd_server_handling_seconds_sum{{method="add"}} {calls * 0.01}
rpcd_server_handling_seconds_count{{method="add"}} {calls}
# HELP rpcd_server_calls_in_flight In flight.
# TYPE rpcd_server_calls_in_flight gauge
rpcd_server_calls_in_flight {in_flight}
# HELP rpcd_build_info Version.
# TYPE rpcd_build_info gauge
rpcd_build_info{{version="9.9"}} 1
# HELP process_open_fds Open fds.
# TYPE process_open_fds gauge
process_open_fds {fds}
"""


def flat(families) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families
        for s in family.samples
    }


def summed(totals: Totals, fresh, current) -> dict:
    return {
        (name, tuple(sorted(labels))): v
        for family in totals.families(fresh, current)
        for (name, labels), v in family.samples.items()
    }


HANDLED = ("rpcd_server_handled_total", (("code", "OK"), ("method", "add")))
COUNT = ("rpcd_server_handling_seconds_count", (("method", "add"),))
LE_01 = ("rpcd_server_handling_seconds_bucket", (("le", "0.1"), ("method", "add")))
IN_FLIGHT = ("rpcd_server_calls_in_flight", ())
INFO = ("rpcd_build_info", (("version", "9.9"),))


def test_counters_histograms_and_gauges_are_summed_with_no_worker_label():
    totals = Totals()
    a, b = object(), object()
    totals.answered(a, parse(worker_text(3, 1, 10, le_01=2)))
    totals.answered(b, parse(worker_text(4, 2, 20)))
    found = summed(totals, [a, b], {0: a, 1: b})
    assert found[HANDLED] == 7
    assert found[COUNT] == 7 and found[LE_01] == 6
    assert found["rpcd_server_handling_seconds_sum", (("method", "add"),)] == 0.07
    assert found[IN_FLIGHT] == 3
    assert found[INFO] == 1  # every worker runs the same rpcd: the largest, not the sum
    # Per-process figures mean nothing summed: per worker, under a name of their own.
    assert found["rpcd_worker_process_open_fds", (("worker", "0"),)] == 10
    assert found["rpcd_worker_process_open_fds", (("worker", "1"),)] == 20
    assert ("process_open_fds", ()) not in found
    assert not any(dict(labels).get("worker") for name, labels in found if "server" in name)


def test_a_worker_gone_leaves_its_counters_so_they_never_go_back():
    totals = Totals()
    a, b = object(), object()
    totals.answered(a, parse(worker_text(5, 1, 10)))
    totals.answered(b, parse(worker_text(4, 2, 20)))
    before = summed(totals, [a, b], {0: a, 1: b})
    totals.exited(a)
    restarted = object()  # the new worker of slot 0 starts from zero
    totals.answered(restarted, parse(worker_text(1, 0, 11)))
    after = summed(totals, [restarted, b], {0: restarted, 1: b})
    assert before[HANDLED] == 9 and after[HANDLED] == 10
    assert after[COUNT] == 10
    assert after[IN_FLIGHT] == 2  # a gauge of a worker gone is gone with it
    assert after["rpcd_worker_process_open_fds", (("worker", "0"),)] == 11


def test_a_worker_that_did_not_answer_keeps_its_counters_not_its_gauges():
    totals = Totals()
    a, b = object(), object()
    totals.answered(a, parse(worker_text(5, 1, 10)))
    totals.answered(b, parse(worker_text(4, 2, 20)))
    totals.unanswered(b)
    found = summed(totals, [a], {0: a, 1: b})
    assert totals.scrape_errors == 1
    assert found[HANDLED] == 9  # b's last counters: a counter never drops for a miss
    assert found[IN_FLIGHT] == 1
    assert ("rpcd_worker_process_open_fds", (("worker", "1"),)) not in found


class FakeWorker:
    def __init__(self, slot: int, pid: int, path: str) -> None:
        self.slot, self.pid, self.metrics_path = slot, pid, path
        self.is_ready = True
        self.ended = defer.Deferred()


def test_one_scrape_asks_every_worker_at_once_and_counts_a_miss(tmp_path):
    a, b = FakeWorker(0, 100, "a.sock"), FakeWorker(1, 101, "b.sock")
    sup = SimpleNamespace(reactor=Clock(), workers={0: a, 1: b}, retired=set(), restarted=3)
    asked: dict[str, defer.Deferred] = {}
    metrics = SupervisorMetrics(
        sup, "tcp:0", fetch=lambda r, path, timeout: asked.setdefault(path, defer.Deferred())
    )
    page = SummedMetricsPage(metrics)
    request = DummyRequest([b"metrics"])
    assert page.render_GET(request) is NOT_DONE_YET
    assert sorted(asked) == ["a.sock", "b.sock"]  # in parallel, before either answered
    asked["a.sock"].callback(worker_text(2, 0, 5))
    assert not request.finished
    asked["b.sock"].errback(defer.TimeoutError("no answer"))
    assert request.finished
    found = flat(text_string_to_metric_families(b"".join(request.written).decode()))
    assert found[HANDLED] == 2
    assert found["rpcd_supervisor_scrape_errors_total", ()] == 1
    assert found["rpcd_supervisor_restarts_total", ()] == 3
    assert found["rpcd_supervisor_workers", ()] == 2
    assert found["process_open_fds", ()] > 0  # the supervisor's own


def test_a_retired_worker_that_closed_its_socket_is_no_error():
    old, new = FakeWorker(0, 100, "old.sock"), FakeWorker(0, 101, "new.sock")
    sup = SimpleNamespace(reactor=Clock(), workers={0: new}, retired={old}, restarted=0)
    asked: dict[str, defer.Deferred] = {}
    metrics = SupervisorMetrics(
        sup, "tcp:0", fetch=lambda r, path, timeout: asked.setdefault(path, defer.Deferred())
    )
    done = metrics.refresh()
    asked["old.sock"].errback(ConnectionRefusedError())
    asked["new.sock"].callback(worker_text(1, 0, 5))
    assert done.called and metrics.totals.scrape_errors == 0
    text = generate_latest(metrics.registry).decode()
    assert flat(text_string_to_metric_families(text))[HANDLED] == 1


def test_series_come_out_in_one_order_whichever_worker_answered_first():
    totals = Totals()
    a, b = FakeWorker(0, 100, "a"), FakeWorker(1, 101, "b")
    totals.answered(b, parse(worker_text(3, 0, 5).replace('method="add"', 'method="mul"')))
    totals.answered(a, parse(worker_text(2, 0, 5)))
    metrics = SupervisorMetrics(
        SimpleNamespace(reactor=Clock(), workers={}, retired=set(), restarted=0), "tcp:0"
    )
    metrics.summed.families = totals.families([a, b], {0: a, 1: b})
    text = generate_latest(metrics.registry).decode()
    lines = [line for line in text.splitlines() if line.startswith("rpcd_server_handling")]
    methods = [line.split('method="')[1].split('"')[0] for line in lines]
    assert methods == ["add"] * 4 + ["mul"] * 4  # by labels, one series after the other
    assert lines[0].startswith("rpcd_server_handling_seconds_bucket") and "0.1" in lines[0]
    found = flat(text_string_to_metric_families(text))
    assert found["rpcd_server_handling_seconds_count", (("method", "mul"),)] == 3
