"""Call statistics for `rpc.stats`: counts, errors by code, per-method latency in fixed memory.

Latency goes into a log-scale histogram per method: four buckets per doubling from 1 µs to
about an hour, so a percentile is read to within 19 % and memory never grows with traffic.
Only registered methods get a histogram, so client-chosen names cannot grow it either.

Recording is on every call's path and reading is rare, so the dispatcher only appends each
finished call's facts to a flat list, the *journal*, in line (no Python call for a call that
succeeded); the journal is folded into the histograms when the figures are read or when it
reaches its bound, a batch at a time (a sort and a bisection per bucket reached, instead of
work per call). The access log renders its lines from the same facts: each batch folded is
handed to it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable
from itertools import compress, repeat
from operator import eq, not_
from typing import Any

from rpcd.wire import CANCELLED, RPCError

_PER_OCTAVE = 4
_BUCKETS = 32 * _PER_OCTAVE  # bucket i holds latencies below 2 ** (i / 4) µs
# The lower bound of each bucket but the first, in seconds: a latency's bucket is how many
# of these it reaches (one C call, no logarithm).
_BOUNDS = [2.0 ** ((i - 1) / _PER_OCTAVE) / 1e6 for i in range(1, _BUCKETS)]
# Latencies a histogram keeps unfolded at most (a few KB per registered method).
FOLD_AT = 256

# The journal: what the dispatcher appends in line per call, its values flat in one list.
# Without an access log, two per call that succeeded: the method name and the latency in
# seconds, from acceptance to the answer (a failure is counted at once: it is rare). With
# one (`CallStats.follow`), LOG_WIDTH per call answered or refused: the method name, the
# latency (None: refused before it was queued, so it has no histogram: the name is the
# client's), the error (an RPCError; None: ok; NO_ANSWER: cancelled with no answer sent),
# and for its access line the call's end (a perf_counter reading), the peer, the request id
# and the run time in whole microseconds.
NAME, LATENCY, ERROR, END, PEER, ID, RAN = range(7)
STATS_WIDTH = 2
LOG_WIDTH = 7
# Values journaled at most before the figures fold them (when no one reads them): the
# journal's memory bound. Its length stays a small int (cached: none is made per call).
JOURNAL_VALUES = 256
NO_ANSWER = RPCError(CANCELLED, "cancelled: no answer was sent")
# Distinct methods in one batch past which it is grouped name by name in Python rather
# than one C pass over the batch per method.
_FEW_METHODS = 8


class LatencyHistogram:
    """Counts of latencies in log-spaced buckets; percentiles are bucket upper bounds.

    `buckets`, `count`, `sum` and `max` include every latency recorded, folded or not.
    """

    __slots__ = ("pending", "errors", "codes", "_buckets", "_count", "_sum", "_max")

    def __init__(self) -> None:
        self.pending: list[float] = []  # recorded, not yet in the buckets (at most FOLD_AT)
        self.errors = 0
        self.codes: Counter = Counter()  # errors by code (the metrics' handled_total labels)
        self._buckets = [0] * _BUCKETS
        self._count = 0
        self._sum = 0.0  # exact, for the metrics' histogram _sum
        self._max = 0.0

    def record(self, seconds: float, failed: bool | int = False) -> None:
        """One call; `failed` is False, True, or the error code it was answered with."""
        pending = self.pending
        pending.append(seconds)
        if failed:
            self.errors += 1
            if failed is not True:
                self.codes[failed] += 1
        if len(pending) >= FOLD_AT:
            self.fold()

    def extend(self, latencies: Any) -> None:
        """Calls that succeeded, many at once."""
        pending = self.pending
        pending.extend(latencies)
        if len(pending) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Move the pending latencies into the buckets."""
        pending = self.pending
        if not pending:
            return
        pending.sort()
        low, high = pending[0], pending[-1]
        self._count += len(pending)
        self._sum += sum(pending)
        if high > self._max:
            self._max = high
        buckets = self._buckets
        # Bucket i holds the latencies from _BOUNDS[i - 1] up to _BOUNDS[i]: walk the buckets
        # the sorted latencies reach, each one's count the distance between two bisections.
        first, last = bisect_right(_BOUNDS, low), bisect_right(_BOUNDS, high)
        start = 0
        for index in range(first, last):
            end = bisect_left(pending, _BOUNDS[index], start)
            buckets[index] += end - start
            start = end
        buckets[last] += len(pending) - start
        pending.clear()

    @property
    def buckets(self) -> list[int]:
        self.fold()
        return self._buckets

    @property
    def count(self) -> int:
        return self._count + len(self.pending)

    @property
    def sum(self) -> float:
        self.fold()
        return self._sum

    @property
    def max(self) -> float:
        self.fold()
        return self._max

    def percentile(self, fraction: float) -> float:
        """The latency in seconds below which `fraction` of the calls finished (0 if none)."""
        self.fold()
        if not self._count:
            return 0.0
        rank = max(1, round(fraction * self._count))
        seen = 0
        for index, n in enumerate(self._buckets):
            seen += n
            if seen >= rank:
                return min(2.0 ** (index / _PER_OCTAVE) / 1e6, self._max)
        return self._max

    def summary(self) -> dict:
        self.fold()
        return {
            "count": self._count,
            "errors": self.errors,
            "p50_ms": round(self.percentile(0.50) * 1e3, 3),
            "p99_ms": round(self.percentile(0.99) * 1e3, 3),
            "max_ms": round(self._max * 1e3, 3),
        }


class CallStats:
    """What the dispatcher counts as calls finish: errors by code and latency per method.

    The dispatcher appends each call's facts to `journal` (`width` values a call) and calls
    `fold` when the journal holds `due` values; `errors`, `methods` and `summary` fold it
    first, so whoever reads the figures sees every call journaled. A follower (`follow`)
    is handed each batch folded (the access log renders its lines from them); it may lower
    `due` to hear of a batch sooner (the first call after its flush starts its flush timer).
    """

    __slots__ = ("journal", "width", "due", "follower", "_errors", "_methods")

    def __init__(self) -> None:
        self.journal: list = []  # `width` values a call, see above
        self.width = STATS_WIDTH
        self.due = JOURNAL_VALUES  # the journal's length at which it is folded
        self.follower: Callable[[list], None] | None = None
        self._errors: Counter = Counter()
        self._methods: dict[str, LatencyHistogram] = {}

    @property
    def errors(self) -> Counter:
        """Calls answered with an error, by code (refused ones included)."""
        self.fold()
        return self._errors

    @property
    def methods(self) -> dict[str, LatencyHistogram]:
        """Each registered method's histogram, once it has been called."""
        self.fold()
        return self._methods

    def follow(self, follower: Callable[[list], None]) -> None:
        """From now on, calls are journaled with their access line's facts too, and
        `follower` is handed each batch folded."""
        self.fold()  # a journal holds calls of one width
        self.width = LOG_WIDTH
        self.due = JOURNAL_VALUES // LOG_WIDTH * LOG_WIDTH
        self.follower = follower

    def fold(self) -> None:
        """Count the journaled calls into the figures, and hand them to the follower."""
        batch = self.journal
        if not batch:
            return
        self.journal = []  # the dispatcher reads it afresh for each call
        self._count(batch)
        if self.follower is not None:
            self.follower(batch)

    def _count(self, batch: list) -> None:
        width = self.width
        names = batch[NAME::width]
        latencies = batch[LATENCY::width]
        errors = batch[ERROR::width] if width > ERROR else []
        if errors.count(None) != len(errors):
            for i in compress(range(len(errors)), errors):
                code = errors[i].code
                self._errors[code] += 1
                if latencies[i] is not None:  # None: refused, never a call of a method
                    self._histogram(names[i]).record(latencies[i], code)
            ok = list(map(not_, errors))
            names = list(compress(names, ok))
            latencies = list(compress(latencies, ok))
            if not names:
                return
        first = names[0]
        if names.count(first) == len(names):  # the usual batch: one method
            self._histogram(first).extend(latencies)
            return
        distinct = set(names)
        if len(distinct) <= _FEW_METHODS:
            for name in distinct:
                self._histogram(name).extend(compress(latencies, map(eq, names, repeat(name))))
            return
        for name, seconds in zip(names, latencies, strict=True):
            self._histogram(name).record(seconds)

    def _histogram(self, name: str) -> LatencyHistogram:
        histogram = self._methods.get(name)
        if histogram is None:
            histogram = self._methods[name] = LatencyHistogram()
        return histogram

    def failed(self, name: str, seconds: float, error_code: int) -> None:
        """A call of method `name` answered with an error, counted at once (not journaled)."""
        self._errors[error_code] += 1
        self._histogram(name).record(seconds, error_code)

    def refused(self, error_code: int) -> None:
        """A call answered with an error before it was queued (unknown method, busy, stopping)."""
        self._errors[error_code] += 1

    def summary(self) -> dict:
        self.fold()
        return {
            "errors": {str(code): n for code, n in sorted(self._errors.items())},
            "methods": {name: h.summary() for name, h in sorted(self._methods.items())},
        }
