"""A tools module that cannot be imported; records each attempt so tests can count spawns."""

import os

log = os.environ.get("ZBRIDGE_TEST_SPAWN_LOG")
if log:
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")

import zbridge_missing_dependency_xyz  # noqa: E402,F401
