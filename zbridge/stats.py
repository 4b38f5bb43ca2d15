"""Per-tool numbers the broker keeps: calls, errors by code, latency histograms. Pure.

Memory is bounded twice: a histogram is a fixed list of bucket counters (no samples are
kept), and only names the daemons serve get their own entry (``ToolTable``: a caller may
send any method name; names no daemon serves share ``OTHER``, so a flood of made-up names
can neither grow the table nor hide a real tool). Recording a call costs a bisect and two
list increments, so the hot path does not notice it.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

# upper bounds in seconds (Prometheus "le"); the last bucket (+Inf) catches the rest
BOUNDS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
QUANTILES = (0.5, 0.9, 0.99)
MAX_TOOLS = 256         # entries for names seen before any daemon said which it serves
MAX_SERVED = 10_000     # served names with their own entry, at most (a READY lists them)
OTHER = "(other)"       # every name no daemon serves
UNKNOWN = "(unknown)"   # a request whose body did not start with a "method" string
BUILTIN = ("health", "execute_tool")  # every daemon answers these besides its tools


class Histogram:
    """Counts of observations per fixed bucket, plus their sum."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.sum = 0.0
        self.count = 0

    def add(self, seconds: float) -> None:
        self.counts[bisect_left(BOUNDS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """Estimated by linear interpolation inside the bucket holding rank q·count."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                low = BOUNDS[i - 1] if i else 0.0
                high = BOUNDS[i] if i < len(BOUNDS) else BOUNDS[-1]
                return low + (high - low) * max(0.0, rank - seen) / n
            seen += n
        return BOUNDS[-1]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"p{round(q * 100)}": _round(self.quantile(q)) for q in QUANTILES}
        out["mean"] = _round(self.sum / self.count) if self.count else None
        return out

    def snapshot(self) -> dict[str, Any]:
        """Raw buckets (not cumulative), for exporters."""
        return {"counts": list(self.counts), "sum": self.sum, "count": self.count}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


class ToolStats:
    __slots__ = ("calls", "errors", "queue", "run")

    def __init__(self) -> None:
        self.calls = 0                     # answered calls (results and errors)
        self.errors: dict[int, int] = {}   # error code -> answered calls with that error
        self.queue = Histogram()           # accepted -> handed to a daemon
        self.run = Histogram()             # handed to a daemon -> its final reply

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
        return {name: {"queue": s.queue.snapshot(), "run": s.run.snapshot()}
                for name, s in self.by_name.items()}
