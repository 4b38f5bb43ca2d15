"""Per-tool latency sketches (issue 23): quantiles within a few percent from microseconds to
minutes, bounded memory, exact Prometheus buckets, merging, and every call counted,
timeouts included. Pure: no process, no socket."""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import strategies as st

from zbridge.broker import Broker
from zbridge.config import Settings
from zbridge.protocol import Header, Kind, encode_request, encode_result, read_header
from zbridge.stats import BOUNDS, MAX_BUCKETS, RELATIVE_ACCURACY, Histogram


def true_quantile(values: list[float], q: float) -> float:
    """The observation of the nearest 0-based rank round(q·(n-1)): what the sketch estimates."""
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1) + 0.5)]


def sketch(values: list[float]) -> Histogram:
    h = Histogram()
    for v in values:
        h.add(v)
    return h


def test_a_six_second_call_is_six_seconds_not_a_bucket_guess():
    h = sketch([6.0 + random.uniform(-0.01, 0.01) for _ in range(20)])
    for q in (0.5, 0.9, 0.99):
        assert abs(h.quantile(q) - 6.0) <= 0.05 * 6.0
    assert abs(h.summary()["p50"] - 6.0) <= 0.012 * 6.0  # the sketch's own bound, well inside 5 %


def test_a_200_microsecond_tool_is_200_microseconds():
    h = sketch([random.gauss(200e-6, 5e-6) for _ in range(10_000)])
    for q in (0.5, 0.9):
        assert abs(h.quantile(q) - 200e-6) <= 0.10 * 200e-6
    assert abs(h.quantile(0.5) - 200e-6) <= 0.02 * 200e-6


def test_microseconds_and_minutes_in_one_sketch_keep_their_own_scale():
    values = [30e-6] * 900 + [0.25] * 90 + [180.0] * 10
    h = sketch(values)
    assert abs(h.quantile(0.5) - 30e-6) <= RELATIVE_ACCURACY * 30e-6
    assert abs(h.quantile(0.95) - 0.25) <= RELATIVE_ACCURACY * 0.25
    assert abs(h.quantile(0.995) - 180.0) <= RELATIVE_ACCURACY * 180.0
    assert h.quantile(1.0) == 180.0 and h.quantile(0.0) == 30e-6  # extremes are kept exactly


@given(st.lists(st.floats(min_value=1e-6, max_value=3600.0), min_size=1, max_size=400),
       st.sampled_from([0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0]))
def test_every_quantile_is_within_the_relative_accuracy(values, q):
    estimate = sketch(values).quantile(q)
    expected = true_quantile(values, q)
    assert abs(estimate - expected) <= RELATIVE_ACCURACY * expected * (1 + 1e-9)


@given(st.lists(st.floats(min_value=0.0, max_value=1e9), max_size=200),
       st.lists(st.floats(min_value=0.0, max_value=1e9), max_size=200))
def test_merging_is_adding(a, b):
    merged = sketch(a)
    merged.merge(sketch(b))
    both = sketch(a + b)
    assert merged.bins == both.bins and merged.counts == both.counts and merged.count == both.count
    assert merged.quantile(0.5) == both.quantile(0.5)


def test_memory_is_bounded_whatever_the_values():
    h = sketch([10.0 ** random.uniform(-12, 12) for _ in range(50_000)] + [0.0, -1.0, math.inf])
    assert len(h.bins) <= MAX_BUCKETS <= 1300
    assert len(h.counts) == len(BOUNDS) + 1
    assert Histogram().quantile(0.5) is None and Histogram().summary()["count"] == 0


def test_prometheus_buckets_span_microseconds_to_minutes_and_count_exactly():
    assert BOUNDS[0] <= 1e-6 and BOUNDS[-1] >= 600 and list(BOUNDS) == sorted(BOUNDS)
    h = sketch([1e-6, 0.0025, 0.0025000001, 7.0, 5000.0])
    cumulative = dict(zip(BOUNDS, [sum(h.counts[:i + 1]) for i in range(len(BOUNDS))]))
    assert cumulative[1e-6] == 1            # le is inclusive
    assert cumulative[0.0025] == 2          # 0.0025000001 is above it, exactly
    assert cumulative[5.0] == 3 and cumulative[10.0] == 4
    assert h.counts[-1] == 1                # 5000 s: +Inf
    assert h.snapshot()["count"] == 5 and math.isclose(h.snapshot()["sum"], sum([1e-6, 0.0025, 0.0025000001, 7.0, 5000.0]))


def _call(b: Broker, id: int, tool: str, now: float, timeout_ms: int = 0) -> None:
    frame = encode_request(id, tool, None, timeout_ms=timeout_ms)
    b.submit(b"c", read_header(frame), frame, now)


def test_timeouts_are_counted_in_the_latencies_by_outcome():
    b = Broker(Settings(kill_grace=1.0, heartbeat_interval=60.0), rng=random.Random(0), new_ident=lambda n: b"w%d" % n)
    _call(b, 1, "nap", 0.0)
    b.daemon_ready(b"w1", {"pid": 7, "tools": ["nap"]}, 0.0)
    b.daemon_reply(b"w1", Header(Kind.REPLY, 1), encode_result(1, None), 2.0)   # ok after 2 s
    _call(b, 2, "nap", 3.0, timeout_ms=4000)
    _call(b, 3, "nap", 3.0, timeout_ms=1000)     # waits behind call 2, expires in the queue
    b.tick(4.0)
    b.tick(7.0)                                  # call 2 times out while running
    nap = b.status(7.0)["tools"]["nap"]
    assert nap["calls"] == 3 and nap["errors"] == {"-32001": 2}
    assert nap["run_s"]["count"] == 2            # the ok call and the running timeout
    assert abs(nap["run_s"]["max"] - 4.0) <= 1e-6 and abs(nap["run_s"]["mean"] - 3.0) <= 1e-6
    assert nap["queue_s"]["count"] == 3          # dispatched twice, expired waiting once
    assert abs(nap["queue_s"]["max"] - 1.0) <= 1e-6
