"""How much to measure: the default run (~5 min) and ``--quick`` (about a minute)."""

from __future__ import annotations

from dataclasses import dataclass, replace

KIB = 1024
MIB = 1024 * KIB
SMALL = 100                       # bytes: the payload of every headline case
SWEEP = (SMALL, 10 * KIB, MIB)    # the payload sweep (100 B is the headline measurement)
HUGE = 16 * MIB                   # a bytes payload: out of band in zbridge (buffer frames)
CALLERS = (1, 2, 4, 8)            # concurrent callers for throughput
POOL_SIZES = (1, 2)               # daemons / workers for throughput
GATHER = 2000                     # calls in one asyncio.gather (the gather cases)
RECYCLE = 200                     # max_calls of the recycling case: a daemon replaced every ~200 calls


@dataclass(frozen=True)
class Profile:
    name: str
    repeats: int             # rounds; every target runs once per round, in rotated order
    calls: int               # timed calls per latency case per repeat, after warm-up
    warmup: int              # untimed calls before each latency or throughput measurement
    subprocess_calls: int    # timed calls for the per-call subprocess case (~0.1 s each)
    big_calls: int           # timed calls for 1 MiB payloads (bandwidth-bound, slow)
    huge_calls: int          # timed calls for the 16 MiB bytes payload (after 3 warm-up calls)
    seconds: float           # duration of each throughput measurement
    cold_starts: int         # Bridge() constructions timed per cold-start case per repeat
    gathers: int             # gathers of GATHER calls timed per gather case per repeat


DEFAULT = Profile("default", repeats=3, calls=5000, warmup=300, subprocess_calls=30,
                  big_calls=200, huge_calls=20, seconds=2.0, cold_starts=3, gathers=10)
QUICK = Profile("quick", repeats=3, calls=1000, warmup=100, subprocess_calls=10,
                big_calls=20, huge_calls=5, seconds=0.25, cold_starts=1, gathers=3)


def choose(quick: bool, repeats: int | None = None, calls: int | None = None) -> Profile:
    profile = QUICK if quick else DEFAULT
    if repeats is not None:
        profile = replace(profile, repeats=repeats)
    if calls is not None:
        profile = replace(profile, calls=calls)
    return profile


def size_label(size: int) -> str:
    if size >= MIB and size % MIB == 0:
        return f"{size // MIB}MiB"
    if size >= KIB and size % KIB == 0:
        return f"{size // KIB}KiB"
    return f"{size}B"
