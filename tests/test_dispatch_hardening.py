"""Dispatcher faults and overload: queue overflow, raising and runaway methods, cancellation."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

from rpcd.dispatch import Dispatcher
from rpcd.methods import Registry
from rpcd.wire import CALL_TIMEOUT, INTERNAL_ERROR, SERVER_BUSY, Request, RPCError


class Sink:
    def __init__(self) -> None:
        self.responses = []

    def deliver(self, call, response) -> None:
        self.responses.append(response)

    def stream(self, call, item) -> None:
        pass


@pytest.fixture
def gate():
    event = Event()
    yield event
    event.set()  # let whatever still waits finish


def make(gate: Event, **limits) -> Dispatcher:
    registry = Registry()

    def wait():
        gate.wait()
        return "done"

    def boom():
        raise KeyError("secret-detail")

    def stubborn():
        while True:
            try:
                gevent.sleep(0.01)
            except Exception:
                pass

    registry.add("wait", wait)
    registry.add("boom", boom)
    registry.add("stubborn", stubborn)
    return Dispatcher(registry, **limits)


def test_queue_overflow_accepts_queue_plus_workers_and_refuses_the_rest_at_once(gate):
    dispatcher = make(gate, max_workers=50, queue_size=1000)
    sink = Sink()
    accepted, refused = [], []
    for i in range(2000):
        try:
            accepted.append(dispatcher.submit(Request("wait", (), i), sink))
        except RPCError as error:
            assert error.code == SERVER_BUSY
            refused.append(i)
        if i == 500:
            gevent.sleep(0)  # workers start and take calls midway: the total is the same
    assert len(accepted) == 1050 and len(refused) == 950
    assert dispatcher.busy == 50 and dispatcher.queued == 1000
    gate.set()
    while dispatcher.in_flight:
        gevent.sleep(0.001)
    assert len(sink.responses) == 1050  # none silently dropped
    assert {r.request.id for r in sink.responses} == {c.request.id for c in accepted}


def test_cancelled_queued_calls_free_their_slots(gate):
    dispatcher = make(gate, max_workers=2, queue_size=10)
    sink = Sink()
    calls = [dispatcher.submit(Request("wait", (), i), sink) for i in range(12)]
    gevent.sleep(0)
    with pytest.raises(RPCError):
        dispatcher.submit(Request("wait", (), "extra"), sink)
    for call in calls[2:]:  # the client went away: its queued calls are dropped
        dispatcher.cancel(call)
    assert dispatcher.queued == 0
    more = [dispatcher.submit(Request("wait", (), f"new{i}"), sink) for i in range(10)]
    assert len(more) == 10
    gate.set()
    while dispatcher.in_flight:
        gevent.sleep(0.001)
    assert len(sink.responses) == 12  # the cancelled ones got no reply


def test_raising_method_is_an_internal_error_naming_only_the_type(gate):
    dispatcher = make(gate)
    sink = Sink()
    dispatcher.submit(Request("boom", (), 1), sink)
    while not sink.responses:
        gevent.sleep(0.001)
    error = sink.responses[0].error
    assert error.code == INTERNAL_ERROR and error.data == {"type": "KeyError"}
    assert "secret-detail" not in error.message


def test_timeout_stops_a_method_that_catches_exception(gate):
    dispatcher = make(gate, call_timeout=0.05)
    sink = Sink()
    call = dispatcher.submit(Request("stubborn", (), 1), sink)
    gevent.sleep(0)
    worker = call.worker
    assert worker is not None
    with gevent.Timeout(2):
        while not sink.responses:
            gevent.sleep(0.005)
    assert sink.responses[0].error.code == CALL_TIMEOUT
    assert call.worker is None and dispatcher.busy == 0 and dispatcher.in_flight == 0
    assert not worker.dead  # the worker greenlet lives on, back on the queue
    assert dispatcher.submit(Request("boom", (), 2), sink) is not None


def test_cancel_of_a_running_call_kills_it_without_a_reply(gate):
    dispatcher = make(gate)
    sink = Sink()
    call = dispatcher.submit(Request("stubborn", (), 1), sink)
    gevent.sleep(0.02)
    assert dispatcher.busy == 1
    dispatcher.cancel(call)
    gevent.sleep(0)
    gevent.sleep(0)
    assert dispatcher.busy == 0 and dispatcher.in_flight == 0 and call.done
    assert sink.responses == []
