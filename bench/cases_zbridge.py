"""zbridge's own cases: embedded Bridge and AsyncBridge, ``zbridge serve``, the stdio daemon,
the per-call subprocess fallback, cold start and memory."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import subprocess
from dataclasses import replace
from typing import Any, Iterator

import zbridge

from . import procs
from .cases import (COLD_START, MEMORY, Case, Handle, Sample, Target, gather_case, gather_handle, huge_case,
                    latency_case, sweep_cases, throughput_cases)
from .profiles import GATHER, RECYCLE, Profile
from .timing import BenchError, clock, make_payload, measure_latency

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools.py")
# No fallback: a failing pool must fail the case, not silently measure a subprocess per call.
# (Other ZBRIDGE_* variables still apply; meta["zbridge_env"] records them.)
POOL = {"fallback": False, "timeout": 30.0}


def client_handle(client: zbridge.Client, hub_pid: int | None = None) -> Handle:
    def pids() -> dict[str, list[int]]:
        found = {"daemon": [d["pid"] for d in client.status()["daemons"] if d.get("pid")]}
        if hub_pid is not None:
            found["hub"] = [hub_pid]
        return found
    return Handle(lambda payload: functools.partial(client.call, "noop", [payload]), pids)


def wait_ready(client: zbridge.Client, workers: int, proc: subprocess.Popen | None = None) -> None:
    """Until ``workers`` daemons have loaded the tools and are idle."""
    def probe() -> bool | None:
        daemons = client.status(timeout=2.0)["daemons"]
        return True if sum(d["state"] == "idle" for d in daemons) >= workers else None
    procs.wait_until(probe, f"zbridge hub with {workers} daemon(s)", proc=proc)


@contextlib.contextmanager
def embedded(workers: int, **options: Any) -> Iterator[Handle]:
    """A Bridge; ``options``: Bridge settings, e.g. direct=False (every call through the hub thread)."""
    with zbridge.Bridge(tools=TOOLS, workers=workers, prewarm=True, **POOL, **options) as bridge:
        wait_ready(bridge, workers)
        yield client_handle(bridge)


async def open_async_bridge(workers: int) -> zbridge.AsyncBridge:
    """An AsyncBridge made in the loop that will use it, its daemons ready."""
    bridge = zbridge.AsyncBridge(tools=TOOLS, workers=workers, prewarm=True, **POOL)
    try:
        await bridge.wait_ready(count=workers)
    except BaseException:
        await bridge.close()
        raise
    return bridge


@contextlib.contextmanager
def async_embedded(workers: int) -> Iterator[Handle]:
    """An AsyncBridge on an event loop of its own (``asyncio.Runner``); the caller gathers."""
    with asyncio.Runner() as runner:
        bridge = runner.run(open_async_bridge(workers))
        try:
            yield gather_handle(runner, lambda payload: bridge.call("noop", [payload]))
        finally:
            runner.run(bridge.close())


@contextlib.contextmanager
def serving(workers: int, **client_options: Any) -> Iterator[tuple[str, subprocess.Popen, zbridge.Client]]:
    """``zbridge serve`` in its own process, on an ipc endpoint in a private directory, with
    a ready Client: (endpoint, process, client)."""
    with procs.private_dir() as directory:
        endpoint = procs.ipc(directory, "hub.sock")
        argv = procs.python_module("zbridge.cli", "serve", "--tools", TOOLS, "--workers",
                                   str(workers), "--prewarm", "--bind", endpoint)
        with procs.child(argv) as proc, zbridge.Client(endpoint, **POOL, **client_options) as client:
            wait_ready(client, workers, proc)
            yield endpoint, proc, client


@contextlib.contextmanager
def served(workers: int) -> Iterator[Handle]:
    """``zbridge serve``; a local Client borrows its daemons (leases)."""
    with serving(workers) as (_, proc, client):
        yield client_handle(client, hub_pid=proc.pid)


@contextlib.contextmanager
def served_route(workers: int) -> Iterator[Handle]:
    """``zbridge serve`` with a Client that routes every call through the hub (direct=False):
    the served path before leases, measured in the same run."""
    with serving(workers, direct=False) as (_, proc, client):
        yield client_handle(client, hub_pid=proc.pid)


PROCESSES, THREADS = 4, 2  # client processes x caller threads each, against one served hub


def _process_caller(endpoint: str, payload: Any, start_at: float, seconds: float, warmup: int,
                    out: Any) -> None:
    """One client process (spawned): THREADS threads calling from ``start_at`` (wall clock)
    for ``seconds``; their call durations go to ``out``."""
    import threading
    import time
    from .timing import timed_loop
    with zbridge.Client(endpoint, **POOL) as client:
        def caller(into: list[list[int]]) -> None:
            call = functools.partial(client.call, "noop", [payload])
            timed_loop(call, count=warmup)
            time.sleep(max(0.0, start_at - time.time()))
            into.append(timed_loop(call, until_ns=clock() + int(seconds * 1e9)))
        results: list[list[int]] = []
        threads = [threading.Thread(target=caller, args=(results,)) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    out.put([d for r in results for d in r])


def processes_throughput(handle: Handle, case: Case) -> Sample:
    """PROCESSES client processes x THREADS threads calling one served hub, whose endpoint
    the handle's caller answers (``served_for_processes``); calls/s over their window."""
    import multiprocessing
    import time
    endpoint = handle.make_caller(None)()  # this target's caller answers its endpoint
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    start_at = time.time() + 3.0  # every process started and warm by then
    workers = [context.Process(target=_process_caller,
                               args=(endpoint, make_payload(case.payload_bytes), start_at,
                                     case.seconds, case.warmup, out))
               for _ in range(PROCESSES)]
    for worker in workers:
        worker.start()
    try:
        durations = [d for _ in workers for d in out.get(timeout=60 + case.seconds)]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
    return Sample(durations, elapsed_ns=int(case.seconds * 1e9))


@contextlib.contextmanager
def served_for_processes(workers: int) -> Iterator[Handle]:
    """``zbridge serve`` whose clients are other processes (``processes_throughput``)."""
    with serving(workers) as (endpoint, proc, _):
        yield Handle(lambda payload: lambda: endpoint, lambda: {"hub": [proc.pid]})


@contextlib.contextmanager
def json_lines(argv: list[str], what: str) -> Iterator[tuple[subprocess.Popen, Handle]]:
    """A child that answers JSON-RPC lines on stdin/stdout: a line in, a line out."""
    with procs.child(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        ids = itertools.count(1)

        def call(payload: Any) -> Any:
            request = {"jsonrpc": "2.0", "id": next(ids), "method": "noop", "params": [payload]}
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                procs.check_alive(proc, what)
                raise BenchError(f"{what} closed its stdout")
            reply = json.loads(line)
            if "result" not in reply:
                raise BenchError(f"{what} answered {line[:200]!r}")
            return reply["result"]

        yield proc, Handle(lambda payload: functools.partial(call, payload))


@contextlib.contextmanager
def stdio_daemon() -> Iterator[Handle]:
    """One persistent ``zbridge-daemon --stdio``: a JSON-RPC line in, a line out."""
    argv = procs.python_module("zbridge_daemon", "--stdio", "--tools", TOOLS)
    with json_lines(argv, "zbridge-daemon --stdio") as (proc, handle):
        yield Handle(handle.make_caller, lambda: {"daemon": [proc.pid]})


@contextlib.contextmanager
def serve_stdio(workers: int) -> Iterator[Handle]:
    """``zbridge serve --stdio``: the pool behind one pipe, driven a line in, a line out."""
    # no fallback, as POOL: serve has no option for it (a client setting), so its variable
    argv = ["env", "ZBRIDGE_FALLBACK=false", *procs.python_module(
        "zbridge.cli", "serve", "--stdio", "--tools", TOOLS, "--workers", str(workers), "--prewarm")]
    with json_lines(argv, "zbridge serve --stdio") as (proc, handle):
        yield Handle(handle.make_caller, lambda: {"hub": [proc.pid]})


@contextlib.contextmanager
def per_call_subprocess() -> Iterator[Handle]:
    """The fallback path: every call starts ``zbridge-daemon --stdio`` for that one call."""
    with zbridge.Bridge(tools=TOOLS, pool_enabled=False) as bridge:
        yield Handle(lambda payload: functools.partial(bridge.call, "noop", [payload]))


@contextlib.contextmanager
def nothing() -> Iterator[Handle]:
    yield Handle(lambda payload: (lambda: payload))


def cold_start(handle: Handle, case: Case, *, prewarm: bool) -> Sample:
    """From ``Bridge()`` to the first result (closing is not timed)."""
    payload = make_payload(case.payload_bytes)
    durations = []
    for _ in range(case.calls):
        start = clock()
        bridge = zbridge.Bridge(tools=TOOLS, workers=1, prewarm=prewarm, **POOL)
        try:
            bridge.call("noop", [payload])
            durations.append(clock() - start)
        finally:
            bridge.close()
    return Sample(durations)  # no calls/s: each sample is a separate start


def first_call_prewarmed(handle: Handle, case: Case) -> Sample:
    """The first call once prewarmed daemons are ready: what prewarm buys a caller."""
    payload = make_payload(case.payload_bytes)
    durations = []
    for _ in range(case.calls):
        with zbridge.Bridge(tools=TOOLS, workers=1, prewarm=True, **POOL) as bridge:
            wait_ready(bridge, 1)
            start = clock()
            bridge.call("noop", [payload])
            durations.append(clock() - start)
    return Sample(durations)  # no calls/s: each sample is a separate start


def recycling_latency(handle: Handle, case: Case) -> Sample:
    """The latency loop, checked to have replaced a daemon on the way (else it measured no
    recycling): a daemon past ``max_calls`` serves on until its replacement is ready."""
    before = set(handle.pids()["daemon"])
    sample = measure_latency(handle, case)
    if set(handle.pids()["daemon"]) == before:
        raise BenchError(f"no daemon was replaced during {case.warmup + case.calls} calls with "
                         f"max_calls={RECYCLE}")
    return sample


def rss(handle: Handle, case: Case, *, role: str) -> Sample:
    """Median RSS of the target's processes in ``role`` ("hub" or "daemon"), after its calls."""
    values = [procs.rss_kib(pid) for pid in handle.pids().get(role, [])]
    values = sorted(v for v in values if v is not None)
    if not values:
        raise BenchError(f"no RSS for the {role} (is /proc available?)")
    return Sample([], rss_kib=float(values[len(values) // 2]))


def memory_cases(workers: int) -> list[Case]:
    return [Case(f"zbridge.memory.{role}", MEMORY, functools.partial(rss, role=role), workers=workers)
            for role in ("hub", "daemon")]


def cold_start_cases(profile: Profile) -> list[Case]:
    def case(name: str, measure) -> Case:
        return Case(name, COLD_START, measure, workers=1, calls=profile.cold_starts)
    return [case("zbridge.cold_start", functools.partial(cold_start, prewarm=False)),
            case("zbridge.cold_start.prewarm", functools.partial(cold_start, prewarm=True)),
            case("zbridge.first_call.prewarmed", first_call_prewarmed)]


def targets(profile: Profile) -> list[Target]:
    w1, w2 = "zbridge.embedded.w1", "zbridge.embedded.w2"
    return [
        Target(w1, lambda: embedded(1),
               (latency_case(w1, profile, workers=1), *sweep_cases(w1, profile, workers=1),
                huge_case(w1, profile, workers=1), *throughput_cases(w1, profile, workers=1))),
        Target(w2, lambda: embedded(2),
               (latency_case(w2, profile, workers=2), *throughput_cases(w2, profile, workers=2))),
        # the same Bridge with calls through the hub thread (direct=False): the path before
        # issue 14, measured in the same run
        Target(f"{w1}.hub", lambda: embedded(1, direct=False),
               (latency_case(f"{w1}.hub", profile, workers=1),)),
        # the w1 case while daemons are replaced every ~RECYCLE calls (respawns must not stall callers)
        Target(f"{w1}.recycle{RECYCLE}", lambda: embedded(1, max_calls=RECYCLE),
               (replace(latency_case(f"{w1}.recycle{RECYCLE}", profile, workers=1),
                        measure=recycling_latency),)),
        Target("zbridge.async.w2", lambda: async_embedded(2),
               (gather_case(f"zbridge.async.gather{GATHER}", profile, workers=2),)),
        Target("zbridge.serve", lambda: served(1),
               (latency_case("zbridge.serve", profile, workers=1), *memory_cases(1))),
        Target("zbridge.serve.w2", lambda: served(2),
               tuple(throughput_cases("zbridge.serve.w2", profile, workers=2, callers=(8,)))),
        # the served path before leases (every call through the hub), in the same run
        Target("zbridge.serve.hub", lambda: served_route(1),
               (latency_case("zbridge.serve.hub", profile, workers=1),)),
        Target(f"zbridge.serve.w2.p{PROCESSES}x{THREADS}", lambda: served_for_processes(2),
               (replace(throughput_cases(f"zbridge.serve.w2/p{PROCESSES}x{THREADS}", profile, workers=2,
                                         callers=(PROCESSES * THREADS,))[0],
                        name=f"zbridge.serve.w2/p{PROCESSES}x{THREADS}", measure=processes_throughput),)),
        Target("zbridge.stdio", stdio_daemon,
               (latency_case("zbridge.stdio", profile, workers=1),
                *sweep_cases("zbridge.stdio", profile, workers=1))),
        Target("zbridge.serve_stdio", lambda: serve_stdio(1),
               (latency_case("zbridge.serve_stdio", profile, workers=1),)),
        Target("zbridge.subprocess", per_call_subprocess,
               (latency_case("zbridge.subprocess", profile, calls=profile.subprocess_calls,
                             warmup=1),)),
        Target("zbridge.cold_start", nothing, tuple(cold_start_cases(profile))),
    ]
