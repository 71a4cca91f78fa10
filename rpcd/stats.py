"""Call statistics for `rpc.stats`: counts, errors by code, per-method latency in fixed memory.

Latency goes into a log-scale histogram per method: four buckets per doubling from 1 µs to
about an hour, so a percentile is read to within 19 % and memory never grows with traffic.
Only registered methods get a histogram, so client-chosen names cannot grow it either.

Recording is on every call's path and reading is rare, so a latency is only appended to a
short list of its method's; the list is folded into the buckets when it is full or when the
figures are read (a sort and a bisection per bucket reached, instead of one per call).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter

_PER_OCTAVE = 4
_BUCKETS = 32 * _PER_OCTAVE  # bucket i holds latencies below 2 ** (i / 4) µs
# The lower bound of each bucket but the first, in seconds: a latency's bucket is how many
# of these it reaches (one C call, no logarithm).
_BOUNDS = [2.0 ** ((i - 1) / _PER_OCTAVE) / 1e6 for i in range(1, _BUCKETS)]
# Latencies a histogram keeps unfolded at most (a few KB per registered method).
FOLD_AT = 256


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
    """What the dispatcher counts as calls finish: errors by code and latency per method."""

    __slots__ = ("errors", "methods", "_pending")

    def __init__(self) -> None:
        self.errors: Counter = Counter()
        self.methods: dict[str, LatencyHistogram] = {}
        self._pending: dict[str, list[float]] = {}  # each histogram's pending list, by method

    def record(self, method: str, seconds: float, error_code: int | None) -> None:
        """One finished call of a registered method (the dispatcher's hot path: keep it cheap)."""
        try:
            pending = self._pending[method]
        except KeyError:
            histogram = self.methods[method] = LatencyHistogram()
            pending = self._pending[method] = histogram.pending
        if error_code is not None:
            self.methods[method].record(seconds, error_code)
            self.errors[error_code] += 1
            return
        pending.append(seconds)  # LatencyHistogram.record, in line for a call that succeeded
        if len(pending) >= FOLD_AT:
            self.methods[method].fold()

    def refused(self, error_code: int) -> None:
        """A call answered with an error before it was queued (unknown method, busy, stopping)."""
        self.errors[error_code] += 1

    def summary(self) -> dict:
        return {
            "errors": {str(code): n for code, n in sorted(self.errors.items())},
            "methods": {name: h.summary() for name, h in sorted(self.methods.items())},
        }
