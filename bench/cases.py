"""What a benchmark case is, and the builders every target shares.

A *target* is something to set up once per repeat (a Bridge, a served hub, a proxy and its
workers, a process pool). Setting it up yields a ``Handle``; each of the target's *cases*
then measures through that handle. Cases of one target run back to back; targets are
interleaved across repeats by the runner.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, ContextManager

from .profiles import CALLERS, GATHER, HUGE, SMALL, SWEEP, Profile, size_label

LATENCY, THROUGHPUT, COLD_START, MEMORY = "latency", "throughput", "cold_start", "memory"
GATHERED = "gather"   # each timed item is one asyncio.gather of GATHER calls


def no_pids() -> dict[str, list[int]]:
    return {}


@dataclass
class Handle:
    """A ready target. ``make_caller(payload)`` is called in the thread that will make the
    calls and returns a zero-argument function doing one round trip with that payload (for
    a gather target: one ``asyncio.gather`` of GATHER round trips, see ``gather_handle``)."""
    make_caller: Callable[[Any], Callable[[], Any]]
    pids: Callable[[], dict[str, list[int]]] = no_pids   # role ("hub", "daemon") -> pids


@dataclass
class Sample:
    """One repeat of one case."""
    latencies_ns: list[int]
    elapsed_ns: int = 0
    rss_kib: float | None = None
    batch: int = 1          # calls per timed item (a gather: GATHER)

    @property
    def calls(self) -> int:
        return len(self.latencies_ns)


Measure = Callable[[Handle, "Case"], Sample]


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    measure: Measure
    workers: int | None = None
    callers: int = 1
    payload_bytes: int = SMALL
    binary: bool = False    # the payload is bytes (else a str)
    calls: int = 0          # latency: timed calls; cold start: constructions
    warmup: int = 0
    seconds: float = 0.0    # throughput duration
    batch: int = 1          # calls per timed item (a gather: GATHER)


@dataclass(frozen=True)
class Target:
    name: str
    open: Callable[[], ContextManager[Handle]]
    cases: tuple[Case, ...]
    requires: tuple[str, ...] = ()   # importable modules; if one is missing, all cases skip


def latency_case(name: str, profile: Profile, *, workers: int | None = None,
                 payload: int = SMALL, calls: int | None = None, warmup: int | None = None) -> Case:
    from .timing import measure_latency
    return Case(name, LATENCY, measure_latency, workers=workers, payload_bytes=payload,
                calls=profile.calls if calls is None else calls,
                warmup=profile.warmup if warmup is None else warmup)


def sweep_cases(base: str, profile: Profile, *, workers: int | None = None) -> list[Case]:
    """The payload sweep beyond the headline size: ``base/10KiB``, ``base/1MiB``."""
    big = max(SWEEP)
    return [latency_case(f"{base}/{size_label(size)}", profile, workers=workers, payload=size,
                         calls=profile.big_calls if size == big else profile.calls,
                         warmup=min(profile.warmup, 20) if size == big else profile.warmup)
            for size in SWEEP if size != SMALL]


def huge_case(base: str, profile: Profile, *, workers: int | None = None) -> Case:
    """``base/16MiB``: a bytes payload of HUGE bytes, a few calls (bandwidth-bound)."""
    from .timing import measure_latency
    return Case(f"{base}/{size_label(HUGE)}", LATENCY, measure_latency, workers=workers,
                payload_bytes=HUGE, binary=True, calls=profile.huge_calls, warmup=3)


def gather_case(name: str, profile: Profile, *, workers: int) -> Case:
    """``name``: the wall time of one ``asyncio.gather`` of GATHER calls, ``profile.gathers``
    times per repeat after one checked and one warm-up gather."""
    from .timing import measure_latency
    return Case(name, GATHERED, measure_latency, workers=workers, calls=profile.gathers, warmup=1,
                batch=GATHER)


def gather_handle(runner: asyncio.Runner, call: Callable[[Any], Awaitable[Any]]) -> Handle:
    """A Handle whose caller runs one ``asyncio.gather`` of GATHER ``call(payload)`` on
    ``runner``'s loop; it returns the payload if every call returned it, else a wrong result."""
    async def gather(payload: Any) -> Any:
        results = await asyncio.gather(*[call(payload) for _ in range(GATHER)])
        return payload if results.count(payload) == GATHER else next(r for r in results if r != payload)
    return Handle(lambda payload: lambda: runner.run(gather(payload)))


def throughput_cases(base: str, profile: Profile, *, workers: int,
                     callers: tuple[int, ...] = CALLERS) -> list[Case]:
    """``base/cN``: N threads calling in a loop for ``profile.seconds``."""
    from .timing import measure_throughput
    return [Case(f"{base}/c{n}", THROUGHPUT, measure_throughput, workers=workers, callers=n,
                 warmup=max(10, profile.warmup // 10), seconds=profile.seconds)
            for n in callers]

