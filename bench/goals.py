"""The issue's targets, evaluated on one run's results (reported, never asserted)."""

from __future__ import annotations

from dataclasses import dataclass

from .profiles import GATHER, RECYCLE

W1 = "zbridge.embedded.w1"
PPE = "peer.process_pool_executor"
PROXY_W2C8 = "floor.zmq_proxy.w2/c8"


@dataclass(frozen=True)
class Goal:
    text: str
    numerator: tuple[str, str]      # (case name, field)
    denominator: tuple[str, str] | float  # a case's field, or a constant (an absolute bound)
    bound: float
    at_most: bool                   # met when ratio <= bound, else when ratio >= bound


GOALS = (
    # issue 20: faster than the stdlib (these replace issue 14's embedded targets)
    Goal(f"{W1} p50 <= 0.3 x {PPE} p50", (W1, "p50_us"), (PPE, "p50_us"), 0.3, True),
    Goal(f"{W1} p50 <= 0.8 x floor.zmq_direct p50",
         (W1, "p50_us"), ("floor.zmq_direct", "p50_us"), 0.8, True),
    Goal(f"zbridge.async.gather{GATHER} <= 0.5 x {PPE}.gather{GATHER} (median wall time of one gather)",
         (f"zbridge.async.gather{GATHER}", "p50_us"), (f"{PPE}.gather{GATHER}", "p50_us"), 0.5, True),
    Goal(f"zbridge.embedded.w2/c8 calls/s >= 2.5 x {PPE}.w2/c8 calls/s",
         ("zbridge.embedded.w2/c8", "calls_per_s"), (f"{PPE}.w2/c8", "calls_per_s"), 2.5, False),
    Goal(f"zbridge.embedded.w2/c8 calls/s >= 0.8 x {PROXY_W2C8} calls/s",
         ("zbridge.embedded.w2/c8", "calls_per_s"), (PROXY_W2C8, "calls_per_s"), 0.8, False),
    Goal(f"{W1}.recycle{RECYCLE} p99 <= 2 x {W1} p99 (respawns do not stall callers)",
         (f"{W1}.recycle{RECYCLE}", "p99_us"), (W1, "p99_us"), 2.0, True),
    Goal(f"{W1} p99 <= 3 x its p50", (W1, "p99_us"), (W1, "p50_us"), 3.0, True),
    # issue 21: served clients borrow daemons (leases)
    Goal(f"zbridge.serve p50 <= 1.2 x {W1} p50",
         ("zbridge.serve", "p50_us"), (W1, "p50_us"), 1.2, True),
    Goal(f"zbridge.serve.w2/p4x2 calls/s >= 1.5 x {PPE}.w2/c8 calls/s (4 client processes x 2 threads)",
         ("zbridge.serve.w2/p4x2", "calls_per_s"), (f"{PPE}.w2/c8", "calls_per_s"), 1.5, False),
    Goal("zbridge.serve p50 <= 1.3 x floor.zmq_proxy p50",
         ("zbridge.serve", "p50_us"), ("floor.zmq_proxy", "p50_us"), 1.3, True),
    Goal(f"zbridge.serve.w2/c8 calls/s >= 0.5 x {PROXY_W2C8} calls/s",
         ("zbridge.serve.w2/c8", "calls_per_s"), (PROXY_W2C8, "calls_per_s"), 0.5, False),
    Goal(f"{W1}/16MiB p50 <= 1.3 x floor.zmq_direct/16MiB p50 (bytes)",
         (f"{W1}/16MiB", "p50_us"), ("floor.zmq_direct/16MiB", "p50_us"), 1.3, True),
    Goal(f"{W1} >= 8 x faster than peer.zerorpc at p50",
         ("peer.zerorpc", "p50_us"), (W1, "p50_us"), 8.0, False),
    Goal(f"{W1} >= 100 x faster than zbridge.subprocess at p50",
         ("zbridge.subprocess", "p50_us"), (W1, "p50_us"), 100.0, False),
    Goal("zbridge.stdio.cold_start p50 <= 1.5 x floor.stdio_cold_start p50",
         ("zbridge.stdio.cold_start", "p50_us"), ("floor.stdio_cold_start", "p50_us"), 1.5, True),
    # issue 21: preloaded daemons (200 MiB of read-only weights and a 1 s load, bench/model.py)
    Goal("zbridge.preload.pss.w4 <= 1.25 x zbridge.preload.pss.w1.spawned (4 forked daemons and "
         "their template together against one spawned daemon, PSS)",
         ("zbridge.preload.pss.w4", "rss_kib"), ("zbridge.preload.pss.w1.spawned", "rss_kib"), 1.25, True),
    Goal("zbridge.preload.replace p50 <= 50 ms (SIGKILL to the replacement's first answer)",
         ("zbridge.preload.replace", "p50_us"), 50_000.0, 1.0, True),
)


ARRAY_GOALS = (  # bench/arrays.py: medians in ms of one run; hub growth in MiB
    Goal("zbridge.array.64MiB <= 1.3 x floor.zmq_copy_false.64MiB",
         ("zbridge.array.64MiB", "ms"), ("floor.zmq_copy_false.64MiB", "ms"), 1.3, True),
    Goal("zbridge.array.1MiB >= 3 x faster than peer.process_pool_executor.1MiB",
         ("peer.process_pool_executor.1MiB", "ms"), ("zbridge.array.1MiB", "ms"), 3.0, False),
    Goal("zbridge.array.64MiB >= 3 x faster than peer.process_pool_executor.64MiB",
         ("peer.process_pool_executor.64MiB", "ms"), ("zbridge.array.64MiB", "ms"), 3.0, False),
    Goal("zbridge.array.1MiB >= 20 x faster than zbridge.tolist.1MiB",
         ("zbridge.tolist.1MiB", "ms"), ("zbridge.array.1MiB", "ms"), 20.0, False),
    Goal("zbridge.array.64MiB >= 20 x faster than zbridge.tolist.64MiB",
         ("zbridge.tolist.64MiB", "ms"), ("zbridge.array.64MiB", "ms"), 20.0, False),
    Goal("hub peak RSS growth during a 64 MiB array call <= 1.2 x 64 MiB",
         ("hub.peak_rss_growth.64MiB", "mib"), ("hub.peak_rss_growth.64MiB", "array_mib"), 1.2, True),
)


def _value(rows: dict[str, dict], ref: tuple[str, str]) -> float | None:
    row = rows.get(ref[0])
    return None if row is None or row.get("skipped") else row.get(ref[1])


def evaluate(rows: list[dict], targets: tuple[Goal, ...] = GOALS) -> list[dict]:
    """Each goal with its measured ratio and whether it was met (None: not measured)."""
    by_name = {row["name"]: row for row in rows}
    results = []
    for goal in targets:
        top = _value(by_name, goal.numerator)
        bottom = goal.denominator if isinstance(goal.denominator, float) else _value(by_name, goal.denominator)
        ratio = top / bottom if top is not None and bottom else None
        met = None if ratio is None else (ratio <= goal.bound if goal.at_most else ratio >= goal.bound)
        results.append({"goal": goal.text, "ratio": ratio, "bound": goal.bound,
                        "comparison": "<=" if goal.at_most else ">=", "met": met})
    return results
