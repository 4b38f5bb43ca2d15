"""The tools of the ``zbridge.preload.*`` cases: a start-up that stands for a model load.

The start-up hook builds a 200 MiB read-only float64 array (every page written, as loaded
weights are) and sleeps 1 s (a model's load time; ``ZBRIDGE_BENCH_MODEL_MIB`` and
``ZBRIDGE_BENCH_MODEL_SECONDS`` change them). Daemons forked from a template share the
array's pages; spawned ones each hold a copy.
"""

import os
import time

import numpy

import zbridge

MODEL: dict = {}


@zbridge.startup
def load_model() -> None:
    mib = int(os.environ.get("ZBRIDGE_BENCH_MODEL_MIB", "200"))
    weights = numpy.arange(mib * (1 << 20) // 8, dtype=numpy.float64)
    weights.flags.writeable = False
    MODEL["weights"] = weights
    time.sleep(float(os.environ.get("ZBRIDGE_BENCH_MODEL_SECONDS", "1.0")))


@zbridge.tool
def predict(i: int = 0) -> float:
    """Reads the weights (so they are mapped in this daemon)."""
    weights = MODEL["weights"]
    return float(weights[i % len(weights)] + weights[-1 - i % len(weights)])


@zbridge.tool
def pid() -> int:
    return os.getpid()
