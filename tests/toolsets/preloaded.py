"""Tools for preload tests: a start-up hook that records who ran it, and optionally builds a
large read-only array (ZBRIDGE_TEST_ARRAY_MIB) or starts a thread (ZBRIDGE_TEST_STARTUP_THREAD)."""

import os
import threading
import time

import zbridge

STATE: dict = {}


@zbridge.startup
def build() -> None:
    log = os.environ.get("ZBRIDGE_TEST_STARTUP_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
    mib = int(os.environ.get("ZBRIDGE_TEST_ARRAY_MIB", "0"))
    if mib:
        import numpy
        array = numpy.arange(mib * 1024 * 1024 // 8, dtype=numpy.float64)  # every page written
        array.flags.writeable = False
        STATE["array"] = array
    name = os.environ.get("ZBRIDGE_TEST_STARTUP_THREAD")
    if name:
        threading.Thread(target=time.sleep, args=(3600,), name=name, daemon=True).start()
    STATE["built_by"] = os.getpid()


@zbridge.tool
def pid() -> int:
    return os.getpid()


@zbridge.tool
def origin() -> dict:
    """This daemon, its parent, and who ran the start-up hook it serves with."""
    return {"pid": os.getpid(), "ppid": os.getppid(), "built_by": STATE["built_by"],
            "pgid": os.getpgrp(), "sid": os.getsid(0)}


@zbridge.tool
def head() -> float:
    return float(STATE["array"][:1000].sum())


@zbridge.tool
def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@zbridge.tool
def shout(text: str) -> int:
    print(text, flush=True)
    return os.getpid()
