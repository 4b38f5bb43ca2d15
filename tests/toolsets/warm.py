"""A tool whose module runs a start-up hook, to show warm state survives idle restarts."""

import os
import time

import zbridge

STATE: dict = {}


@zbridge.startup
def load() -> None:
    STATE["loaded_at"] = time.time()
    STATE["pid"] = os.getpid()
    log = os.environ.get("ZBRIDGE_TEST_STARTUP_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")


@zbridge.tool
def warm() -> dict:
    return dict(STATE)
