"""``zbridge.preload.*``: daemons forked from a template (``preload=True``) against spawned
ones, with tools whose start-up stands for a model load (``bench/model.py``: 200 MiB of
read-only weights, 1 s).

* memory: the PSS (``/proc/PID/smaps_rollup``: a shared page counts 1/N in each of its N
  processes) of 4 daemons together, the template's included, against one spawned daemon's;
  and the USS (private pages) of a forked daemon.
* replacement: from a daemon's SIGKILL to a call served by its replacement (one daemon).
* cold start: from ``Bridge(preload=...)`` to the first result: what the template costs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import statistics
import time
from typing import Any, Iterator

import zbridge

from .cases import COLD_START, MEMORY, Case, Handle, Sample, Target
from .cases_zbridge import POOL, wait_ready
from .profiles import Profile
from .timing import BenchError, clock

MODEL_TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.py")


def _smaps_kib(pid: int, *fields: str) -> int:
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in fields:
                total += int(rest.split()[0])
    return total


def pss_kib(pid: int) -> int:
    return _smaps_kib(pid, "Pss")


def uss_kib(pid: int) -> int:
    return _smaps_kib(pid, "Private_Clean", "Private_Dirty")


def model_handle(bridge: zbridge.Bridge) -> Handle:
    def pids() -> dict[str, list[int]]:
        status = bridge.status()
        found = {"daemon": [d["pid"] for d in status["daemons"] if d["pid"]],
                 "idle": [d["pid"] for d in status["daemons"] if d["pid"] and d["state"] == "idle"]}
        template = status.get("preload", {}).get("pid")
        found["template"] = [template] if template else []
        return found
    return Handle(lambda payload: functools.partial(bridge.call, "predict", [1]), pids)


@contextlib.contextmanager
def model_pool(workers: int, preload: bool) -> Iterator[Handle]:
    with zbridge.Bridge(tools=MODEL_TOOLS, workers=workers, prewarm=True, preload=preload,
                        start_timeout=300.0, **POOL) as bridge:
        wait_ready(bridge, workers)
        for i in range(4 * workers):  # every daemon reads the weights
            bridge.call("predict", [i])
        yield model_handle(bridge)


def total_pss(handle: Handle, case: Case) -> Sample:
    """PSS of every daemon and the template together."""
    pids = handle.pids()
    found = pids["daemon"] + pids["template"]
    if len(pids["daemon"]) != case.workers:
        raise BenchError(f"{len(pids['daemon'])} daemons, expected {case.workers}")
    return Sample([], rss_kib=float(sum(pss_kib(pid) for pid in found)))


def median_uss(handle: Handle, case: Case) -> Sample:
    return Sample([], rss_kib=float(statistics.median(uss_kib(pid) for pid in handle.pids()["daemon"])))


def template_pss(handle: Handle, case: Case) -> Sample:
    template = handle.pids()["template"]
    if not template:
        raise BenchError("no template (preload refused or not running?)")
    return Sample([], rss_kib=float(pss_kib(template[0])))


def replacement(handle: Handle, case: Case) -> Sample:
    """SIGKILL the daemon; the time until its replacement answered a call. The pool is
    watched through status (the hub's view), so no call meets the dying daemon."""
    call = handle.make_caller(None)
    durations = []
    for _ in range(case.calls):
        call()
        (victim,) = handle.pids()["daemon"]
        start = clock()
        os.kill(victim, signal.SIGKILL)
        while True:
            pids = handle.pids()
            if victim not in pids["daemon"] and pids["idle"]:
                break
            time.sleep(0.001)  # leave the hub thread the GIL
        call()
        durations.append(clock() - start)
    return Sample(durations)


def cold_start(handle: Handle, case: Case, *, preload: bool) -> Sample:
    """From ``Bridge(model tools, preload=...)`` to the first result (closing not timed)."""
    durations = []
    for _ in range(case.calls):
        start = clock()
        bridge = zbridge.Bridge(tools=MODEL_TOOLS, workers=1, preload=preload, start_timeout=300.0, **POOL)
        try:
            bridge.call("predict", [1])
            durations.append(clock() - start)
        finally:
            bridge.close()
    return Sample(durations)


@contextlib.contextmanager
def nothing() -> Iterator[Handle]:
    yield Handle(lambda payload: (lambda: payload))


def targets(profile: Profile) -> list[Target]:
    def memory(name: str, measure: Any, workers: int) -> Case:
        return Case(name, MEMORY, measure, workers=workers)

    def timed(name: str, measure: Any, calls: int) -> Case:
        return Case(name, COLD_START, measure, workers=1, calls=calls)

    needs = ("numpy",)
    starts = profile.cold_starts  # a spawned replacement or a start costs a 1 s start-up
    return [
        Target("zbridge.preload.w4", lambda: model_pool(4, True),
               (memory("zbridge.preload.pss.w4", total_pss, 4),
                memory("zbridge.preload.uss", median_uss, 4),
                memory("zbridge.preload.template.pss", template_pss, 4)), requires=needs),
        Target("zbridge.preload.w4.spawned", lambda: model_pool(4, False),
               (memory("zbridge.preload.pss.w4.spawned", total_pss, 4),), requires=needs),
        Target("zbridge.preload.w1.spawned", lambda: model_pool(1, False),
               (memory("zbridge.preload.pss.w1.spawned", total_pss, 1),
                timed("zbridge.preload.replace.spawned", replacement, starts)), requires=needs),
        Target("zbridge.preload.w1", lambda: model_pool(1, True),
               (timed("zbridge.preload.replace", replacement, 3 * starts),), requires=needs),
        Target("zbridge.preload.cold_start", nothing,
               (timed("zbridge.preload.cold_start", functools.partial(cold_start, preload=True), starts),
                timed("zbridge.preload.cold_start.spawned", functools.partial(cold_start, preload=False),
                      starts)), requires=needs),
    ]
