"""Per-tool numbers the broker keeps: calls, errors by code, latency sketches. Pure.

A latency ``Histogram`` is a log-bucket sketch (the idea of DDSketch): bucket ``i`` holds
the values in ``(10**((i-1)/PER_DECADE), 10**(i/PER_DECADE)]`` seconds, and a quantile is
answered with the middle (in relative terms) of the bucket holding its rank, so it is
within ``RELATIVE_ACCURACY`` (1.2 %) of a value that was really observed, from a
microsecond to a day alike. Sketches merge by adding bucket counts (several hubs, several
intervals). Memory is bounded three times: buckets exist only for values seen and only
inside ``[MIN_VALUE, MAX_VALUE]`` (values outside are clamped, so at most
``MAX_BUCKETS`` of them); no sample is kept; only names the daemons serve get their own
entry (``ToolTable``: a caller may send any method name; names no daemon serves share
``OTHER``, so a flood of made-up names can neither grow the table nor hide a real tool). Recording a call
costs a ``log10``, a dict update and a bisect, so the hot path does not notice it.

Beside the sketch, each histogram counts its values exactly per Prometheus bucket
(``BOUNDS``: 1 µs to 1000 s, 1-2.5-5 per decade), so an exporter's ``le`` counts are exact.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Any, Iterable

PER_DECADE = 100
GAMMA = 10 ** (1 / PER_DECADE)
RELATIVE_ACCURACY = (GAMMA - 1) / (GAMMA + 1)   # 0.0115
MIN_VALUE = 1e-7                                 # 0.1 µs: below, timer noise
MAX_VALUE = 1e5                                  # about 28 hours
_LOW = math.ceil(math.log10(MIN_VALUE) * PER_DECADE)
_HIGH = math.ceil(math.log10(MAX_VALUE) * PER_DECADE)
MAX_BUCKETS = _HIGH - _LOW + 1

# Prometheus "le" upper bounds in seconds; the last bucket (+Inf) catches the rest
BOUNDS: tuple[float, ...] = tuple(
    float(f"{m}e{e}") for e in range(-6, 3) for m in ("1", "2.5", "5")) + (1000.0,)
QUANTILES = (0.5, 0.9, 0.99)
MAX_TOOLS = 256         # entries for names seen before any daemon said which it serves
MAX_SERVED = 10_000     # served names with their own entry, at most (a READY lists them)
OTHER = "(other)"       # every name no daemon serves
UNKNOWN = "(unknown)"   # a request whose body did not start with a "method" string
BUILTIN = ("health", "execute_tool")  # every daemon answers these besides its tools


def bucket_of(seconds: float) -> int:
    """The sketch bucket holding ``seconds`` (clamped to [MIN_VALUE, MAX_VALUE])."""
    if seconds <= MIN_VALUE:
        return _LOW
    if seconds >= MAX_VALUE:
        return _HIGH
    return math.ceil(math.log10(seconds) * PER_DECADE)


def bucket_value(index: int) -> float:
    """What a bucket stands for: the point within RELATIVE_ACCURACY of all its values."""
    return 2 * 10 ** (index / PER_DECADE) / (GAMMA + 1)


class Histogram:
    """Latencies in seconds: a mergeable log-bucket sketch plus exact Prometheus buckets."""

    __slots__ = ("bins", "counts", "sum", "count", "min", "max")

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}               # sketch bucket -> values in it
        self.counts = [0] * (len(BOUNDS) + 1)         # values per Prometheus bucket (not cumulative)
        self.sum = 0.0
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    def add(self, seconds: float) -> None:
        bins = self.bins
        i = bucket_of(seconds)
        bins[i] = bins.get(i, 0) + 1
        self.counts[bisect_left(BOUNDS, seconds)] += 1
        self.sum += seconds
        self.count += 1
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s observations to this one (exactly as if they had been added here)."""
        for i, n in other.bins.items():
            self.bins[i] = self.bins.get(i, 0) + n
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.sum += other.sum
        self.count += other.count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float | None:
        """The value of rank ``q`` (0..1) within RELATIVE_ACCURACY; None when empty.

        The rank is the nearest one, ``round(q·(count-1))`` over the sorted observations;
        the smallest and largest observations are kept exactly, so the extremes (and a
        sketch of one value) are exact."""
        if not self.count:
            return None
        rank = math.floor(q * (self.count - 1) + 0.5)  # 0-based rank of the nearest observation
        if rank <= 0:
            return self.min
        if rank >= self.count - 1:
            return self.max
        seen = 0
        value = self.max
        for i in sorted(self.bins):
            seen += self.bins[i]
            if seen > rank:
                value = bucket_value(i)
                break
        return min(max(value, self.min), self.max)

    def summary(self) -> dict[str, Any]:
        """``{"p50", "p90", "p99", "mean", "max", "count"}`` in seconds (None when empty)."""
        out: dict[str, Any] = {f"p{round(q * 100)}": _round(self.quantile(q)) for q in QUANTILES}
        out["mean"] = _round(self.sum / self.count) if self.count else None
        out["max"] = _round(self.max) if self.count else None
        out["count"] = self.count
        return out

    def snapshot(self) -> dict[str, Any]:
        """Exact counts per ``BOUNDS`` bucket (not cumulative, +Inf last), sum and count:
        what a Prometheus histogram needs."""
        return {"counts": list(self.counts), "sum": self.sum, "count": self.count}

    def buckets(self) -> list[tuple[float, int]]:
        """The sketch as (upper bound in seconds, count) pairs, smallest first: enough for
        another process to merge it, or to draw the distribution."""
        return [(10 ** (i / PER_DECADE), self.bins[i]) for i in sorted(self.bins)]


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 7)


class ToolStats:
    __slots__ = ("calls", "errors", "queue", "run")

    def __init__(self) -> None:
        self.calls = 0                     # answered calls (results and errors)
        self.errors: dict[int, int] = {}   # error code -> answered calls with that error
        self.queue = Histogram()           # accepted -> handed to a daemon (or expired waiting)
        self.run = Histogram()             # handed to a daemon -> its reply, or its timeout

    def answered(self, code: int | None) -> None:
        self.calls += 1
        if code is not None:
            self.errors[code] = self.errors.get(code, 0) + 1


class ToolTable:
    """``ToolStats`` by tool name. A name has its own entry once a daemon lists it in READY
    (``serve``); before any daemon did, the first ``limit`` names get provisional entries
    (the first calls come before the first daemon is ready). Every other name counts under
    ``OTHER``, and no entry is ever evicted."""

    def __init__(self, limit: int = MAX_TOOLS) -> None:
        self.by_name: dict[str, ToolStats] = {}
        self.limit = limit
        self.served: set[str] | None = None  # None until a daemon said what it serves

    def serve(self, names: list[str]) -> None:
        """A daemon is ready with these tools (from its READY; other types are ignored)."""
        if self.served is None:
            self.served = set(BUILTIN)
        for name in names[:MAX_SERVED]:
            if isinstance(name, str) and len(self.served) < MAX_SERVED:
                self.served.add(name)

    def get(self, tool: str | None) -> ToolStats:
        name = tool or UNKNOWN
        stats = self.by_name.get(name)
        if stats is None:
            served = self.served
            if served is None:
                if len(self.by_name) >= self.limit:
                    name = OTHER
            elif name not in served and name != UNKNOWN:
                name = OTHER
            stats = self.by_name.get(name)
            if stats is None:
                stats = self.by_name[name] = ToolStats()
        return stats

    def status(self) -> dict[str, dict[str, Any]]:
        """What ``status()["tools"]`` shows: counts and quantiles (seconds) per tool."""
        return {name: {"calls": s.calls, "errors": {str(k): v for k, v in sorted(s.errors.items())},
                       "queue_s": s.queue.summary(), "run_s": s.run.summary()}
                for name, s in sorted(self.by_name.items())}

    def histograms(self) -> dict[str, dict[str, Any]]:
        """Per tool, ``{"queue": snapshot, "run": snapshot}`` (``Histogram.snapshot``):
        exact counts per ``BOUNDS`` bucket for an exporter."""
        return {name: {"queue": s.queue.snapshot(), "run": s.run.snapshot()}
                for name, s in self.by_name.items()}
