"""Quick look at arrays through Bridge: in band (extension type 10) against ``.tolist()``.

    nice -n 10 python -m bench.arrays_quick [--repeats 5]

Round trip of a float64 array of 1 MiB and 64 MiB to the ``noop`` echo tool of bench/tools.py:
the array itself, and the same array as a list (what users do today: ``.tolist()`` before
the call, ``np.array(...)`` after). Medians of ``--repeats`` runs, after one warm-up.
The issue's full rows (buffer frames, the raw floor, ProcessPoolExecutor, hub RSS): bench/arrays.py.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import zbridge

TOOLS = str(Path(__file__).parent / "tools.py")
SIZES = {"1 MiB": 1 << 20, "64 MiB": 64 << 20}


def _time(fn, repeats: int) -> float:
    fn()  # warm-up: daemon started, pages touched
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    with zbridge.Bridge(TOOLS, max_message_size=256 << 20, timeout=300) as bridge:
        bridge.wait_ready(60)
        print(f"{'size':>7} {'in band ms':>11} {'.tolist() ms':>13} {'ratio':>6}")
        for label, nbytes in SIZES.items():
            array = np.random.default_rng(0).random(nbytes // 8)

            def in_band():
                out = bridge.call("noop", [array])
                assert out.shape == array.shape

            def as_list():
                out = np.array(bridge.call("noop", [array.tolist()]))
                assert out.shape == array.shape

            a, b = _time(in_band, repeats), _time(as_list, repeats)
            print(f"{label:>7} {a * 1e3:11.2f} {b * 1e3:13.1f} {b / a:6.1f}x", flush=True)


if __name__ == "__main__":
    main()
