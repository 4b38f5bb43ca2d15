"""Health and lifecycle with real daemons: heartbeats, hung calls, idle policy, recycling,
start-up backoff, drain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import zmq

import zbridge
from helpers import daemon_pids, wait_until


def busy(bridge) -> bool:
    return any(d["state"] == "busy" for d in bridge.status()["daemons"])


def idle_pids(bridge) -> set[int]:
    return {d["pid"] for d in bridge.status()["daemons"] if d["state"] == "idle"}


def test_sigstopped_daemon_is_detected_by_heartbeat_and_replaced(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, heartbeat_interval=0.2, heartbeat_misses=3)
    frozen = bridge.call("pid")
    future = bridge.submit("span", {"seconds": 30})
    assert wait_until(lambda: busy(bridge))
    stopped_at = time.monotonic()
    os.kill(frozen, signal.SIGSTOP)
    try:
        with pytest.raises(zbridge.WorkerLost, match="no heartbeat"):
            future.result(timeout=10)
        print(f"SIGSTOP detected after {time.monotonic() - stopped_at:.3f}s (limit 0.6s)")
        assert wait_until(lambda: frozen not in daemon_pids())
    finally:
        try:
            os.kill(frozen, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert bridge.call("pid") != frozen
    assert wait_until(lambda: any(r["pid"] == frozen and "no heartbeat" in r["reason"]
                                  for r in bridge.status()["restarts"]))


def test_long_call_keeps_beating(bridge_factory, basic_tools):
    # a call 5x longer than the heartbeat limit is not declared dead (zerorpc's failure)
    bridge = bridge_factory(basic_tools, heartbeat_interval=0.1, heartbeat_misses=2)
    assert bridge.call("span", {"seconds": 1.0})["end"] > 0
    assert bridge.call("spin", {"seconds": 1.0}) is None


@pytest.mark.parametrize("tool", ["span", "spin"])
def test_hung_call_times_out_and_the_daemon_is_replaced(bridge_factory, basic_tools, tool):
    bridge = bridge_factory(basic_tools, kill_grace=0.3)
    hung = bridge.call("pid")
    start = time.monotonic()
    with pytest.raises(zbridge.CallTimeout):
        bridge.call(tool, {"seconds": 3600}, timeout=1.0)
    print(f"{tool}: CallTimeout after {time.monotonic() - start:.3f}s")
    assert wait_until(lambda: hung not in daemon_pids())
    assert bridge.call("add", [1, 1]) == 2
    assert bridge.call("pid") != hung


def test_idle_restart_replaces_the_daemon_warm(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, idle_timeout=0.5, idle_action="restart")
    first = bridge.call("pid")
    assert wait_until(lambda: idle_pids(bridge) and first not in idle_pids(bridge), timeout=15)
    assert wait_until(lambda: first not in daemon_pids())
    replacement = idle_pids(bridge)
    assert bridge.call("pid") in replacement  # already running: the call did not wait for a start
    assert wait_until(lambda: any("idle" in r["reason"] for r in bridge.status()["restarts"]))


def test_idle_stop_goes_down_to_min_workers_and_starts_again_lazily(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, workers=2, prewarm=True, idle_timeout=0.5,
                            idle_action="stop", min_workers=1)
    assert wait_until(lambda: len(bridge.status()["daemons"]) == 1, timeout=15)
    time.sleep(1.0)
    assert len(bridge.status()["daemons"]) == 1
    futures = [bridge.submit("span", {"seconds": 0.3}) for _ in range(2)]
    assert all(f.result(timeout=30)["end"] for f in futures)


def test_idle_stop_to_zero_then_lazy_start(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, idle_timeout=0.3, idle_action="stop")
    first = bridge.call("pid")
    assert wait_until(lambda: not bridge.status()["daemons"], timeout=15)
    assert first not in daemon_pids()
    assert bridge.call("pid") != first


def test_idle_none_keeps_the_daemon(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, idle_timeout=0.2, idle_action="none")
    first = bridge.call("pid")
    time.sleep(1.0)
    assert bridge.call("pid") == first


def test_max_calls_recycles_once_the_replacement_is_ready(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, max_calls=10)
    first = {bridge.call("pid") for _ in range(11)}  # the limit is 10 plus 0-1 jitter
    assert len(first) == 1
    (old,) = first
    assert wait_until(lambda: old not in daemon_pids(), timeout=15)
    assert bridge.call("pid") != old
    assert wait_until(lambda: any(r["pid"] == old and "max_calls=10" in r["reason"]
                                  for r in bridge.status()["restarts"]))


def test_call_limits_are_jittered():
    import random
    from zbridge.config import Settings
    from zbridge.health import call_limit
    rng = random.Random(3)
    limits = {call_limit(Settings(max_calls=100), rng) for _ in range(50)}
    assert len(limits) > 3 and min(limits) >= 100 and max(limits) <= 110
    assert call_limit(Settings(), rng) is None


def test_max_calls_with_two_daemons_never_drops_capacity(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, workers=2, prewarm=True, max_calls=5)
    for _ in range(60):
        bridge.call("echo", [1])
        live = [d for d in bridge.status()["daemons"] if d["state"] in ("idle", "busy")]
        assert live, "no daemon could take a call"


def test_max_rss_recycles_after_the_call(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, max_rss_mb=200)
    fat = bridge.call("grow", [250])
    assert wait_until(lambda: fat not in daemon_pids(), timeout=15)
    assert bridge.call("pid") != fat
    assert wait_until(lambda: any("max_rss_mb" in r["reason"] for r in bridge.status()["restarts"]))


def test_start_failures_follow_the_backoff_then_pool_unavailable(bridge_factory, broken_tools,
                                                                  tmp_path, monkeypatch):
    spawn_log = tmp_path / "spawns"
    monkeypatch.setenv("ZBRIDGE_TEST_SPAWN_LOG", str(spawn_log))
    bridge = bridge_factory(broken_tools, fallback=False, start_retries=4, backoff_base=0.2,
                            backoff_cap=5.0)
    with pytest.raises(zbridge.PoolUnavailable, match="after 4 attempts"):
        bridge.call("x", timeout=30)
    assert len(spawn_log.read_text().splitlines()) == 4
    status = bridge.status()
    assert status["counters"]["start_failures"] == 4
    exits = status["restarts"]
    # from each failed start's exit to the next spawn: 0.2, 0.4, 0.8 s, each +-25% jitter
    delays = [prev["ago_s"] - nxt["spawned_ago_s"] for prev, nxt in zip(exits, exits[1:])]
    for delay, expected in zip(delays, [0.2, 0.4, 0.8]):
        assert 0.75 * expected - 0.01 <= delay <= 1.25 * expected + 0.3, delays  # never early


def test_drain_finishes_running_calls_refuses_new_ones_leaves_nothing(basic_tools):
    bridge = zbridge.Bridge(basic_tools, workers=2, prewarm=True)
    running = [bridge.submit("span", {"seconds": 0.8}) for _ in range(2)]
    assert wait_until(lambda: sum(d["state"] == "busy" for d in bridge.status()["daemons"]) == 2)
    pids = {d["pid"] for d in bridge.status()["daemons"]}
    private_dir = bridge.private_dir
    import threading
    closer = threading.Thread(target=bridge.close)
    closer.start()
    assert all(f.result(timeout=10)["end"] for f in running)
    closer.join(timeout=20)
    with pytest.raises(zbridge.PoolUnavailable):
        bridge.call("pid")
    assert not (pids & daemon_pids()) and not os.path.exists(private_dir)


def test_drain_timeout_answers_calls_that_would_not_finish(basic_tools):
    bridge = zbridge.Bridge(basic_tools, prewarm=True)
    stuck = bridge.submit("span", {"seconds": 60})
    assert wait_until(lambda: busy(bridge))
    bridge.close(drain_timeout=0.3)
    with pytest.raises(zbridge.WorkerLost, match="stopped"):
        stuck.result(timeout=10)


def test_status_reports_what_each_daemon_does(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, heartbeat_interval=0.1)
    bridge.call("pid")
    future = bridge.submit("span", {"seconds": 0.6})
    assert wait_until(lambda: busy(bridge))
    time.sleep(0.3)
    (d,) = bridge.status()["daemons"]
    assert d["state"] == "busy" and d["current_call"] is not None and d["call_age_s"] > 0.1
    assert d["rss"] > 1024 * 1024 and d["last_beat_age_s"] < 1.0 and d["calls"] >= 1
    future.result(timeout=10)


def test_remote_daemon_exits_when_the_hub_stops_beating(basic_tools, tmp_path):
    # a daemon not spawned by the hub (no lifeline) notices that its hub is gone, and
    # with --exit-on-hub-loss leaves (by default it reconnects: test_reconnect.py)
    ctx = zmq.Context()
    backend, beats = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    backend.bind(f"ipc://{tmp_path}/b.sock")
    beats.bind(f"ipc://{tmp_path}/h.sock")
    proc = subprocess.Popen([sys.executable, "-m", "zbridge_daemon", "--connect", f"ipc://{tmp_path}/b.sock",
                             "--heartbeat", f"ipc://{tmp_path}/h.sock", "--heartbeat-interval", "0.1",
                             "--exit-on-hub-loss", "--tools", basic_tools], stderr=subprocess.PIPE)
    try:
        assert backend.poll(20000), "daemon never said ready"
        backend.recv_multipart()
        assert proc.wait(timeout=10) == 0  # nobody beat back: it left on its own
        assert b"no heartbeat from the hub" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        ctx.destroy(0)


def test_idle_restart_runs_the_startup_hook_again(bridge_factory, tmp_path, monkeypatch):
    from helpers import TOOLSETS
    log = tmp_path / "startups"
    monkeypatch.setenv("ZBRIDGE_TEST_STARTUP_LOG", str(log))
    bridge = bridge_factory(str(TOOLSETS / "warm.py"), idle_timeout=0.4, idle_action="restart")
    first = bridge.call("warm")
    assert first["pid"] in daemon_pids() and "loaded_at" in first
    assert wait_until(lambda: log.exists() and len(log.read_text().split()) >= 2, timeout=15)
    assert wait_until(lambda: first["pid"] not in daemon_pids())
    second = bridge.call("warm")  # served by the replacement, hook already run: still warm
    assert second["pid"] != first["pid"] and second["loaded_at"] > first["loaded_at"]
    assert str(second["pid"]) in log.read_text().split()
