"""Nothing is left behind: not after close(), not after the embedding process is SIGKILLed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import zbridge
from helpers import daemon_pids, wait_until


def test_close_leaves_no_process_and_no_ipc_file(basic_tools):
    bridge = zbridge.Bridge(basic_tools, workers=2, prewarm=True)
    private_dir = bridge.private_dir
    pids = {bridge.call("pid"), bridge.call("pid")}
    assert wait_until(lambda: len(bridge.status()["daemons"]) == 2)
    pids = {d["pid"] for d in bridge.status()["daemons"]}
    assert os.stat(private_dir).st_mode & 0o777 == 0o700
    bridge.close()
    assert not (pids & daemon_pids())
    assert not os.path.exists(private_dir)


def test_close_lets_running_calls_finish_and_refuses_new_ones(basic_tools):
    bridge = zbridge.Bridge(basic_tools, prewarm=True)
    running = bridge.submit("span", {"seconds": 0.5})
    assert wait_until(lambda: any(d["state"] == "busy" for d in bridge.status()["daemons"]))
    bridge.close()
    assert running.result(timeout=5)["end"] > 0
    with pytest.raises(zbridge.PoolUnavailable):
        bridge.call("pid")


EMBEDDER = textwrap.dedent("""
    import json, sys, time, zbridge
    bridge = zbridge.Bridge(sys.argv[1], workers=2, prewarm=True)
    pids = sorted({bridge.call("span", [0.2]) ["pid"] for _ in range(1)})
    while len([d for d in bridge.status()["daemons"] if d["state"] == "idle"]) < 2:
        time.sleep(0.02)
    pids = [d["pid"] for d in bridge.status()["daemons"]]
    print(json.dumps({"pids": pids, "dir": bridge.private_dir}), flush=True)
    time.sleep(600)
""")


def test_sigkilled_embedder_leaves_no_daemon_and_no_ipc_file(basic_tools):
    proc = subprocess.Popen([sys.executable, "-c", EMBEDDER, basic_tools], stdout=subprocess.PIPE)
    try:
        info = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    assert len(info["pids"]) == 2
    assert wait_until(lambda: not (set(info["pids"]) & daemon_pids()), timeout=10)
    assert wait_until(lambda: not os.path.exists(info["dir"]), timeout=10)


def test_unclosed_bridge_is_cleaned_up_at_interpreter_exit(basic_tools):
    script = ("import json, zbridge, sys; b = zbridge.Bridge(sys.argv[1]); "
              "print(json.dumps({'pid': b.call('pid'), 'dir': b.private_dir}))")
    out = subprocess.run([sys.executable, "-c", script, basic_tools], capture_output=True, timeout=60)
    info = json.loads(out.stdout)
    assert info["pid"] not in daemon_pids()
    assert not os.path.exists(info["dir"])


GRANDPARENT = textwrap.dedent("""
    import subprocess, zbridge

    @zbridge.tool
    def start_sleeper() -> int:
        return subprocess.Popen(["sleep", "300"]).pid
""")


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_sigkilled_serve_leaves_no_process_a_tool_started(tmp_path):
    from test_cli import ZBRIDGE, zb
    tools = tmp_path / "grandparent.py"
    tools.write_text(GRANDPARENT)
    endpoint = f"ipc://{tmp_path}/hub.sock"
    proc = subprocess.Popen(ZBRIDGE + ["serve", "--tools", str(tools), "--bind", endpoint],
                            stderr=subprocess.DEVNULL)
    sleeper = None
    try:
        assert wait_until(lambda: zb("status", "--endpoint", endpoint).returncode == 0, timeout=20)
        with zbridge.Client(endpoint, fallback=False) as client:
            sleeper = client.call("start_sleeper")
            daemons = {d["pid"] for d in client.status()["daemons"]}
        assert _alive(sleeper)
        proc.kill()
        proc.wait()
        assert wait_until(lambda: not _alive(sleeper), timeout=5), "the tool's child outlived the hub"
        assert wait_until(lambda: not (daemons & daemon_pids()), timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if sleeper is not None and _alive(sleeper):
            os.kill(sleeper, 9)
