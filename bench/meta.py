"""What the numbers depend on: versions, CPUs, load, date, the profile."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys

from .procs import CHECKOUT
from .profiles import Profile

PACKAGES = ("zbridge", "pyzmq", "msgpack", "click", "loky", "zerorpc", "gevent", "matplotlib")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return None


def git_commit() -> str | None:
    """The clone's commit; None for an installed package (its version says what it is)."""
    if CHECKOUT is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "-C", CHECKOUT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    return None


def collect(profile: Profile, argv: list[str]) -> dict:
    import zmq
    versions = {name: _version(name) for name in PACKAGES}
    versions["libzmq"] = zmq.zmq_version()
    versions["python"] = platform.python_version()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": argv,
        "profile": dataclasses.asdict(profile),
        "versions": versions,
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "loadavg_start": list(os.getloadavg()),
        "git_commit": git_commit(),
        "zbridge_env": {k: v for k, v in os.environ.items() if k.startswith("ZBRIDGE_")},
        "executable": sys.executable,
    }


def finish(meta: dict, seconds: float) -> dict:
    meta["duration_s"] = round(seconds, 1)
    meta["loadavg_end"] = list(os.getloadavg())
    return meta
