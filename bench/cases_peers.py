"""Peers: other ways to call a Python function in another, already running process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import multiprocessing
import signal
from typing import Any, Iterator

from . import procs
from .cases import Handle, Target, gather_case, gather_handle, latency_case, sweep_cases, throughput_cases
from .profiles import GATHER, Profile
from .tools import noop

# spawn: a clean child even though this process holds threads and zmq contexts
START_METHOD = "spawn"


def ignore_sigint() -> None:
    """In pool workers: Ctrl-C is for the benchmark, which then shuts the pool down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def future_result(submit, payload: Any) -> Any:
    return submit(noop, payload).result()


def executor_handle(executor: concurrent.futures.Executor) -> Handle:
    return Handle(lambda payload: functools.partial(future_result, executor.submit, payload))


@contextlib.contextmanager
def process_pool(workers: int = 1) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    context = multiprocessing.get_context(START_METHOD)
    executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                        initializer=ignore_sigint)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def process_pool_executor(workers: int = 1) -> Iterator[Handle]:
    with process_pool(workers) as executor:
        yield executor_handle(executor)


@contextlib.contextmanager
def process_pool_gather(workers: int) -> Iterator[Handle]:
    """The pool's workers behind an event loop: ``loop.run_in_executor(pool, noop, payload)``."""
    with asyncio.Runner() as runner, process_pool(workers) as executor:
        loop = runner.get_loop()
        yield gather_handle(runner, lambda payload: loop.run_in_executor(executor, noop, payload))


@contextlib.contextmanager
def multiprocessing_pool() -> Iterator[Handle]:
    pool = multiprocessing.get_context(START_METHOD).Pool(1, initializer=ignore_sigint)
    try:
        yield Handle(lambda payload: functools.partial(pool.apply, noop, (payload,)))
    finally:
        pool.terminate()
        pool.join()


@contextlib.contextmanager
def loky_executor() -> Iterator[Handle]:
    import loky
    executor = loky.get_reusable_executor(max_workers=1, initializer=ignore_sigint)
    try:
        yield executor_handle(executor)
    finally:
        executor.shutdown(wait=True, kill_workers=True)


@contextlib.contextmanager
def zerorpc_server() -> Iterator[Handle]:
    """A zerorpc server in its own process on a private ipc endpoint; the client here."""
    import zerorpc
    with procs.private_dir() as directory:
        endpoint = procs.ipc(directory, "zerorpc.sock")
        with procs.child(procs.python_module(procs.SERVERS, "zerorpc", endpoint)) as proc:
            client = zerorpc.Client(timeout=30)
            try:
                client.connect(endpoint)
                procs.wait_until(lambda: client("noop", None, timeout=1) or True,
                                 "zerorpc server", proc=proc)
                yield Handle(lambda payload: functools.partial(client, "noop", payload),
                             lambda: {"daemon": [proc.pid]})
            finally:
                client.close()


def targets(profile: Profile) -> list[Target]:
    ppe = "peer.process_pool_executor"
    return [
        Target(ppe, process_pool_executor,
               (latency_case(ppe, profile, workers=1), *sweep_cases(ppe, profile, workers=1))),
        # beside zbridge.embedded.w2/c8 and floor.zmq_proxy.w2/c8: 2 workers, 8 caller threads
        Target(f"{ppe}.w2", lambda: process_pool_executor(2),
               tuple(throughput_cases(f"{ppe}.w2", profile, workers=2, callers=(8,)))),
        Target(f"{ppe}.gather", lambda: process_pool_gather(2),
               (gather_case(f"{ppe}.gather{GATHER}", profile, workers=2),)),
        Target("peer.multiprocessing_pool", multiprocessing_pool,
               (latency_case("peer.multiprocessing_pool", profile, workers=1),)),
        Target("peer.loky", loky_executor, (latency_case("peer.loky", profile, workers=1),),
               requires=("loky",)),
        Target("peer.zerorpc", zerorpc_server, (latency_case("peer.zerorpc", profile, workers=1),),
               requires=("zerorpc",)),
    ]
