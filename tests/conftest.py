"""Shared fixtures: tool modules, and a guard that no test leaves a daemon running."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# `--hypothesis-profile=fuzz` turns the property tests into a long fuzz run (outside CI).
settings.register_profile("ci", max_examples=300, deadline=None)
settings.register_profile("fuzz", max_examples=50_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")

TOOLSETS = Path(__file__).parent / "toolsets"


# Every process this test session starts inherits this tag, so the leak check sees our
# daemons (even orphaned ones) and never another program's.
SESSION_TAG = f"ZBRIDGE_TEST_SESSION={uuid.uuid4().hex}".encode()
os.environ["ZBRIDGE_TEST_SESSION"] = SESSION_TAG.split(b"=", 1)[1].decode()


def daemon_pids() -> set[int]:
    """Pids of live zbridge daemon processes started by this test session."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            if b"zbridge_daemon" not in cmdline:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if SESSION_TAG in environ and state != "Z":
            pids.add(int(entry))
    return pids


def child_pids() -> set[int]:
    """Live (not zombie) direct children of this test process: serve hubs, pipes, embedders."""
    me = str(os.getpid())
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            pids.add(int(entry))
    return pids


def leftovers(before: set[int]) -> set[int]:
    return (daemon_pids() | child_pids()) - before


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """Every test ends with no daemon and no child process of its own still running."""
    before = daemon_pids() | child_pids()
    yield
    if not wait_until(lambda: not leftovers(before), timeout=10.0):
        leaked = leftovers(before)
        for pid in leaked:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(f"test left processes running: {sorted(leaked)}")


@pytest.fixture
def basic_tools() -> str:
    return str(TOOLSETS / "basic.py")


@pytest.fixture
def broken_tools() -> str:
    return str(TOOLSETS / "broken.py")


@pytest.fixture
def plain_tools() -> str:
    return str(TOOLSETS / "plain.py")


@pytest.fixture
def bridge_factory():
    """Make bridges that are closed at the end of the test, whatever happens."""
    import zbridge
    made = []

    def make(*args, **kwargs):
        bridge = zbridge.Bridge(*args, **kwargs)
        made.append(bridge)
        return bridge

    yield make
    for bridge in made:
        bridge.close(drain_timeout=1.0)
