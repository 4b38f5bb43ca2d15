"""The issue's targets, evaluated on one run's results (reported, never asserted)."""

from __future__ import annotations

from dataclasses import dataclass

W1 = "zbridge.embedded.w1"


@dataclass(frozen=True)
class Goal:
    text: str
    numerator: tuple[str, str]      # (case name, field)
    denominator: tuple[str, str]
    bound: float
    at_most: bool                   # met when ratio <= bound, else when ratio >= bound


GOALS = (
    Goal(f"{W1} p50 <= 0.8 x peer.process_pool_executor p50",
         (W1, "p50_us"), ("peer.process_pool_executor", "p50_us"), 0.8, True),
    Goal(f"{W1} p50 <= 0.8 x floor.zmq_proxy p50",
         (W1, "p50_us"), ("floor.zmq_proxy", "p50_us"), 0.8, True),
    Goal(f"{W1} p50 <= 1.6 x floor.zmq_direct p50",
         (W1, "p50_us"), ("floor.zmq_direct", "p50_us"), 1.6, True),
    Goal("zbridge.serve p50 <= 1.3 x floor.zmq_proxy p50",
         ("zbridge.serve", "p50_us"), ("floor.zmq_proxy", "p50_us"), 1.3, True),
    Goal(f"{W1} p99 <= 3 x its p50", (W1, "p99_us"), (W1, "p50_us"), 3.0, True),
    Goal(f"{W1} >= 8 x faster than peer.zerorpc at p50",
         ("peer.zerorpc", "p50_us"), (W1, "p50_us"), 8.0, False),
    Goal(f"{W1} >= 100 x faster than zbridge.subprocess at p50",
         ("zbridge.subprocess", "p50_us"), (W1, "p50_us"), 100.0, False),
    Goal("zbridge.embedded.w2/c8 calls/s >= 0.8 x floor.zmq_proxy.w2/c8 calls/s",
         ("zbridge.embedded.w2/c8", "calls_per_s"), ("floor.zmq_proxy.w2/c8", "calls_per_s"), 0.8, False),
    Goal("zbridge.stdio.cold_start p50 <= 1.5 x floor.stdio_cold_start p50",
         ("zbridge.stdio.cold_start", "p50_us"), ("floor.stdio_cold_start", "p50_us"), 1.5, True),
)


def _value(rows: dict[str, dict], ref: tuple[str, str]) -> float | None:
    row = rows.get(ref[0])
    return None if row is None or row.get("skipped") else row.get(ref[1])


def evaluate(rows: list[dict]) -> list[dict]:
    """Each goal with its measured ratio and whether it was met (None: not measured)."""
    by_name = {row["name"]: row for row in rows}
    results = []
    for goal in GOALS:
        top, bottom = _value(by_name, goal.numerator), _value(by_name, goal.denominator)
        ratio = top / bottom if top is not None and bottom else None
        met = None if ratio is None else (ratio <= goal.bound if goal.at_most else ratio >= goal.bound)
        results.append({"goal": goal.text, "ratio": ratio, "bound": goal.bound,
                        "comparison": "<=" if goal.at_most else ">=", "met": met})
    return results
