"""A tools module whose start-up hook takes a second: lets a pool with a short
start_timeout fail while a one-shot subprocess (no such limit) still serves."""

import os
import time

import zbridge


@zbridge.startup
def warm_up() -> None:
    time.sleep(1.0)


@zbridge.tool
def pid() -> int:
    return os.getpid()


@zbridge.tool
def logged(path: str) -> int:
    """Appends "start end" times of this call to ``path``: lets a test count overlaps."""
    start = time.time()
    time.sleep(0.2)
    with open(path, "a") as f:
        f.write(f"{start} {time.time()}\n")
    return os.getpid()
