"""The Dispatcher under gevent: concurrency, queue limit, faults, timeout, cancel, Deferreds,
streams, drain.

The test process is not monkey-patched: methods block with gevent primitives, and the test
hands the hub control with `gevent.idle()` or waits for a reply with a bounded timeout.
"""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from gevent.event import Event
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from rpcd.dispatch import Dispatcher
from rpcd.methods import Registry
from rpcd.wire import (
    CALL_TIMEOUT,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    SERVER_BUSY,
    SHUTTING_DOWN,
    Request,
    Response,
    RPCError,
)
from tests.conftest import CollectingSink as Sink


class Methods:
    """The methods under test, with the gates and records a test steers them by."""

    def __init__(self) -> None:
        self.gates: dict[str, Event] = {}
        self.running = 0
        self.most_running = 0
        self.finished: list[str] = []
        self.deferreds: dict[str, Deferred] = {}
        self.registry = Registry()
        for name in (
            "hold",
            "echo",
            "stubborn",
            "boom",
            "deep_type_error",
            "deferred",
            "coroutine",
            "countdown",
            "add",
        ):
            self.registry.add(name, getattr(self, name))

    def gate(self, name: str) -> Event:
        return self.gates.setdefault(name, Event())

    def hold(self, name):
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            self.gate(name).wait()
        finally:
            self.running -= 1
        self.finished.append(name)
        return name

    def echo(self, value):
        return value

    def add(self, a, b):
        return a + b

    def stubborn(self):
        while True:
            try:
                gevent.sleep(0.01)
            except Exception:
                pass

    def boom(self):
        raise KeyError("secret-detail")

    def deep_type_error(self, value):
        return len(value)  # TypeError from inside the method, not from binding

    def deferred(self, name):
        d = self.deferreds[name] = Deferred()
        return d

    async def coroutine(self, name):
        d = self.deferreds[name] = Deferred()
        value = await d
        if value == "raise":
            raise ValueError("from a coroutine")
        return value * 2

    def countdown(self, n):
        for i in range(n, 0, -1):
            gevent.sleep(0)
            yield i
        return "liftoff"


@pytest.fixture
def methods():
    return Methods()


def dispatcher_for(methods: Methods, **kwargs: Any) -> Dispatcher:
    return Dispatcher(methods.registry, **kwargs)


def req(method: str, *params: Any, id: Any = 1) -> Request:
    return Request(method, params, id)


def test_calls_run_concurrently(methods):
    dispatcher, sink = dispatcher_for(methods), Sink()
    for i in range(20):
        dispatcher.submit(req("hold", "all", id=i), sink)
    gevent.idle()
    assert methods.running == 20 and dispatcher.busy == 20
    methods.gate("all").set()
    for i in range(20):
        assert sink.wait(i).result == "all"
    assert methods.most_running == 20 and dispatcher.in_flight == 0


def test_workers_start_on_demand_and_stay_warm(methods):
    dispatcher, sink = dispatcher_for(methods, max_workers=50), Sink()
    assert dispatcher.workers == 0
    for i in range(3):
        dispatcher.submit(req("echo", i, id=i), sink)
    gevent.idle()
    assert dispatcher.workers == 3 and len(sink.responses) == 3
    for i in range(3, 6):
        dispatcher.submit(req("echo", i, id=i), sink)
    gevent.idle()
    assert dispatcher.workers == 3 and len(sink.responses) == 6
    dispatcher.stop_workers()
    gevent.idle()
    assert dispatcher.workers == 0


def test_a_sink_may_hold_a_reply_only_when_its_own_call_comes_next(methods):
    # A reply that no call of its sink follows in the burst is written at once: holding it
    # would save that sink no write.
    dispatcher = dispatcher_for(methods, max_workers=1, workers_prestart=1)
    gevent.idle()  # the worker parks
    seen = []
    methods.registry.add("seen", lambda tag: seen.append((tag, dispatcher.bursting)))
    a, b = Sink(), Sink()
    for tag, sink in (("a1", a), ("b1", b), ("b2", b), ("a2", a)):
        dispatcher.submit(req("seen", tag, id=tag), sink)
    dispatcher.stop_workers()  # queued after a2: the worker's stop, no sink's call
    gevent.idle()
    assert seen == [("a1", False), ("b1", True), ("b2", False), ("a2", False)]
    assert len(a.responses) == len(b.responses) == 2 and dispatcher.workers == 0


def test_no_burst_outlasts_the_worker_that_parks(methods):
    # Its last call followed only by a cancelled one of the same sink: once the worker parks,
    # replies sent from outside a worker (refusals, cancels, stream items) are not held.
    dispatcher = dispatcher_for(methods, max_workers=1, workers_prestart=1)
    gevent.idle()
    sink = Sink()
    dispatcher.submit(req("echo", 1, id=1), sink)
    dispatcher.cancel(dispatcher.submit(req("echo", 2, id=2), sink))  # queued: done at once
    gevent.idle()
    assert list(sink.responses) == [1] and not dispatcher.bursting  # the cancel was silent


def test_prestarted_workers_park_at_once_and_take_the_first_calls(methods):
    dispatcher, sink = dispatcher_for(methods, max_workers=50, workers_prestart=4), Sink()
    assert dispatcher.workers == 4
    gevent.idle()
    assert len(dispatcher._parked) == 4 and dispatcher.busy == 0
    for i in range(4):
        dispatcher.submit(req("hold", "first", id=i), sink)
    gevent.idle()
    # The first burst started no worker of its own: the prestarted ones took it.
    assert methods.running == 4 and dispatcher.workers == 4
    methods.gate("first").set()
    for i in range(4):
        assert sink.wait(i).result == "first"
    dispatcher.stop_workers()
    gevent.idle()
    assert dispatcher.workers == 0


def test_workers_prestart_is_at_most_max_workers(methods):
    dispatcher = dispatcher_for(methods, max_workers=3, workers_prestart=10)
    assert dispatcher.workers == 3
    gevent.idle()
    assert len(dispatcher._parked) == 3
    dispatcher.stop_workers()
    gevent.idle()
    assert dispatcher.workers == 0


def test_queue_full_is_refused_at_once(methods):
    dispatcher, sink = dispatcher_for(methods, max_workers=5, queue_size=10), Sink()
    accepted, refused = [], []
    for i in range(20):
        try:
            accepted.append(dispatcher.submit(req("hold", "q", id=i), sink))
        except RPCError as error:
            refused.append(error)
    assert len(accepted) == 15 and len(refused) == 5
    assert all(e.code == SERVER_BUSY for e in refused) and dispatcher.refused_busy == 5
    assert dispatcher.stats.summary()["errors"] == {str(SERVER_BUSY): 5}
    assert "queue_size 10" in refused[0].message
    gevent.idle()
    assert dispatcher.busy == 5 and dispatcher.queued == 10
    # Still full while the five workers are busy and ten calls wait.
    with pytest.raises(RPCError) as raised:
        dispatcher.submit(req("echo", 1, id="late"), sink)
    assert raised.value.code == SERVER_BUSY
    methods.gate("q").set()
    for i in range(15):
        assert sink.wait(i).result == "q"
    dispatcher.submit(req("echo", 1, id="after"), sink)
    assert sink.wait("after").result == 1


def test_queue_overflow_counts_workers_started_midway_the_same(methods):
    dispatcher, sink = dispatcher_for(methods, max_workers=50, queue_size=1000), Sink()
    accepted, refused = [], []
    for i in range(2000):
        try:
            accepted.append(dispatcher.submit(req("hold", "o", id=i), sink))
        except RPCError as error:
            assert error.code == SERVER_BUSY
            refused.append(i)
        if i == 500:
            gevent.sleep(0)  # workers start and take calls midway: the total is the same
    assert len(accepted) == 1050 and len(refused) == 950
    assert dispatcher.busy == 50 and dispatcher.queued == 1000
    methods.gate("o").set()
    sink.wait_count(1050)
    assert dispatcher.in_flight == 0  # none silently dropped
    assert set(sink.responses) == {c.request.id for c in accepted}


def test_cancelled_queued_calls_free_their_slots(methods):
    dispatcher, sink = dispatcher_for(methods, max_workers=2, queue_size=10), Sink()
    calls = [dispatcher.submit(req("hold", "c", id=i), sink) for i in range(12)]
    gevent.sleep(0)
    with pytest.raises(RPCError):
        dispatcher.submit(req("hold", "c", id="extra"), sink)
    for call in calls[2:]:  # the client went away: its queued calls are dropped
        dispatcher.cancel(call)
    assert dispatcher.queued == 0
    more = [dispatcher.submit(req("hold", "c", id=f"new{i}"), sink) for i in range(10)]
    assert len(more) == 10
    methods.gate("c").set()
    sink.wait_count(12)
    gevent.idle()
    assert dispatcher.in_flight == 0 and len(sink.delivered) == 12  # cancelled: no reply


def test_unknown_method_is_refused_at_submit(methods):
    with pytest.raises(RPCError) as raised:
        dispatcher_for(methods).submit(req("nosuch"), Sink())
    assert raised.value.code == METHOD_NOT_FOUND


def test_params_that_do_not_bind_name_the_parameter(methods):
    dispatcher, sink = dispatcher_for(methods), Sink()
    dispatcher.submit(req("add", 1), sink)
    dispatcher.submit(Request("add", {"a": 1, "c": 2}, 2), sink)
    error = sink.wait(1).error
    assert error.code == INVALID_PARAMS and "'b'" in error.message
    assert sink.wait(2).error.code == INVALID_PARAMS
    assert dispatcher.submit(Request("add", {"a": 1, "b": 2}, 3), sink) and sink.wait(3).result == 3


def test_type_error_inside_a_method_is_an_internal_error(methods):
    dispatcher, sink = dispatcher_for(methods), Sink()
    dispatcher.submit(req("deep_type_error", 5), sink)
    error = sink.wait(1).error
    assert error.code == INTERNAL_ERROR and error.data == {"type": "TypeError"}


def test_exception_is_an_internal_error_and_the_traceback_is_logged(methods):
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        dispatcher, sink = dispatcher_for(methods), Sink()
        dispatcher.submit(req("boom"), sink)
        error = sink.wait(1).error
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert error.code == INTERNAL_ERROR and error.data == {"type": "KeyError"}
    assert "secret-detail" not in error.message
    [failure] = [e["log_failure"] for e in events if "log_failure" in e]
    assert "secret-detail" in failure.getTraceback()


def test_timeout_stops_a_method_that_catches_exception(methods):
    dispatcher, sink = dispatcher_for(methods, call_timeout=0.05), Sink()
    call = dispatcher.submit(req("stubborn"), sink)
    gevent.sleep(0)
    worker = call.worker
    assert worker is not None
    error = sink.wait(1).error
    assert error.code == CALL_TIMEOUT and "0.05 s" in error.message
    assert call.worker is None and dispatcher.in_flight == 0 and dispatcher.busy == 0
    assert not worker.dead  # the worker greenlet lives on, back on the queue
    dispatcher.submit(req("echo", "after", id=2), sink)
    assert sink.wait(2).result == "after"


def test_cancel_a_queued_call(methods):
    dispatcher, sink = dispatcher_for(methods, max_workers=1), Sink()
    dispatcher.submit(req("hold", "first", id=1), sink)
    queued = dispatcher.submit(req("hold", "second", id=2), sink)
    gevent.idle()
    answer = Response(queued.request, error=RPCError(-32006, "cancelled"))
    assert dispatcher.cancel(queued, answer)
    assert sink.responses[2] is answer  # at once: it never reached a worker
    assert dispatcher.in_flight == 1
    methods.gate("first").set()
    methods.gate("second").set()
    sink.wait(1)
    gevent.idle()
    assert methods.finished == ["first"]
    assert not dispatcher.cancel(queued)  # already finished


def test_cancel_a_running_call(methods):
    dispatcher, sink = dispatcher_for(methods), Sink()
    running = dispatcher.submit(req("hold", "r", id=1), sink)
    silent = dispatcher.submit(req("stubborn", id=2), sink)  # catches Exception: killed anyway
    gevent.sleep(0.02)
    assert dispatcher.busy == 2
    answer = Response(running.request, error=RPCError(-32006, "cancelled"))
    assert dispatcher.cancel(running, answer)
    assert dispatcher.cancel(silent)  # as on disconnect: nothing to deliver
    assert sink.wait(1) is answer
    gevent.idle()
    assert methods.running == 0 and dispatcher.in_flight == 0 and dispatcher.busy == 0
    methods.gate("r").set()
    methods.gate("s").set()
    gevent.idle()
    assert methods.finished == [] and 2 not in sink.responses and silent.done
    # The workers survive a cancel and take new calls.
    dispatcher.submit(req("echo", "next", id=3), sink)
    assert sink.wait(3).result == "next" and dispatcher.workers == 2


def test_deferred_result_is_waited_for(methods):
    dispatcher, sink = dispatcher_for(methods), Sink()
    dispatcher.submit(req("deferred", "ok", id=1), sink)
    dispatcher.submit(req("deferred", "bad", id=2), sink)
    gevent.idle()
    assert sink.responses == {}
    methods.deferreds["ok"].callback({"value": 42})
    methods.deferreds["bad"].errback(ZeroDivisionError("deferred failure"))
    assert sink.wait(1).result == {"value": 42}
    error = sink.wait(2).error
    assert error.code == INTERNAL_ERROR and error.data == {"type": "ZeroDivisionError"}


def test_deferred_that_never_fires_times_out(methods):
    dispatcher, sink = dispatcher_for(methods, call_timeout=0.05), Sink()
    dispatcher.submit(req("deferred", "never"), sink)
    assert sink.wait(1).error.code == CALL_TIMEOUT


def test_async_def_method(methods):
    dispatcher, sink = dispatcher_for(methods), Sink()
    dispatcher.submit(req("coroutine", "a", id=1), sink)
    dispatcher.submit(req("coroutine", "b", id=2), sink)
    gevent.idle()
    methods.deferreds["a"].callback(21)
    methods.deferreds["b"].callback("raise")
    assert sink.wait(1).result == 42
    assert sink.wait(2).error.data == {"type": "ValueError"}


def test_generator_streams_its_items_then_its_return_value(methods):
    dispatcher, sink = dispatcher_for(methods, call_timeout=30), Sink()
    dispatcher.submit(req("countdown", 3, id="s"), sink)
    assert sink.wait("s").result == "liftoff"
    assert sink.items == [("s", 3), ("s", 2), ("s", 1)]


def test_stream_refused_by_the_sink_ends_the_call(methods):
    class NoStreams(Sink):
        def stream(self, call, item) -> bool:
            raise RPCError(-32600, "streaming needs a JSON-RPC 2.0 call with an id")

    dispatcher, sink = dispatcher_for(methods), NoStreams()
    dispatcher.submit(req("countdown", 3), sink)
    assert sink.wait(1).error.code == -32600


def test_every_answer_is_journaled_with_its_run_time(methods):
    from rpcd.stats import ERROR, ID, LOG_WIDTH, RAN

    journaled: list = []
    dispatcher = Dispatcher(methods.registry)
    dispatcher.stats.follow(journaled.extend)  # as the access log follows it
    sink = Sink()
    dispatcher.submit(req("echo", 1, id=1), sink)
    dispatcher.submit(req("boom", id=2), sink)
    sink.wait(2)
    sink.wait(1)
    dispatcher.stats.fold()
    rows = [journaled[i : i + LOG_WIDTH] for i in range(0, len(journaled), LOG_WIDTH)]
    assert sorted(row[ID] for row in rows) == [1, 2] and all(row[RAN] >= 0 for row in rows)
    assert {row[ID]: row[ERROR] is None for row in rows} == {1: True, 2: False}


# -- drain ------------------------------------------------------------------------------------


def test_drain_with_nothing_in_flight_fires_at_once(methods):
    dispatcher = dispatcher_for(methods)
    fired = []
    dispatcher.drain(10, Clock()).addCallback(fired.append)
    assert fired == [None] and dispatcher.draining


def test_drain_fires_when_the_calls_finish(methods):
    clock = Clock()
    dispatcher, sink = dispatcher_for(methods), Sink()
    for i in range(3):
        dispatcher.submit(req("hold", "d", id=i), sink)
    gevent.idle()
    fired = []
    dispatcher.drain(10, clock).addCallback(fired.append)
    with pytest.raises(RPCError) as raised:
        dispatcher.submit(req("echo", 1, id="new"), sink)
    assert raised.value.code == SHUTTING_DOWN
    assert fired == []
    methods.gate("d").set()
    for i in range(3):
        assert sink.wait(i).result == "d"
    assert fired == [None]
    assert clock.getDelayedCalls() == []  # the grace timer is gone


def test_drain_at_grace_answers_the_rest_with_shutting_down(methods):
    clock = Clock()
    dispatcher, sink = dispatcher_for(methods, max_workers=1), Sink()
    dispatcher.submit(req("hold", "quick", id="quick"), sink)
    dispatcher.submit(req("hold", "slow", id="queued"), sink)
    gevent.idle()
    fired = []
    dispatcher.drain(2, clock).addCallback(fired.append)
    methods.gate("quick").set()
    assert sink.wait("quick").result == "quick"
    gevent.idle()  # the one worker has taken the queued call by now
    clock.advance(1.999)
    assert fired == [] and "queued" not in sink.responses
    clock.advance(0.001)
    error = sink.wait("queued").error
    assert error.code == SHUTTING_DOWN
    gevent.idle()
    assert fired == [None] and dispatcher.in_flight == 0
    methods.gate("slow").set()
    gevent.idle()
    assert methods.finished == ["quick"]


def test_drain_at_grace_also_answers_calls_still_queued(methods):
    clock = Clock()
    dispatcher, sink = dispatcher_for(methods, max_workers=1), Sink()
    for i in range(3):
        dispatcher.submit(req("hold", "never", id=i), sink)
    gevent.idle()
    fired = []
    dispatcher.drain(1, clock).addCallback(fired.append)
    clock.advance(1)
    assert sink.responses[1].error.code == SHUTTING_DOWN  # queued: answered at once
    assert sink.responses[2].error.code == SHUTTING_DOWN
    assert sink.wait(0).error.code == SHUTTING_DOWN
    gevent.idle()
    assert fired == [None]


# -- method code that misbehaves (issue 10) ----------------------------------------------------


class Custom(BaseException):
    pass


@pytest.mark.parametrize(
    "exc", [SystemExit(2), KeyboardInterrupt(), GeneratorExit(), Custom("x")], ids=type
)
def test_a_base_exception_is_an_internal_error_and_the_worker_survives(methods, exc):
    def raiser():
        raise exc

    methods.registry.add("raiser", raiser)
    dispatcher, sink = dispatcher_for(methods, max_workers=1), Sink()
    for i in range(3):  # as many as there are workers, and more
        dispatcher.submit(req("raiser", id=i), sink)
        error = sink.wait(i).error
        assert error.code == INTERNAL_ERROR and error.data == {"type": type(exc).__name__}
    dispatcher.submit(req("echo", "after", id="after"), sink)
    assert sink.wait("after").result == "after"
    gevent.idle()
    assert dispatcher.in_flight == 0 and dispatcher.busy == 0 and dispatcher.workers == 1
    assert dispatcher.stats.summary()["errors"] == {str(INTERNAL_ERROR): 3}


def _hostile(methods):
    """A method that swallows everything thrown into it until `methods.released` is set."""
    methods.released = Event()

    def hostile():
        while not methods.released.is_set():
            try:
                gevent.sleep(0.005)
            except BaseException:  # noqa: S110 - the point of the test
                pass
        return "normal"

    methods.registry.add("hostile", hostile)


def test_the_deadline_is_the_servers_whatever_the_method_catches(methods):
    _hostile(methods)
    dispatcher, sink = dispatcher_for(methods, max_workers=1, call_timeout=0.05), Sink()
    dispatcher.submit(req("hostile", id=1), sink)
    error = sink.wait(1, timeout=1.0).error
    assert error.code == CALL_TIMEOUT
    # The worker is abandoned and its slot accounted: a new one serves the next call.
    assert dispatcher.in_flight == 0 and dispatcher.busy == 0 and dispatcher.workers == 0
    dispatcher.submit(req("echo", "next", id=2), sink)
    assert sink.wait(2, timeout=1.0).result == "next"
    methods.released.set()
    gevent.sleep(0.02)
    assert list(sink.responses) == [1, 2]  # the late normal result is never delivered
    assert dispatcher.workers == 1 and dispatcher.stats.summary()["errors"] == {"-32001": 1}


def test_a_cancel_is_answered_at_once_whatever_the_method_catches(methods):
    _hostile(methods)
    dispatcher, sink = dispatcher_for(methods, max_workers=1), Sink()
    call = dispatcher.submit(req("hostile", id=1), sink)
    gevent.sleep(0.01)
    answer = Response(call.request, error=RPCError(-32006, "cancelled"))
    assert dispatcher.cancel(call, answer)
    assert sink.wait(1, timeout=0.5) is answer
    assert dispatcher.in_flight == 0 and dispatcher.busy == 0
    methods.released.set()
    gevent.sleep(0.02)
    assert list(sink.responses) == [1]


def test_the_shutdown_grace_is_kept_whatever_the_method_catches(methods):
    _hostile(methods)
    clock = Clock()
    dispatcher, sink = dispatcher_for(methods), Sink()
    dispatcher.submit(req("hostile", id=1), sink)
    gevent.sleep(0.01)
    fired = []
    dispatcher.drain(1, clock).addCallback(fired.append)
    clock.advance(1)
    assert sink.wait(1, timeout=0.5).error.code == SHUTTING_DOWN
    assert fired == [None] and dispatcher.in_flight == 0
    methods.released.set()
    gevent.sleep(0.02)


# -- streams and workers (issue 10) -----------------------------------------------------------


def _endless(methods):
    def endless(delay=0.005):
        n = 0
        while True:
            gevent.sleep(delay)
            n += 1
            yield n

    methods.registry.add("endless", endless)


def test_a_waiting_stream_holds_no_worker(methods):
    _endless(methods)
    dispatcher, sink = dispatcher_for(methods, max_workers=1), Sink()
    for i in range(3):
        dispatcher.submit(req("endless", id=f"s{i}"), sink)
    gevent.sleep(0.03)
    assert {rid for rid, _ in sink.items} == {"s0", "s1", "s2"}  # all three stream at once
    dispatcher.submit(req("echo", "served", id=1), sink)
    assert sink.wait(1, timeout=1.0).result == "served"
    assert dispatcher.busy == 0 and dispatcher.streams == 3


def test_waiting_streams_hold_no_worker_even_when_the_peer_lags(methods):
    _endless(methods)
    dispatcher, sink = dispatcher_for(methods, max_workers=1), Sink()
    sink.accept = False  # the peer reads nothing: each stream waits after its first item
    dispatcher.submit(req("endless", id="s"), sink)
    gevent.sleep(0.03)
    assert sink.items == [("s", 1)]
    other = Sink()  # another client (the lagging one's own calls wait for it to read)
    dispatcher.submit(req("echo", "served", id=1), other)
    assert other.wait(1, timeout=1.0).result == "served"
    sink.accept = True
    dispatcher.writable(sink)
    gevent.sleep(0.03)
    assert len(sink.items) > 2


def test_a_lagging_peers_calls_wait_until_it_reads_and_others_are_served(methods):
    dispatcher, sink, other = dispatcher_for(methods), Sink(), Sink()
    dispatcher.lagging(sink)
    for i in range(3):
        dispatcher.submit(req("echo", i, id=i), sink)
    dispatcher.submit(req("echo", "other", id="o"), other)
    assert other.wait("o", timeout=1.0).result == "other"
    gevent.idle()
    assert sink.responses == {} and dispatcher.queued == 3
    cancelled = dispatcher.submit(req("echo", 9, id=9), sink)
    dispatcher.cancel(cancelled)  # a held call cancelled is dropped, not run later
    dispatcher.writable(sink)
    sink.wait_count(3, timeout=1.0)
    gevent.idle()
    assert [r.request.id for r in sink.delivered] == [0, 1, 2]  # in order, once each
    assert dispatcher.queued == 0 and dispatcher.in_flight == 0


def test_streams_past_max_streams_are_refused_busy(methods):
    _endless(methods)
    dispatcher, sink = dispatcher_for(methods, max_streams=2), Sink()
    first = dispatcher.submit(req("endless", id="s0"), sink)
    dispatcher.submit(req("endless", id="s1"), sink)
    dispatcher.submit(req("endless", id="s2"), sink)
    error = sink.wait("s2", timeout=1.0).error
    assert error.code == SERVER_BUSY and "max_streams 2" in error.message
    assert dispatcher.streams == 2
    dispatcher.cancel(first)
    gevent.sleep(0.01)
    assert dispatcher.streams == 1
    dispatcher.submit(req("endless", id="s3"), sink)
    gevent.sleep(0.02)
    assert dispatcher.streams == 2 and "s3" in {rid for rid, _ in sink.items}


def test_streams_end_at_once_on_drain_with_their_final_answer(methods):
    _endless(methods)
    clock = Clock()
    dispatcher, sink = dispatcher_for(methods), Sink()
    dispatcher.submit(req("endless", id="s"), sink)
    gevent.sleep(0.02)
    fired = []
    dispatcher.drain(10, clock).addCallback(fired.append)
    final = sink.wait("s", timeout=1.0)  # no clock advance: not at the end of the grace
    assert final.error.code == SHUTTING_DOWN
    gevent.idle()
    assert fired == [None] and dispatcher.streams == 0 and dispatcher.in_flight == 0


def test_an_idle_worker_keeps_no_answered_call_nor_its_result():
    import gc
    import weakref

    class Result:
        pass

    class Forgetful(Sink):
        """Keeps nothing of what it is given but a weak reference to the result."""

        def deliver(self, call, response) -> None:
            self.result = weakref.ref(response.result)

    registry = Registry()
    registry.add("make", Result)
    dispatcher = Dispatcher(registry)
    sink = Forgetful()
    dispatcher.submit(Request("make", (), 1), sink)
    gevent.idle()
    gc.collect()
    assert dispatcher.workers == 1 and dispatcher.busy == 0
    assert sink.result() is None  # the call answered, nothing holds its result any more


def test_drain_still_takes_the_methods_named_while_draining(methods):
    dispatcher, sink = dispatcher_for(methods), Sink()
    dispatcher.while_draining = frozenset({"add"})  # as the service names the health checks
    dispatcher.drain(10, Clock())
    dispatcher.submit(req("add", 1, 2, id="check"), sink)
    assert sink.wait("check").result == 3
    with pytest.raises(RPCError) as raised:
        dispatcher.submit(req("echo", 1, id="new"), sink)
    assert raised.value.code == SHUTTING_DOWN


def test_in_flight_calls_are_found_wherever_they_wait(methods):
    # Counted, not kept in a set: rpc.stats, the metrics, the drain and the blocked-loop
    # report find them in the queue, a lagging peer's hold, a worker, or a stream.
    _endless(methods)
    dispatcher, sink, lagging = dispatcher_for(methods, max_workers=2), Sink(), Sink()
    running = dispatcher.submit(req("hold", "g", id="running"), sink)
    stream = dispatcher.submit(req("endless", id="stream"), sink)
    dispatcher.lagging(lagging)
    held = dispatcher.submit(req("echo", 1, id="held"), lagging)
    gevent.sleep(0.02)
    queued = dispatcher.submit(req("echo", 2, id="queued"), sink)
    cancelled = dispatcher.submit(req("echo", 3, id="cancelled"), sink)
    dispatcher.cancel(cancelled)
    found = dispatcher.in_flight_calls()
    assert sorted(c.request.id for c in found) == ["held", "queued", "running", "stream"]
    assert dispatcher.in_flight == 4
    assert dispatcher.running_in(running.worker) is running
    assert dispatcher.running_in(stream.worker) is stream
    assert {held, queued}.isdisjoint(c for c in found if c.worker is not None)
    methods.gate("g").set()
    dispatcher.writable(lagging)
    dispatcher.cancel(stream)
    sink.wait("queued", timeout=1.0)
    lagging.wait("held", timeout=1.0)
    gevent.sleep(0.02)
    assert dispatcher.in_flight_calls() == [] and dispatcher.in_flight == 0
