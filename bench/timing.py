"""The one timing loop every case uses, and the latency and throughput measurements on it."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from .cases import Case, Handle, Sample

clock = time.perf_counter_ns
NEVER = 1 << 62


class BenchError(RuntimeError):
    """A target did not behave (wrong result, did not start); its cases are reported skipped."""


def make_payload(size: int) -> str:
    """The same payload for every case: ``size`` ASCII bytes, valid in JSON, msgpack, pickle."""
    return "x" * size


def case_payload(case: Case) -> Any:
    """The case's payload: the str above, or as many bytes for a ``binary`` case."""
    return b"x" * case.payload_bytes if case.binary else make_payload(case.payload_bytes)


def timed_loop(call: Callable[[], Any], count: int = NEVER, until_ns: int = NEVER) -> list[int]:
    """Call ``call()`` ``count`` times or until ``until_ns``; each call's duration in ns."""
    durations: list[int] = []
    append = durations.append
    n = 0
    while n < count:
        start = clock()
        if start >= until_ns:
            break
        call()
        append(clock() - start)
        n += 1
    return durations


def prepare(handle: Handle, payload: Any, warmup: int) -> Callable[[], Any]:
    """A caller for this thread, checked to return the payload, then warmed up."""
    call = handle.make_caller(payload)
    result = call()
    if result != payload and (isinstance(payload, bytes) or result != payload.encode()):  # the raw pipe floor echoes bytes
        raise BenchError(f"noop returned {str(result)[:80]!r} instead of the payload")
    timed_loop(call, count=warmup)
    return call


def measure_latency(handle: Handle, case: Case) -> Sample:
    call = prepare(handle, case_payload(case), case.warmup)
    start = clock()
    durations = timed_loop(call, count=case.calls)
    return Sample(durations, elapsed_ns=clock() - start, batch=case.batch)


def measure_throughput(handle: Handle, case: Case) -> Sample:
    """``case.callers`` threads, each with its own caller, calling until a shared deadline."""
    payload = case_payload(case)
    window: dict[str, int] = {}

    def open_window() -> None:  # runs once, as every caller passes the barrier
        window["start"] = clock()
        window["until"] = window["start"] + int(case.seconds * 1e9)

    barrier = threading.Barrier(case.callers, action=open_window)
    results: list[list[int] | BaseException] = [[] for _ in range(case.callers)]
    ends = [0] * case.callers

    def caller(i: int) -> None:
        try:
            call = prepare(handle, payload, case.warmup)
            barrier.wait()
            results[i] = timed_loop(call, until_ns=window["until"])
            ends[i] = clock()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the measuring thread
            barrier.abort()
            results[i] = exc

    threads = [threading.Thread(target=caller, args=(i,), name=f"bench-caller-{i}", daemon=True)
               for i in range(case.callers)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:  # Ctrl-C: let callers reach the deadline before teardown
        for thread in threads:
            thread.join(case.seconds + 5.0)
        raise
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        raise (real or errors)[0]
    durations = [d for r in results for d in r]
    return Sample(durations, elapsed_ns=max(ends) - window["start"])
