"""The preload plan and control messages (zbridge/preload.py): pure, no processes."""

from __future__ import annotations

import random

import pytest

from zbridge import preload
from zbridge.config import Settings
from zbridge.preload import How, Plan, TemplateState


def plan() -> Plan:
    return Plan(backoff_base=1.0, backoff_cap=8.0, stable_after=10.0, rng=random.Random(1))


def test_preload_is_off_unless_asked():
    assert Plan.for_settings(Settings()) is None
    made = Plan.for_settings(Settings(preload=True, start_timeout=7.0, backoff_cap=3.0))
    assert made is not None and made.start_timeout == 7.0 and made.backoff_cap == 3.0


def test_the_first_templates_start_up_is_the_pools_daemons_wait_for_it():
    p = plan()
    assert p.spawn(0.0) == (How.DEFER, True)       # starts the template
    assert p.spawn(0.1) == (How.DEFER, False)      # waits for the same one
    p.ready(1.0)
    assert p.spawn(1.1) == (How.FORK, False)


def test_a_first_template_that_fails_is_started_again_by_the_next_spawn():
    p = plan()
    p.spawn(0.0)
    assert p.ended(0.5) is None                    # no eager rebuild: the broker paces spawns
    assert p.state is TemplateState.ABSENT and p.failures == 1
    assert p.spawn(0.6) == (How.DEFER, True)       # not held back: its daemons are the start


def test_a_ready_template_that_dies_is_rebuilt_at_once_and_daemons_spawn_meanwhile():
    p = plan()
    p.spawn(0.0)
    p.ready(1.0)
    assert p.ended(100.0) == 0.0                   # it had lived: rebuild now
    assert p.rebuild_due(100.0) and p.state is TemplateState.STARTING
    assert p.spawn(100.1) == (How.SPAWN, False)    # the pool is short: no waiting
    p.ready(101.0)
    assert p.spawn(101.1) == (How.FORK, False)


def test_templates_that_keep_dying_are_rebuilt_with_backoff():
    p = plan()
    p.spawn(0.0)
    now = 1.0
    p.ready(now)
    delays = []
    for _ in range(5):
        now += 1.0                                 # each dies a second after it was ready
        delay = p.ended(now)
        assert delay is not None
        assert delay == 0.0 or not p.rebuild_due(now + delay / 2)
        now += delay
        assert p.rebuild_due(now)
        p.ready(now)
        delays.append(delay)
    assert delays[0] == 0.0                        # the first death: at once
    assert 0.75 <= delays[1] <= 1.25 and 1.5 <= delays[2] <= 2.5   # then doubling, jittered
    assert delays[4] <= 8.0                        # capped


def test_a_failed_rebuild_waits_for_demand_and_its_backoff():
    p = plan()
    p.spawn(0.0)
    p.ready(1.0)
    p.ended(2.0)
    assert p.rebuild_due(2.0)
    assert p.ended(3.0) is None                    # the rebuild failed to start
    assert p.spawn(3.1) == (How.SPAWN, False)      # within its backoff: no new template
    assert p.spawn(3.0 + 60.0) == (How.SPAWN, True)  # later demand starts one (spawning meanwhile)


def test_a_refused_template_is_never_used_again():
    p = plan()
    p.spawn(0.0)
    p.refuse("1 thread(s) alive")
    assert p.ended(1.0) is None
    assert p.spawn(2.0) == (How.SPAWN, False) and p.refusal == "1 thread(s) alive"


def test_control_messages_round_trip_and_refuse_garbage():
    assert preload.decode(preload.fork("w1-ab", True)) == {"op": "fork", "ident": "w1-ab", "channel": True}
    assert preload.decode(preload.exited("w1-ab", 12, -9))["status"] == -9
    assert preload.decode(preload.ready(3, "x" * 5000))["refusal"] == "x" * preload.MAX_REASON
    with pytest.raises(ValueError):
        preload.decode(b"[1, 2]")
    with pytest.raises(ValueError):
        preload.decode(b"\xff")


def test_the_threads_refusal_names_the_threads():
    reason = preload.threads_reason(["model-prefetch", "ThreadPoolExecutor-0_0"])
    assert "2 thread(s)" in reason and "'model-prefetch'" in reason and "ThreadPoolExecutor-0_0" in reason


def test_a_reload_makes_the_next_template_a_first_one_again():
    p = plan()
    p.spawn(0.0)
    p.refuse("1 thread(s) alive")                  # the old code started a thread
    p.reload()
    assert p.spawn(1.0) == (How.DEFER, True)       # new code: a new template, waited for
    p.ready(2.0)
    assert p.spawn(2.1) == (How.FORK, False) and p.refusal is None
