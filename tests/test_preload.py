"""Preloaded daemons (issue 21, item 1): forked from a template that ran the start-up once.

Real processes throughout: the pages shared are read from /proc/PID/smaps_rollup, who forked
whom from /proc and from the daemons themselves. Forked daemons inherit the template's
environment, so the leak check (the session tag) sees them too.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import zbridge
from helpers import TOOLSETS, ZBRIDGE, daemon_pids, served, status_kib, wait_until

TOOLS = str(TOOLSETS / "preloaded.py")


def pss_kib(pid: int) -> int:
    return status_kib(pid, "Pss", "smaps_rollup")


def rss_kib(pid: int) -> int:
    return status_kib(pid, "VmRSS")


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def template_pid(client: zbridge.Client) -> int | None:
    return client.status()["preload"]["pid"]


def daemons(client: zbridge.Client) -> list[int]:
    """Pids of the idle daemons."""
    return [d["pid"] for d in client.status()["daemons"] if d["state"] == "idle" and d["pid"]]


def startups(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


@pytest.fixture
def startup_log(tmp_path, monkeypatch) -> Path:
    log = tmp_path / "startups"
    monkeypatch.setenv("ZBRIDGE_TEST_STARTUP_LOG", str(log))
    return log


def test_forked_daemons_share_the_templates_pages(monkeypatch):
    """4 daemons holding a 200 MiB read-only array: forked, their PSS together (the
    template's included) is about one copy; spawned, it is four (the same measurement)."""
    monkeypatch.setenv("ZBRIDGE_TEST_ARRAY_MIB", "200")

    def measure(preload: bool) -> tuple[int, int]:
        with zbridge.Bridge(TOOLS, workers=4, prewarm=True, preload=preload, fallback=False) as bridge:
            bridge.wait_ready(60, count=4)
            for _ in range(8):
                assert bridge.call("head") == pytest.approx(sum(range(1000)))
            pids = daemons(bridge)
            assert len(pids) == 4
            processes = pids + ([template_pid(bridge)] if preload else [])
            return sum(pss_kib(pid) for pid in processes), max(rss_kib(pid) for pid in pids)

    forked_total, one_daemon = measure(preload=True)
    spawned_total, _ = measure(preload=False)
    assert one_daemon > 200 * 1024                 # each daemon maps the whole array
    assert forked_total < 1.5 * one_daemon, (forked_total, one_daemon)
    assert spawned_total > 3.5 * one_daemon, (spawned_total, one_daemon)


def test_a_killed_daemon_is_replaced_by_a_fork_that_skips_start_up(startup_log):
    with zbridge.Bridge(TOOLS, workers=2, prewarm=True, preload=True, fallback=False,
                        heartbeat_interval=0.2) as bridge:
        bridge.wait_ready(30, count=2)
        template = template_pid(bridge)
        assert template is not None and parent_of(template) == os.getpid()
        first = bridge.call("origin")
        # forked from the template, after its start-up, and leading a session of its own
        assert first["ppid"] == template and first["built_by"] == template
        assert first["pgid"] == first["sid"] == first["pid"]
        os.kill(first["pid"], signal.SIGKILL)
        assert wait_until(lambda: len(daemons(bridge)) == 2 and first["pid"] not in daemons(bridge))
        replacement = (set(daemons(bridge)) - {first["pid"]}).pop()
        assert parent_of(replacement) == template
        assert {bridge.call("pid") for _ in range(20)} <= set(daemons(bridge))
        # beats and the exit report, as for a spawned daemon
        assert wait_until(lambda: all(d["last_beat_age_s"] is not None for d in bridge.status()["daemons"]))
        exits = [e for e in bridge.status()["restarts"] if e["pid"] == first["pid"]]
        assert exits and exits[0]["reason"] == "killed by SIGKILL"
    assert startups(startup_log) == [template]


def test_recycled_daemons_are_forked_from_the_template_too(startup_log):
    with zbridge.Bridge(TOOLS, workers=1, prewarm=True, preload=True, fallback=False,
                        max_calls=2) as bridge:
        bridge.wait_ready(30)
        template = template_pid(bridge)
        origins = []

        def recycled_twice() -> bool:  # a daemon serves on until its replacement is ready
            origins.append(bridge.call("origin"))
            return len({o["pid"] for o in origins}) >= 3
        assert wait_until(recycled_twice, timeout=20)
        assert all(o["ppid"] == template for o in origins)
        assert wait_until(lambda: bridge.status()["exits"]["recycled"] >= 2)
    assert startups(startup_log) == [template]


def test_a_killed_template_is_rebuilt_and_later_daemons_are_forked_again(startup_log):
    with zbridge.Bridge(TOOLS, workers=2, prewarm=True, preload=True, fallback=False) as bridge:
        bridge.wait_ready(30, count=2)
        first = template_pid(bridge)
        old = daemons(bridge)
        os.kill(first, signal.SIGKILL)

        def rebuilt() -> bool:
            preload = bridge.status()["preload"]
            return preload["state"] == "ready" and preload["pid"] not in (None, first)
        assert wait_until(rebuilt, timeout=20)
        second = template_pid(bridge)
        assert second is not None
        # the daemons forked from the dead template serve on
        assert {bridge.call("pid") for _ in range(10)} <= set(old)
        os.kill(old[0], signal.SIGKILL)
        assert wait_until(lambda: len(daemons(bridge)) == 2 and old[0] not in daemons(bridge))
        replacement = (set(daemons(bridge)) - set(old)).pop()
        assert parent_of(replacement) == second
        # its exit status went to init with it: said so, not made up
        exits = [e for e in bridge.status()["restarts"] if e["pid"] == old[0]]
        assert exits and "exit status unknown" in exits[0]["reason"]
    assert startups(startup_log) == [first, second]


def test_a_reload_retires_the_template_and_new_daemons_come_from_a_new_one(startup_log):
    """What ``zbridge reload`` asks of the supervisor (``reload_template``) before it starts
    new daemons: none of them may come from the old template, which leaves with its daemons."""
    with zbridge.Bridge(TOOLS, workers=2, prewarm=True, preload=True, fallback=False) as bridge:
        bridge.wait_ready(30, count=2)
        old_template, old = template_pid(bridge), daemons(bridge)
        bridge._hub.supervisor.reload_template()
        os.kill(old[0], signal.SIGKILL)            # its replacement waits for a new template
        assert wait_until(lambda: len(daemons(bridge)) == 2 and old[0] not in daemons(bridge), timeout=20)
        new_template = template_pid(bridge)
        assert new_template not in (None, old_template)
        replacement = (set(daemons(bridge)) - set(old)).pop()
        assert parent_of(replacement) == new_template
        assert old_template in daemon_pids()       # it still reports its last daemon's exit
        os.kill(old[1], signal.SIGKILL)
        assert wait_until(lambda: old_template not in daemon_pids())  # then it leaves
        assert wait_until(lambda: len(daemons(bridge)) == 2 and old[1] not in daemons(bridge))
        assert all(parent_of(pid) == new_template for pid in daemons(bridge))
        exits = [e for e in bridge.status()["restarts"] if e["pid"] == old[1]]
        assert exits and exits[0]["reason"] == "killed by SIGKILL"
    assert startups(startup_log) == [old_template, new_template]


def test_a_template_with_threads_refuses_to_fork_says_why_and_the_pool_still_serves(
        monkeypatch, caplog, startup_log):
    monkeypatch.setenv("ZBRIDGE_TEST_STARTUP_THREAD", "model-prefetch")
    caplog.set_level(logging.INFO, logger="zbridge")
    with zbridge.Bridge(TOOLS, workers=2, prewarm=True, preload=True, fallback=False) as bridge:
        bridge.wait_ready(30, count=2)
        status = bridge.status()["preload"]
        assert status["state"] == "refused" and "'model-prefetch'" in (status["refusal"] or "")
        before = daemons(bridge)
        assert all(parent_of(pid) == os.getpid() for pid in before)  # spawned the ordinary way
        os.kill(before[0], signal.SIGKILL)
        assert wait_until(lambda: len(daemons(bridge)) == 2 and before[0] not in daemons(bridge))
        assert all(parent_of(pid) == os.getpid() for pid in daemons(bridge))
        assert len({bridge.call("pid") for _ in range(10)}) >= 1
    refusals = [r for r in caplog.records if getattr(r, "event", None) == "preload_refused"]
    assert len(refusals) == 1, "the refusal is logged once"
    text = refusals[0].getMessage()
    assert "1 thread(s) alive after start-up ('model-prefetch')" in text and "ordinary way" in text
    assert len(startups(startup_log)) == 1 + 3     # the template, then each daemon its own


def test_tools_that_fail_to_load_are_reported_as_without_preload(broken_tools):
    def failure(preload: bool) -> zbridge.PoolUnavailable:
        with zbridge.Bridge(broken_tools, workers=2, preload=preload, fallback=False,
                            backoff_base=0.01) as bridge:
            with pytest.raises(zbridge.PoolUnavailable) as info:
                bridge.call("pid", timeout=30)
        return info.value

    forked, spawned = failure(True), failure(False)
    assert forked.data["cause"] == spawned.data["cause"] == "load_failed"
    assert str(forked) == str(spawned)
    assert "No module named 'zbridge_missing_dependency_xyz'" in str(forked)


def test_a_template_slower_than_start_timeout_is_killed(caplog):
    """The first template's start-up is its daemons': when the broker gives up on them
    (start_timeout), the template goes too, and the pool fails as without preload."""
    caplog.set_level(logging.INFO, logger="zbridge")
    with zbridge.Bridge(str(TOOLSETS / "slow_start.py"), preload=True, fallback=False,
                        start_timeout=0.3, start_retries=2, backoff_base=0.01) as bridge:
        with pytest.raises(zbridge.PoolUnavailable) as info:
            bridge.call("pid", timeout=30)
    assert info.value.data["cause"] == "start_failed"
    assert "no daemon could start after 2 attempts" in str(info.value)
    assert "stopped before its template was ready (killed by SIGTERM)" in str(info.value)
    kills = [r for r in caplog.records if getattr(r, "event", None) == "template_kill"]
    assert len(kills) == 2 and "no daemon waits for it" in kills[0].getMessage()


def test_a_forked_daemon_is_killed_past_its_deadline_and_its_output_is_tagged(caplog):
    caplog.set_level(logging.INFO, logger="zbridge")
    with zbridge.Bridge(TOOLS, preload=True, fallback=False, kill_grace=0.2) as bridge:
        bridge.wait_ready(30)
        template = template_pid(bridge)
        talker = bridge.call("shout", ["hello from a fork"])
        with pytest.raises(zbridge.CallTimeout):
            bridge.call("nap", [30], timeout=0.3)
        assert wait_until(lambda: bridge.status()["exits"].get("killed") == 1)
        assert bridge.call("origin")["ppid"] == template
    lines = [r for r in caplog.records if r.name == "zbridge.daemon" and "hello from a fork" in r.getMessage()]
    assert lines and lines[0].pid == talker and lines[0].daemon == "w1"


def test_served_hub_with_preload_forks_and_leaves_nothing_when_killed(tmp_path):
    with served(tmp_path, "--tools", TOOLS, "--workers", "2", "--prewarm", "--preload") as (endpoint, proc):
        with zbridge.Client(endpoint, fallback=False) as client:
            client.wait_ready(30, count=2)
            template = template_pid(client)
            assert template is not None and parent_of(template) == proc.pid
            assert all(parent_of(pid) == template for pid in daemons(client))
            ours = set(daemons(client)) | {template}
        shown = subprocess.run([*ZBRIDGE, "status", "--endpoint", endpoint], capture_output=True,
                               text=True, timeout=30)
        assert f"preload: template ready, pid {template}" in shown.stdout, shown.stderr
        proc.kill()                                # lifelines: no hub, no template, no daemon
        proc.wait()
        assert wait_until(lambda: not (ours & daemon_pids()), timeout=10)


EMBEDDER = textwrap.dedent("""
    import json, sys, zbridge
    bridge = zbridge.Bridge(sys.argv[1], workers=2, prewarm=True, preload=True)
    status = bridge.wait_ready(30, count=2)
    pids = [d["pid"] for d in status["daemons"]] + [status["preload"]["pid"]]
    print(json.dumps(pids), flush=True)
    sys.stdin.read()
""")


def test_sigkilled_embedder_leaves_no_template_and_no_daemon():
    proc = subprocess.Popen([sys.executable, "-c", EMBEDDER, TOOLS], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        pids = set(json.loads(proc.stdout.readline()))
    finally:
        proc.kill()
        proc.wait()
    assert len(pids) == 3 and None not in pids
    assert wait_until(lambda: not (pids & daemon_pids()), timeout=10)
