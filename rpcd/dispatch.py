"""The task queue: worker greenlets run calls with a timeout, cancel on request, drain on shutdown.

Calls arrive as decoded `Request`s with a *sink* (the connection) that receives their
`Response` and any streamed items. Workers are started on demand up to `max_workers` and
kept warm; the queue holds at most `queue_size` calls that no worker has taken yet, and a
call that does not fit is refused at once with -32000, never silently dropped.

Every call answered, and every request refused, leaves its facts in the journal
(`rpcd.stats`): the stats fold them when read, the access log renders them at its flush.
"""

from __future__ import annotations

import inspect
import math
from collections import deque
from collections.abc import Callable
from math import floor
from time import perf_counter
from typing import Any, Protocol

import gevent
from gevent import Timeout, getcurrent
from gevent.event import AsyncResult, Event
from greenlet import greenlet
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from rpcd.methods import Method, Registry
from rpcd.stats import NO_ANSWER, CallStats
from rpcd.wire import (
    CALL_TIMEOUT,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    SERVER_BUSY,
    SHUTTING_DOWN,
    Request,
    Response,
    RPCError,
    _new,
)

log = Logger()

# How a parked worker goes back to the hub: the plain greenlet switch. The hub's own `switch`
# first looks for a `switch_out` on the current greenlet, which a worker never has (about 300
# instructions per park).
_switch = greenlet.switch


class Sink(Protocol):
    """Where a call's results go: the connection that asked for it. Its `peer` (host:port)
    is journaled with each call it is answered (the access line names it)."""

    peer: str

    def deliver(self, call: Call, response: Response) -> None: ...

    def stream(self, call: Call, item: Any) -> bool:
        """Send one item; False when the peer lags: the stream waits for `writable(sink)`."""
        ...


class CallCancelled(BaseException):
    """Thrown into a worker to stop its call. A BaseException so `except Exception` can't eat it
    (a method that eats it anyway is abandoned: its call was answered when it was thrown)."""

    def __init__(self, call: Call) -> None:
        super().__init__()
        self.call = call


class Call(Response):
    """One accepted request on its way through the queue.

    A call that returns is answered by itself: the worker sets its `result`, and it goes to
    the sink as the Response, so the usual call allocates one object, not two. Errors,
    timeouts and cancels are answered by a Response of their own. Calls are equal only to
    themselves (they are kept in sets), unlike Response values.
    """

    __slots__ = ("method", "sink", "worker", "done", "accepted_at", "route")
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __init__(self, request: Request, method: Method, sink: Sink) -> None:
        self.request = request
        self.result = None
        self.error = None
        self.method = method
        self.sink = sink
        self.worker: gevent.Greenlet | None = None
        self.done = False
        self.accepted_at = perf_counter()
        self.route: Any = None  # where the sink puts the reply (rpcd.session routes)
        # Dispatcher.submit builds its calls without this __init__: keep the two alike.


class _Stop:
    """Queued to tell the worker that takes it to exit. It has the `sink` of no connection,
    so a worker can compare the next queued entry's sink with its call's, whatever it is."""

    __slots__ = ()
    sink = None


_STOP = _Stop()

# Results that are plainly values: no Deferred, coroutine or generator checks needed.
_PLAIN = frozenset({str, int, float, bool, type(None), list, dict, tuple, bytes})


class _CallTimer:
    """A worker's per-call timeout, cheap to restart for every call.

    A call starts it by setting `call` and `deadline` (a `perf_counter` reading; None stops
    it) and, only when that deadline comes before `fires_at`, arming the libev timer behind
    it (`arm`): the timer is started only when none is running, and when it fires before the
    current call's deadline (it was started for an earlier call) it is re-armed for the
    remainder. So a call is stopped at its own deadline, exactly as with a `gevent.Timeout`
    per call, without a timer start and stop per call.
    """

    __slots__ = (
        "worker",
        "call",
        "deadline",
        "fires_at",
        "fired",
        "_expired_call",
        "_loop",
        "_timer",
    )

    def __init__(
        self, worker: gevent.Greenlet, expired: Callable[[_CallTimer, Call], None]
    ) -> None:
        self.worker = worker
        self.call: Call | None = None  # the call the deadline is for
        self.deadline: float | None = None  # None: no call is running under this timer
        self.fires_at = math.inf  # when the libev timer fires (inf: none is running)
        self.fired: Timeout | None = None  # the exception thrown by the last expiry
        self._expired_call = expired  # answers the call and stops the worker, in the hub
        self._loop = gevent.get_hub().loop
        self._timer: Any = None

    def close(self) -> None:
        self.deadline = None
        self.fires_at = math.inf
        if self._timer is not None:
            self._timer.close()
            self._timer = None

    def arm(self, seconds: float, deadline: float) -> None:
        """Have the libev timer fire in `seconds`, at `deadline`."""
        if self._timer is not None:
            self._timer.close()
        self._timer = self._loop.timer(seconds)
        self.fires_at = deadline
        self._timer.start(self._expired)

    def _expired(self) -> None:
        self._timer.close()
        self._timer = None
        self.fires_at = math.inf
        deadline = self.deadline
        if deadline is None:
            return  # idle: the next call starts it again
        remaining = deadline - perf_counter()
        if remaining > 0:
            self.arm(remaining, deadline)
            return
        self.deadline = None
        self._expired_call(self, self.call)


class Dispatcher:
    """Runs calls in worker greenlets; the limits are attributes, as the settings give them."""

    def __init__(
        self,
        registry: Registry,
        *,
        max_workers: int = 1000,
        queue_size: int = 10000,
        max_streams: int = 1000,
        call_timeout: float = 30.0,
        on_refused: Callable[[Request, Sink, RPCError], None] | None = None,
        workers_prestart: int = 0,
        while_draining: frozenset[str] = frozenset(),
    ) -> None:
        self.registry = registry
        self._methods = registry.methods  # the read-only view, live: looked up once per call
        self.max_workers = max_workers
        self.queue_size = queue_size
        self.max_streams = max_streams  # streams open at once, each in a greenlet of its own
        self.call_timeout = call_timeout
        self.on_refused = on_refused  # a request refused at submit, never a Call
        # Methods still accepted once a drain starts: the health checks, so a balancer hears
        # NOT_SERVING on a connection it keeps open rather than an error.
        self.while_draining = while_draining
        self._waiting = 0  # queued calls not cancelled: the ones that hold a queue slot
        # The task queue: calls (_STOP tells a worker to exit) and the workers parked in the hub
        # waiting for one. A leaner hand-off than gevent.queue.Queue: one hub callback wakes
        # the most recently parked worker, which then takes calls until none are left.
        self._queue: deque = deque()
        self._parked: list[gevent.Greenlet] = []
        self._wake_scheduled = False
        self._loop = gevent.get_hub().loop
        self._workers = 0  # started and not exited nor abandoned
        self._starting = 0  # of those, the ones that have not run yet
        # A worker neither starting nor parked is busy: counted so, not once per call.
        # Accepted calls not answered yet: a count, not a set (one add and one discard less
        # per call); in_flight_calls() finds them where they are when they are asked for.
        self._in_flight = 0
        self._timers: set[_CallTimer] = set()  # each worker's, whose `call` is the one it runs
        self._streaming: dict[gevent.Greenlet, Call] = {}  # the greenlets running streams
        self._abandoned: set[gevent.Greenlet] = set()  # workers left in a method that ran on
        self._draining = False
        self._drained: Deferred | None = None
        # Sinks whose peer lags (unsent replies past the connection's bound) -> what waits for
        # it to read: streams (their Events) and calls not started yet (Calls).
        self._lagging: dict[Sink, list[Event | Call]] = {}
        # The figures of the calls answered; each call's facts go in their journal, in line.
        self.stats = CallStats()
        # True while a worker runs a call that the next queued call follows on the same sink:
        # the sink may then hold its output (`hold`) until the burst ends, to write the replies
        # of many calls at once.
        self.bursting = False
        self._held: list[Callable[[], None]] = []  # the flushes of the sinks holding output
        # Started now (they park at the hub's first turn), so a burst from a cold start does
        # not pay a worker start (about 40 µs) per call.
        for _ in range(min(max(workers_prestart, 0), max_workers)):
            self._start_worker()

    # -- state an operator sees (rpc.stats) --------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def in_flight_calls(self) -> list[Call]:
        """The calls accepted and not answered yet: queued, held for a lagging peer, running
        in a worker or streaming (safe from another thread: each place is copied first)."""
        calls = [call for call in list(self._queue) if call is not _STOP and not call.done]
        for waiting in list(self._lagging.values()):
            calls.extend(w for w in list(waiting) if type(w) is Call and not w.done)
        for timer in list(self._timers):
            call = timer.call
            if call is not None and not call.done:
                calls.append(call)
        calls.extend(call for call in list(self._streaming.values()) if not call.done)
        return calls

    @property
    def queued(self) -> int:
        return self._waiting

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def busy(self) -> int:
        """Workers running a call (blocked in one included)."""
        return self._workers - self._starting - len(self._parked)

    @property
    def calls_total(self) -> int:
        """Calls accepted: each is answered once, and recorded in the stats then."""
        return sum(h.count for h in self.stats.methods.values()) + self._in_flight

    @property
    def streams(self) -> int:
        """Streams open, each in its own greenlet (not a worker)."""
        return len(self._streaming)

    @property
    def draining(self) -> bool:
        """Whether a drain has started (new calls are refused; rpc.health turns NOT_SERVING)."""
        return self._draining

    @property
    def refused_busy(self) -> int:
        """Calls refused with -32000, as the stats count them."""
        return self.stats.errors[SERVER_BUSY]

    # -- accepting work ----------------------------------------------------------------------

    def submit(self, request: Request, sink: Sink) -> Call:
        """Queue `request`; raise RPCError if it names no method or cannot be held."""
        if self._draining and request.method not in self.while_draining:
            message = "shutting down: the server accepts no new calls"
            self._refuse(request, sink, RPCError(SHUTTING_DOWN, message))
        try:
            # A subscript, not .get: on the registry's read-only view, .get is a method call by
            # name on the dict behind it (about twice the cost).
            method = self._methods[request.method]
        except KeyError:
            method = None
        if method is None:
            self._refuse(request, sink, self.registry.not_found(request.method))
        # Waiting calls that an idle or not-yet-started worker will take do not count
        # against the queue: capacity is queue_size plus the workers not busy (so under
        # queue_size there is nothing to count).
        waiting = self._waiting
        if waiting >= self.queue_size and waiting >= self.queue_size + self.max_workers - self.busy:
            message = f"server busy: {waiting} calls waiting (queue_size {self.queue_size})"
            self._refuse(request, sink, RPCError(SERVER_BUSY, message))
        # Call(request, method, sink) without its __init__ (see rpcd.wire._new): once per call.
        call = _new(Call)
        call.request = request
        call.result = None
        call.error = None
        call.method = method
        call.sink = sink
        call.worker = None
        call.done = False
        call.accepted_at = perf_counter()
        call.route = None
        self._in_flight += 1
        self._waiting = waiting + 1
        self._queue.append(call)
        if waiting >= len(self._parked) and self._workers < self.max_workers:
            self._start_worker()
        elif not self._wake_scheduled and self._parked:
            self._wake_scheduled = True
            self._loop.run_callback(self._wake_workers)
        return call

    def _start_worker(self) -> None:
        self._workers += 1
        self._starting += 1
        gevent.spawn(self._work)

    def _refuse(self, request: Request, sink: Sink, error: RPCError) -> None:
        """Count and log `error` as the answer to a request never accepted, and raise it."""
        stats = self.stats
        if stats.follower is None:
            stats.refused(error.code)
        else:  # journaled, for its access line (rpcd.stats)
            journal = stats.journal
            peer = getattr(sink, "peer", "-")
            journal += (request.method, None, error, perf_counter(), peer, request.id, 0)
            if len(journal) >= stats.due:
                stats.fold()
        if self.on_refused is not None:
            self.on_refused(request, sink, error)
        raise error

    def _wake(self) -> None:
        """Have a parked worker take the queued calls (one hub callback per turn)."""
        if not self._wake_scheduled and self._parked:
            self._wake_scheduled = True
            self._loop.run_callback(self._wake_workers)

    def _wake_workers(self) -> None:
        # In the hub: each woken worker runs until it blocks or the queue is empty.
        self._wake_scheduled = False
        queue, parked = self._queue, self._parked
        while queue and parked:
            parked.pop().switch()

    def hold(self, flush: Callable[[], None]) -> None:
        """A sink holds output during a burst: `flush()` writes it when the burst ends, or at
        the hub's next turn if a call of the burst blocks first."""
        if not self._held:
            self._loop.run_callback(self._flush_held)
        self._held.append(flush)

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        for flush in held:
            flush()

    def cancel(self, call: Call, response: Response | None = None) -> bool:
        """Stop `call`: drop it if queued, kill it if running. `response` (if any) is delivered.

        Returns False if the call had already finished.
        """
        if call.done:
            return False
        worker = call.worker
        if worker is None:
            # Still queued: its slot is free now; the worker that meets it skips it.
            self._waiting -= 1
            self._finish(call, response, 0.0)
        else:
            # From the hub, and only if the worker is still on this call by then.
            self._loop.run_callback(self._cancel_running, worker, call, response)
        return True

    def running_in(self, greenlet: Any) -> Call | None:
        """The call `greenlet` is running, if it is a worker on one (safe from another thread)."""
        for call in self.in_flight_calls():
            if call.worker is greenlet:
                return call
        return None

    def _cancel_running(
        self, worker: gevent.Greenlet, call: Call, response: Response | None
    ) -> None:
        if call.worker is worker and not call.done:
            # The answer is the server's: given now, whatever the method does with the throw.
            self._finish(call, response, 0.0)
            self._interrupt(worker, call, CallCancelled(call))

    def _timed_out(self, timer: _CallTimer, call: Call) -> None:
        if call.done or call.worker is not timer.worker:
            return
        request = call.request
        error = RPCError(
            CALL_TIMEOUT, f"call timed out: {request.method} ran past {self.call_timeout:g} s"
        )
        self._finish(call, Response(request, error=error), self.call_timeout)
        # A new instance each time, so a raised one never carries an old traceback along.
        fired = timer.fired = Timeout(self.call_timeout)
        fired.close()
        self._interrupt(timer.worker, call, fired)

    def _interrupt(self, worker: gevent.Greenlet, call: Call, exc: BaseException) -> None:
        """Throw `exc` into the worker running `call` (already answered); if the method eats
        it and runs on, abandon the worker: its slot is free for a new one, and it exits when
        the method ends."""
        worker.throw(exc)
        if call.worker is worker:
            self._abandoned.add(worker)
            if worker in self._streaming:
                del self._streaming[worker]
            else:
                self._workers -= 1
            log.warn(
                "method {method} ran on after its call was stopped: its worker is abandoned",
                method=call.request.method,
            )

    # -- the workers -------------------------------------------------------------------------

    def _work(self) -> None:
        self._starting -= 1
        queue, parked = self._queue, self._parked
        me = getcurrent()
        hub = gevent.get_hub()
        abandoned, lagging = self._abandoned, self._lagging
        timer = _CallTimer(me, self._timed_out)
        self._timers.add(timer)
        try:
            while True:
                if not queue:
                    if self._held:
                        self._flush_held()  # the burst is over: what its sinks held goes out
                    call = None  # parked, it keeps no answered call (nor its result)
                    # No burst goes on while it is parked (its last call may have been followed
                    # only by cancelled ones): replies sent from outside a worker go out now.
                    self.bursting = False
                    parked.append(me)
                    try:
                        _switch(hub)  # parked until _wake_workers switches back here
                    except BaseException:
                        if me in parked:  # killed while parked
                            parked.remove(me)
                        raise
                    continue
                call = queue.popleft()
                if call is _STOP:
                    self._workers -= 1
                    return
                if call.done:
                    continue
                if lagging and call.sink in lagging:
                    lagging[call.sink].append(call)  # its peer lags: wait, still queued
                    continue
                self._waiting -= 1
                # The next call is for the same sink: it may hold this reply, to write the
                # replies of the calls it has in this burst together (a sink whose one call
                # this is writes its reply at once: holding it would save no write).
                if queue:
                    self.bursting = queue[0].sink is call.sink
                else:
                    self.bursting = False
                self._run(call, timer)
                if abandoned and me in abandoned:
                    abandoned.discard(me)  # already counted out
                    return
        except BaseException:
            if me in abandoned:
                abandoned.discard(me)  # already counted out
            else:
                self._workers -= 1  # killed, or its sink raised: no longer a worker
            raise
        finally:
            self._timers.discard(timer)
            timer.close()

    def _run(self, call: Call, timer: _CallTimer) -> None:
        """Run `call` under the worker's call timer and deliver its response."""
        request = call.request
        call.worker = timer.worker
        started = perf_counter()
        timer.call = call
        deadline = timer.deadline = started + self.call_timeout
        if deadline < timer.fires_at:
            timer.arm(self.call_timeout, deadline)
        stream = None
        try:
            try:
                params = request.params
                try:
                    if type(params) is tuple:
                        result = call.method.func(*params)
                    else:
                        result = call.method.func(**params)
                except TypeError as exc:
                    # Raised by the call itself (no deeper frame): the params do not fit.
                    if exc.__traceback__.tb_next is None:
                        raise call.method.bind_error(params) from None
                    raise
                if type(result) not in _PLAIN:
                    if inspect.iscoroutine(result):
                        result = Deferred.fromCoroutine(result)
                    if isinstance(result, Deferred):
                        result = _wait_deferred(result)
                    elif inspect.isgenerator(result):
                        timer.deadline = None  # a stream lasts until it ends or the client stops it
                        self._admit_stream(call, result)
                        stream = result
                call.result = result
                response = call
            finally:
                timer.deadline = None
                timer.call = None
        except CallCancelled as cancelled:
            if cancelled.call is not call:
                raise
            return  # answered when it was cancelled
        except Timeout as fired:
            if fired is timer.fired:
                return  # answered at the deadline
            response = self._failed(call, fired)
        except RPCError as error:
            response = Response(request, error=error)
        except Exception as exc:
            response = self._failed(call, exc)
        except BaseException as exc:
            # SystemExit (argparse on bad input), KeyboardInterrupt, GeneratorExit, a custom
            # subclass: the method's failure, answered like any other; the worker lives on.
            response = self._failed(call, exc)
        finally:
            call.worker = None
        if stream is not None:
            # The stream goes on in a greenlet of its own: its waits hold no worker.
            call.worker = greenlet = gevent.spawn(self._stream, call, stream)
            self._streaming[greenlet] = call
        elif call.done:
            return  # answered at its deadline or cancel; the method ran on
        elif response is call:
            # What _finish does, in line for the usual end of a call: it returned a value.
            ended = perf_counter()
            call.done = True
            self._in_flight -= 1
            sink = call.sink
            try:
                sink.deliver(call, call)
            finally:  # journaled once delivered: the access line comes after what that logged
                stats = self.stats
                journal = stats.journal
                if stats.follower is None:  # the figures' facts only (rpcd.stats: the journal)
                    journal.append(call.method.name)
                    journal.append(ended - call.accepted_at)
                else:  # and the access line's
                    journal += (
                        call.method.name,
                        ended - call.accepted_at,
                        None,
                        ended,
                        sink.peer,
                        call.request.id,
                        floor((ended - started) * 1e6),  # us: one op here, none at the flush
                    )
                if len(journal) >= stats.due:
                    stats.fold()
            if self._drained is not None and not self._in_flight:
                self._drained_now()
        else:
            ended = perf_counter()
            self._finish(call, response, ended - started, ended)

    def _admit_stream(self, call: Call, generator: Any) -> None:
        """Refuse a stream now if it cannot be served: it may not yield for a long time."""
        request = call.request
        if request.legacy or request.notification:
            generator.close()
            raise RPCError(INVALID_REQUEST, "streaming needs a JSON-RPC 2.0 call with an id")
        if len(self._streaming) >= self.max_streams:
            generator.close()
            raise RPCError(
                SERVER_BUSY,
                f"server busy: {len(self._streaming)} streams open (max_streams "
                f"{self.max_streams})",
            )

    def _stream(self, call: Call, generator: Any) -> None:
        """A stream's own greenlet: send its items, then its return value as the answer."""
        me = getcurrent()
        request = call.request
        started = perf_counter()
        try:
            try:
                sink = call.sink
                while True:
                    if sink.stream(call, next(generator)) is False:
                        self._wait_writable(sink)
            except StopIteration as stop:
                response = Response(request, stop.value)
            finally:
                generator.close()
        except CallCancelled as cancelled:
            if cancelled.call is not call:
                raise
            return  # answered when it was cancelled
        except RPCError as error:
            response = Response(request, error=error)
        except BaseException as exc:
            response = self._failed(call, exc)
        finally:
            call.worker = None
            self._streaming.pop(me, None)
            self._abandoned.discard(me)
        if not call.done:
            ended = perf_counter()
            self._finish(call, response, ended - started, ended)

    def _wait_writable(self, sink: Sink) -> None:
        """Hold this stream until its peer has read what was sent (a cancel ends the wait)."""
        event = Event()
        waiting = self._lagging.setdefault(sink, [])
        waiting.append(event)
        try:
            event.wait()
        finally:
            if not event.is_set() and waiting is self._lagging.get(sink) and event in waiting:
                waiting.remove(event)

    def lagging(self, sink: Sink) -> None:
        """`sink`'s peer lags: start none of its calls until `writable(sink)`, so what the
        connection buffers stays about its bound plus the replies of calls already running."""
        self._lagging.setdefault(sink, [])

    def writable(self, sink: Sink) -> None:
        """`sink`'s peer can take more (or is gone): its held calls go back to the front of
        the queue, in order, and the streams waiting on it wake."""
        waiting = self._lagging.pop(sink, None)
        if not waiting:
            return
        calls = [w for w in waiting if type(w) is Call]
        if calls:
            self._queue.extendleft(reversed(calls))
            self._wake()
        for w in waiting:
            if type(w) is not Call:
                w.set()

    @staticmethod
    def _failed(call: Call, exc: BaseException) -> Response:
        log.failure(
            "method {method} raised {exc_type}",
            Failure(exc),
            LogLevel.error,
            method=call.request.method,
            exc_type=type(exc).__name__,
        )
        error = RPCError(
            INTERNAL_ERROR,
            f"internal error: {call.request.method} raised {type(exc).__name__}",
            {"type": type(exc).__name__},
        )
        return Response(call.request, error=error)

    def _finish(
        self, call: Call, response: Response | None, duration: float, ended: float = 0.0
    ) -> None:
        """Answer `call` (None: cancelled with no answer) and journal it; `duration` is its
        run time, `ended` the `perf_counter` reading its end made (0: read it now)."""
        call.done = True
        self._in_flight -= 1
        if not ended:
            ended = perf_counter()
        sink = call.sink
        error = NO_ANSWER
        try:
            if response is not None:
                error = response.error
                sink.deliver(call, response)
        finally:
            stats = self.stats
            journal = stats.journal
            name = call.method.name
            # Latency as the client sees it: from acceptance (queue wait included) to the reply.
            latency = ended - call.accepted_at
            if stats.follower is not None:
                us = floor(duration * 1e6)
                journal += (name, latency, error, ended, sink.peer, call.request.id, us)
            elif error is None:
                journal += (name, latency)
            else:  # the figures journal successes only: a failure is counted now
                stats.failed(name, latency, error.code)
            if len(journal) >= stats.due:
                stats.fold()
        if self._drained is not None and not self._in_flight:
            self._drained_now()

    def _drained_now(self) -> None:
        drained, self._drained = self._drained, None
        drained.callback(None)

    # -- shutting down -----------------------------------------------------------------------

    def drain(self, grace: float, clock: Any) -> Deferred:
        """Refuse new calls; fire when every accepted call has finished, or after `grace`
        seconds, when what remains is answered with -32005."""
        self._draining = True
        # A stream has no end of its own to wait for: each ends now with its final answer.
        for call in list(self._streaming.values()):
            error = RPCError(SHUTTING_DOWN, "shutting down: the stream ends")
            self.cancel(call, Response(call.request, error=error))
        if not self._in_flight:
            return succeed(None)
        drained = self._drained = Deferred()
        expiry = clock.callLater(grace, self._expire)
        drained.addBoth(_cancel_delayed, expiry)
        return drained

    def _expire(self) -> None:
        for call in self.in_flight_calls():
            error = RPCError(
                SHUTTING_DOWN, "shutting down: the call did not finish within the shutdown grace"
            )
            self.cancel(call, Response(call.request, error=error))

    def stop_workers(self) -> None:
        """Let idle workers exit (busy ones finish their call first)."""
        self._queue.extend([_STOP] * self._workers)
        self._wake()


def _wait_deferred(deferred: Deferred) -> Any:
    """Block this greenlet until `deferred` fires; a failure raises its exception here."""
    result = AsyncResult()
    deferred.addCallbacks(result.set, lambda failure: result.set_exception(failure.value))
    return result.get()


def _cancel_delayed(passthrough: Any, delayed: Any) -> Any:
    if delayed.active():
        delayed.cancel()
    return passthrough
