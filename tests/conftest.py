"""Shared fixtures: tool modules, and a guard that no test leaves a daemon running."""

from __future__ import annotations

import os
import signal

import pytest
from hypothesis import HealthCheck, settings

from helpers import TOOLSETS, child_pids, daemon_pids, leftovers, wait_until

# `--hypothesis-profile=fuzz` turns the property tests into a long fuzz run (outside CI).
settings.register_profile("ci", max_examples=300, deadline=None)
settings.register_profile("fuzz", max_examples=50_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")

# Tests that start no process and open no socket: `python -m pytest -m pure` runs in seconds.
PURE = {"test_broker.py", "test_protocol.py", "test_jsonrpc.py", "test_policy_config.py",
        "test_plans.py", "test_stats.py", "test_api.py", "test_handle_params.py", "test_httperrors.py",
        "test_codec.py", "test_rollout.py", "test_preload_plan.py"}


# Long end-to-end groups, run by .ci/run after the main suite (`python -m pytest -m slow`).
SLOW = {"test_chaos.py", "test_conformance.py", "test_webbench.py", "test_hot_path.py", "test_latency.py"}


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.pure if item.path.name in PURE else pytest.mark.process)
        if item.path.name in SLOW:
            item.add_marker(pytest.mark.slow)


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
