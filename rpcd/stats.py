"""Call statistics for `rpc.stats`: counts, errors by code, per-method latency in fixed memory.

Latency goes into a log-scale histogram per method: four buckets per doubling from 1 µs to
about an hour, so a percentile is read to within 19 % and memory never grows with traffic.
Only registered methods get a histogram, so client-chosen names cannot grow it either.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter

_PER_OCTAVE = 4
_BUCKETS = 32 * _PER_OCTAVE  # bucket i holds latencies below 2 ** (i / 4) µs
# The lower bound of each bucket but the first, in seconds: a latency's bucket is how many
# of these it reaches (one C call, no logarithm).
_BOUNDS = [2.0 ** ((i - 1) / _PER_OCTAVE) / 1e6 for i in range(1, _BUCKETS)]


class LatencyHistogram:
    """Counts of latencies in log-spaced buckets; percentiles are bucket upper bounds."""

    __slots__ = ("buckets", "count", "errors", "codes", "sum", "max")

    def __init__(self) -> None:
        self.buckets = [0] * _BUCKETS
        self.count = 0
        self.errors = 0
        self.codes: Counter = Counter()  # errors by code (the metrics' handled_total labels)
        self.sum = 0.0  # exact, for the metrics' histogram _sum
        self.max = 0.0

    def record(self, seconds: float, failed: bool | int = False) -> None:
        """One call; `failed` is False, True, or the error code it was answered with."""
        self.buckets[bisect_right(_BOUNDS, seconds)] += 1
        self.count += 1
        self.sum += seconds
        if failed:
            self.errors += 1
            if failed is not True:
                self.codes[failed] += 1
        if seconds > self.max:
            self.max = seconds

    def percentile(self, fraction: float) -> float:
        """The latency in seconds below which `fraction` of the calls finished (0 if none)."""
        if not self.count:
            return 0.0
        rank = max(1, round(fraction * self.count))
        seen = 0
        for index, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                return min(2.0 ** (index / _PER_OCTAVE) / 1e6, self.max)
        return self.max

    def summary(self) -> dict:
        return {
            "count": self.count,
            "errors": self.errors,
            "p50_ms": round(self.percentile(0.50) * 1e3, 3),
            "p99_ms": round(self.percentile(0.99) * 1e3, 3),
            "max_ms": round(self.max * 1e3, 3),
        }


class CallStats:
    """What the dispatcher counts as calls finish: errors by code and latency per method."""

    __slots__ = ("errors", "methods")

    def __init__(self) -> None:
        self.errors: Counter = Counter()
        self.methods: dict[str, LatencyHistogram] = {}

    def record(self, method: str, seconds: float, error_code: int | None) -> None:
        """One finished call of a registered method (the dispatcher's hot path: keep it cheap)."""
        histogram = self.methods.get(method)
        if histogram is None:
            histogram = self.methods[method] = LatencyHistogram()
        histogram.record(seconds, False if error_code is None else error_code)
        if error_code is not None:
            self.errors[error_code] += 1

    def refused(self, error_code: int) -> None:
        """A call answered with an error before it was queued (unknown method, busy, stopping)."""
        self.errors[error_code] += 1

    def summary(self) -> dict:
        return {
            "errors": {str(code): n for code, n in sorted(self.errors.items())},
            "methods": {name: h.summary() for name, h in sorted(self.methods.items())},
        }
