"""Arrays through zbridge (issue 15): a float64 array of 1 MiB and 64 MiB, round trip.

    nice -n 10 python -m zbridge_bench.arrays [--repeats 9] [--json out.json]   (bench.arrays in a clone)

Rows, each the median of ``--repeats`` timed round trips after warm-up calls (10 at 1 MiB,
3 at 64 MiB; ``.tolist()``: a third of the repeats, after one), all measured in
this one run (compare the ratios, not the absolute numbers, on a noisy machine):

* ``zbridge.array``: ``Bridge(bench/tools.py).call("noop", [array])`` (embedded hub; the
  array travels as a buffer frame, copy=False, rebuilt with numpy.frombuffer).
* ``floor.zmq_copy_false``: the same bytes through a raw pyzmq DEALER to a ROUTER echo in
  another process over ipc, sent and received with copy=False and rebuilt with frombuffer.
* ``peer.process_pool_executor``: ``ProcessPoolExecutor(1).submit(noop, array).result()``
  (pickle protocol 5).
* ``zbridge.tolist``: ``np.array(bridge.call("noop", [array.tolist()]))``, as users did
  before arrays could be sent.
* ``hub.peak_rss``: growth of a ``zbridge serve`` hub's peak RSS (VmHWM, reset first) over
  its idle RSS during one 64 MiB array call, in MiB.

Then the issue's targets (``goals.ARRAY_GOALS``), reported, not asserted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zmq

import zbridge

from . import goals, procs
from .cases_peers import START_METHOD, ignore_sigint
from .tools import noop

TOOLS = str(Path(__file__).parent / "tools.py")
SIZES = {"1MiB": 1 << 20, "64MiB": 64 << 20}
LIMIT = 256 << 20  # max_message_size for these runs: the .tolist() body of 64 MiB is larger


WARMUP = {"1MiB": 10, "64MiB": 3}  # the first calls of a size are slower (allocators, pages)


def _time(fn: Callable[[], None], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def _row(name: str, seconds: float) -> dict[str, Any]:
    print(f"{name:<38} {seconds * 1e3:10.2f} ms", flush=True)
    return {"name": name, "ms": seconds * 1e3}


def zbridge_rows(arrays: dict[str, np.ndarray], repeats: int) -> list[dict[str, Any]]:
    rows = []
    with zbridge.Bridge(TOOLS, max_message_size=LIMIT, timeout=600) as bridge:
        bridge.wait_ready(60)
        for label, array in arrays.items():
            def call() -> None:
                assert bridge.call("noop", [array]).shape == array.shape
            rows.append(_row(f"zbridge.array.{label}", _time(call, repeats, WARMUP[label])))
        for label, array in arrays.items():
            def as_list() -> None:
                assert np.array(bridge.call("noop", [array.tolist()])).shape == array.shape
            rows.append(_row(f"zbridge.tolist.{label}", _time(as_list, max(1, repeats // 3), warmup=1)))
    return rows


def floor_rows(arrays: dict[str, np.ndarray], repeats: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        endpoint = f"ipc://{tmp}/echo.sock"
        with procs.child(procs.python_module(procs.SERVERS, "zmq_echo", endpoint)):
            context = zmq.Context()
            sock = context.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(endpoint)
            try:
                for label, array in arrays.items():
                    def echo() -> None:
                        sock.send(array, copy=False)
                        frame = sock.recv(copy=False)
                        assert np.frombuffer(frame.buffer, dtype=array.dtype).shape == array.shape
                    rows.append(_row(f"floor.zmq_copy_false.{label}", _time(echo, repeats, WARMUP[label])))
            finally:
                sock.close(0)
                context.term()
    return rows


def pool_rows(arrays: dict[str, np.ndarray], repeats: int) -> list[dict[str, Any]]:
    rows = []
    context = multiprocessing.get_context(START_METHOD)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context,
                                                initializer=ignore_sigint) as executor:
        for label, array in arrays.items():
            def submit() -> None:
                assert executor.submit(noop, array).result().shape == array.shape
            rows.append(_row(f"peer.process_pool_executor.{label}", _time(submit, repeats, WARMUP[label])))
    return rows


def _kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def hub_rss_row(array: np.ndarray) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        endpoint = f"ipc://{tmp}/hub.sock"
        argv = procs.python_module("zbridge", "serve", "--bind", endpoint, "--tools", TOOLS,
                                   "--max-message-size", str(LIMIT), "--workers", "1")
        with procs.child(argv) as hub, zbridge.Client(endpoint, fallback=False, timeout=600) as client:
            client.wait_ready(60)
            client.call("noop", [np.zeros(1 << 17)])  # daemon warm, numpy loaded
            idle = _kib(hub.pid, "VmRSS")
            with open(f"/proc/{hub.pid}/clear_refs", "w") as f:
                f.write("5")  # VmHWM := current RSS
            assert client.call("noop", [array]).shape == array.shape
            grew = (_kib(hub.pid, "VmHWM") - idle) / 1024
    print(f"{'hub.peak_rss_growth.64MiB':<38} {grew:10.1f} MiB", flush=True)
    return {"name": "hub.peak_rss_growth.64MiB", "mib": grew, "array_mib": array.nbytes / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    arrays = {label: rng.random(n // 8) for label, n in SIZES.items()}
    rows = (zbridge_rows(arrays, args.repeats) + floor_rows(arrays, args.repeats)
            + pool_rows(arrays, args.repeats) + [hub_rss_row(arrays["64MiB"])])
    results = goals.evaluate(rows, goals.ARRAY_GOALS)
    print()
    for g in results:
        ratio = "n/a" if g["ratio"] is None else f"{g['ratio']:.2f}"
        print(f"[{'met' if g['met'] else 'MISSED'}] {g['goal']}: {ratio} "
              f"({g['comparison']} {g['bound']:g})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cases": rows, "targets": results}, f, indent=2)


if __name__ == "__main__":
    main()
