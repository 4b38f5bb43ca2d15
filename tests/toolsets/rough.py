"""Tools that misbehave in the ways real tools do: hold the GIL, kill their daemon, start slowly."""

import ctypes
import os
import time

import zbridge


@zbridge.tool
def hold_gil(seconds: float) -> int:
    """One C call that keeps the GIL (ctypes.pythonapi is a PyDLL): no other thread runs."""
    ctypes.pythonapi.usleep(ctypes.c_uint(int(seconds * 1_000_000)))
    return os.getpid()


@zbridge.tool
def pid() -> int:
    return os.getpid()


@zbridge.tool
def die() -> None:
    os._exit(11)


@zbridge.tool
def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@zbridge.tool
def count(n: int):
    yield from range(n)


@zbridge.tool
def swallow_everything(seconds: float) -> str:
    """A tool written the common way: `except Exception` around its work."""
    try:
        time.sleep(seconds)
    except Exception:  # noqa: BLE001 - the point: an interrupt must not be swallowed here
        return "swallowed"
    return "finished"


@zbridge.tool
def gc_frozen() -> int:
    """Objects the daemon froze after start-up (gc.freeze), out of every collection's way."""
    import gc
    return gc.get_freeze_count()
