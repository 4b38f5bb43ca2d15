"""What a newcomer hit in their first hour, each as a test (issue 10's list)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import zbridge
from helpers import TOOLSETS, default_sigint, wait_until

BASIC = str(TOOLSETS / "basic.py")

CTRL_C = textwrap.dedent("""
    import json, sys, time, zbridge
    bridge = zbridge.Bridge(sys.argv[1])
    pid = bridge.call("pid")
    print("ready", flush=True)
    try:
        bridge.call("interruptible", [30, sys.argv[2]])
    except KeyboardInterrupt:
        started = time.monotonic()
        after = bridge.call("pid", timeout=10)   # not stuck behind the interrupted call
        print(json.dumps({"same_daemon": after == pid, "waited": time.monotonic() - started}))
    bridge.close()
""")


def test_ctrl_c_during_a_sync_call_cancels_it_in_the_daemon(tmp_path):
    marker = tmp_path / "cancelled"
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C, BASIC, str(marker)],
                            stdout=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the call is running in the daemon
        proc.send_signal(signal.SIGINT)
        out = json.loads(proc.stdout.readline())
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out["same_daemon"] and out["waited"] < 9  # a 30 s call would have made it wait
    assert wait_until(marker.exists, timeout=5)      # zbridge.Interrupted reached the tool


WITH_BLOCK = textwrap.dedent("""
    import zbridge
    try:
        with zbridge.Client("ipc:///nonexistent-zbridge-dir/hub.sock", connect_timeout=0.5) as c:
            c.call("echo", [1])
    except zbridge.PoolUnavailable as exc:
        print("raised:", exc)
""")


def test_an_error_inside_a_with_block_propagates_instead_of_hanging():
    out = subprocess.run([sys.executable, "-c", WITH_BLOCK], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "raised:" in out.stdout and "not reachable" in out.stdout


def test_a_client_without_a_hub_says_so_and_never_runs_a_toolless_fallback():
    with zbridge.Client("ipc:///nonexistent-zbridge-dir/hub.sock", connect_timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(zbridge.PoolUnavailable, match="not reachable") as info:
            client.call("echo", [1])
    assert info.value.data["cause"] == "unreachable"
    assert time.monotonic() - started < 5  # within connect_timeout, not a fallback's start


def test_a_kill_is_counted_once(bridge_factory):
    bridge = bridge_factory(BASIC, kill_grace=0.2)
    with pytest.raises(zbridge.CallTimeout):
        bridge.call("spin", [60], timeout=0.5)
    assert wait_until(lambda: bridge.status()["counters"]["kills"] >= 1, timeout=10)
    time.sleep(0.5)
    assert bridge.status()["counters"]["kills"] == 1


def test_wait_ready_reports_the_real_time_it_waited(bridge_factory):
    bridge = bridge_factory(str(TOOLSETS / "broken.py"))
    with pytest.raises(zbridge.PoolUnavailable) as info:
        bridge.wait_ready(timeout=60)
    assert "after 60" not in str(info.value)  # it failed fast, and says how long it really took


def test_serve_logs_each_daemons_lifecycle_at_info(tmp_path):
    endpoint = f"ipc://{tmp_path / 'hub.sock'}"
    proc = subprocess.Popen([sys.executable, "-m", "zbridge.cli", "--log-level", "INFO", "serve",
                             "--tools", BASIC, "--bind", endpoint, "--prewarm"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        with zbridge.Client(endpoint) as client:
            client.wait_ready(timeout=30)
            with pytest.raises(zbridge.WorkerLost):
                client.call("exit_hard", [7])
            client.wait_ready(timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    for event in ("daemon_spawn", "daemon_ready", "daemon_exit"):
        assert event in err, (event, err)
    (exit_line,) = [line for line in err.splitlines() if "daemon_exit" in line]
    assert "code=7" in exit_line and "reason=crashed" in exit_line, exit_line
