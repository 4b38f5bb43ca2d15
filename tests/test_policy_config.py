"""Retry/fallback rules, backoff and settings: pure functions."""

from __future__ import annotations

import random

import pytest

from zbridge import errors
from zbridge.backoff import restart_delay
from zbridge.config import describe, load_settings
from zbridge.policy import Step, after_error


def decide(error, attempt=0, idempotent=False, retries=2, can_fallback=True):
    return after_error(error, attempt=attempt, idempotent=idempotent, retries=retries,
                       can_fallback=can_fallback)


def test_policy():
    assert decide(errors.PoolUnavailable("x")) is Step.FALLBACK
    assert decide(errors.PoolUnavailable("x"), can_fallback=False) is Step.RAISE
    assert decide(errors.PoolUnavailable("x", {"closing": True})) is Step.RAISE
    assert decide(errors.WorkerLost("x")) is Step.RAISE  # may have run: never again
    assert decide(errors.WorkerLost("x"), idempotent=True) is Step.RETRY
    assert decide(errors.WorkerLost("x"), idempotent=True, attempt=2) is Step.RAISE
    assert decide(errors.CallTimeout("x"), idempotent=True) is Step.RAISE
    assert decide(errors.ToolError("x")) is Step.RAISE


def test_backoff_grows_caps_and_jitters():
    rng = random.Random(1)
    delays = [restart_delay(n, 0.1, 2.0, rng=rng) for n in range(0, 10)]
    assert delays[0] == 0
    assert all(0.075 * 2 ** (n - 1) <= d <= min(2.0, 0.125 * 2 ** (n - 1)) for n, d in enumerate(delays) if 0 < n < 4)
    assert max(delays) <= 2.0 and delays[-1] >= 1.5
    assert len({restart_delay(3, 0.1, 2.0) for _ in range(20)}) > 1


def test_settings_precedence():
    env = {"ZBRIDGE_WORKERS": "3", "ZBRIDGE_POOL_ENABLED": "false", "ZBRIDGE_TIMEOUT": "2.5"}
    s = load_settings(env)
    assert (s.workers, s.pool_enabled, s.timeout) == (3, False, 2.5)
    assert load_settings(env, workers=5).workers == 5
    assert load_settings({}).workers == 1


def test_bad_settings_are_clear():
    with pytest.raises(ValueError, match="ZBRIDGE_WORKERS"):
        load_settings({"ZBRIDGE_WORKERS": "many"})
    with pytest.raises(ValueError, match="boolean"):
        load_settings({"ZBRIDGE_PREWARM": "maybe"})
    with pytest.raises(TypeError, match="unknown setting"):
        load_settings({}, wrkers=2)


def test_every_setting_is_described():
    for name, env, _default, help_text in describe():
        assert env == "ZBRIDGE_" + name.upper() and help_text


def test_readme_settings_table_matches_the_code():
    from pathlib import Path
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name, env, default, help_text in describe():
        assert f"| `{name}` | `{env}` | `{default!r}` | {help_text} |" in readme, name
