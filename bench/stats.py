"""Percentiles of one repeat, and the median of medians (with spread) across repeats."""

from __future__ import annotations

import math
import statistics
from typing import Iterable

from .cases import Sample

PERCENTILES = (("p50_us", 0.50), ("p90_us", 0.90), ("p99_us", 0.99), ("p999_us", 0.999))


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile (a value that was observed, never an interpolation)."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(sample: Sample) -> dict[str, float | None]:
    """One repeat: percentiles and max in µs, calls per second over the timed window."""
    if sample.rss_kib is not None:
        return {"rss_kib": sample.rss_kib}
    values = sorted(sample.latencies_ns)
    summary: dict[str, float | None] = {key: percentile(values, q) / 1e3 for key, q in PERCENTILES}
    summary["max_us"] = values[-1] / 1e3
    calls = sample.batch * len(values)
    summary["calls_per_s"] = calls / (sample.elapsed_ns / 1e9) if sample.elapsed_ns else None
    return summary


def spread_pct(values: Iterable[float]) -> float | None:
    """(max - min) / median of one metric across repeats, in percent."""
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return None
    middle = statistics.median(values)
    return 100.0 * (max(values) - min(values)) / middle if middle else None


def headline(kind: str) -> str:
    """The metric a case is judged by, and whose spread is reported."""
    return {"throughput": "calls_per_s", "memory": "rss_kib"}.get(kind, "p50_us")


def aggregate(kind: str, samples: list[Sample]) -> dict:
    """Median across repeats of every per-repeat metric; max is the max of all repeats."""
    per_repeat = [summarize(s) for s in samples]
    keys = per_repeat[0].keys()
    result = {key: _median([r[key] for r in per_repeat]) for key in keys}
    if "max_us" in result:
        result["max_us"] = max(r["max_us"] for r in per_repeat)
    metric = headline(kind)
    result["spread_pct"] = spread_pct(r[metric] for r in per_repeat)
    result["per_repeat"] = [r[metric] for r in per_repeat]
    result["timed_calls"] = sum(s.calls for s in samples)
    return result


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
