"""The `zbridge` command: serve, call, status, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from helpers import daemon_pids, wait_until

ZBRIDGE = [sys.executable, "-m", "zbridge.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zb(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(ZBRIDGE + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def server(basic_tools, tmp_path):
    endpoint = f"ipc://{tmp_path}/hub.sock"
    proc = subprocess.Popen(ZBRIDGE + ["serve", "--tools", basic_tools, "--workers", "2",
                                       "--bind", endpoint], stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: zb("status", "--endpoint", endpoint).returncode == 0, timeout=20)
        yield endpoint, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        proc.stderr.close()


def test_call_and_status_against_serve(server):
    endpoint, _ = server
    out = zb("call", "add", "--args", "[2, 40]", "--endpoint", endpoint)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == 42
    status = json.loads(zb("status", "--endpoint", endpoint, "--json").stdout)
    assert status["daemons"] and status["daemons"][0]["state"] == "idle"
    table = zb("status", "--endpoint", endpoint).stdout
    assert "idle" in table and str(status["daemons"][0]["pid"]) in table


def test_env_vars_configure_the_client(server):
    endpoint, _ = server
    out = zb("call", "echo", "--args", '{"value": "env"}', env={"ZBRIDGE_ENDPOINT": endpoint})
    assert json.loads(out.stdout) == "env"


def test_errors_go_to_stderr_with_exit_status_1(server):
    endpoint, _ = server
    out = zb("call", "boom", "--endpoint", endpoint)
    assert out.returncode == 1 and out.stdout == ""
    assert json.loads(out.stderr)["code"] == -32000


def test_sigterm_drains_running_calls_and_stops_daemons(server, basic_tools):
    endpoint, proc = server
    import zbridge
    with zbridge.Client(endpoint, fallback=False) as client:
        running = client.submit("span", {"seconds": 1.0})
        assert wait_until(lambda: any(d["state"] == "busy" for d in client.status()["daemons"]))
        pids = {d["pid"] for d in client.status()["daemons"]}
        proc.send_signal(signal.SIGTERM)
        assert running.result(timeout=10)["end"] > 0
    assert proc.wait(timeout=20) == 0
    assert not (pids & daemon_pids())


def test_embedded_one_shot_call(basic_tools):
    out = zb("call", "add", "--args", '{"a": 1, "b": 1}', "--tools", basic_tools)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == 2


def test_bad_args_json_is_a_usage_error(basic_tools):
    out = zb("call", "add", "--args", "{nope", "--tools", basic_tools)
    assert out.returncode == 2 and "not valid JSON" in out.stderr


def test_serve_refuses_non_loopback_tcp(basic_tools):
    out = zb("serve", "--tools", basic_tools, "--bind", "tcp://0.0.0.0:5999", timeout=30)
    assert out.returncode != 0 and "loopback" in out.stderr


def test_status_without_a_hub_fails_clearly():
    out = zb("status", "--endpoint", f"tcp://127.0.0.1:{free_port()}", timeout=30)
    assert out.returncode == 1 and "no hub" in out.stderr


def test_serve_refuses_to_steal_a_live_ipc_endpoint(basic_tools, tmp_path):
    endpoint = f"ipc://{tmp_path}/hub.sock"
    first = subprocess.Popen(ZBRIDGE + ["serve", "--tools", basic_tools, "--bind", endpoint],
                             stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: zb("status", "--endpoint", endpoint).returncode == 0, timeout=20)
        second = zb("serve", "--tools", basic_tools, "--bind", endpoint, timeout=30)
        assert second.returncode != 0 and "already serves it" in second.stderr
        assert zb("status", "--endpoint", endpoint).returncode == 0  # the first still owns it
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)


def test_second_signal_stops_at_once(server):
    endpoint, proc = server
    import time
    import zbridge
    with zbridge.Client(endpoint, fallback=False) as client:
        stuck = client.submit("span", {"seconds": 60})
        assert wait_until(lambda: any(d["state"] == "busy" for d in client.status()["daemons"]))
        pids = {d["pid"] for d in client.status()["daemons"]}
        proc.send_signal(signal.SIGTERM)  # drain: would wait up to 10 s for the call
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)  # now
        with pytest.raises(zbridge.WorkerLost, match="stopped"):
            stuck.result(timeout=10)
    assert proc.wait(timeout=10) == 0
    assert not (pids & daemon_pids())


def test_async_client_against_serve(server):
    endpoint, _ = server
    import asyncio
    import zbridge

    async def main():
        async with zbridge.AsyncClient(endpoint, fallback=False) as client:
            results = await asyncio.gather(*(client.call("add", [i, 1]) for i in range(200)))
            assert results == [i + 1 for i in range(200)]
            assert [x async for x in client.astream("count", [5])] == [0, 1, 2, 3, 4]
            assert (await client.status())["daemons"]
    asyncio.run(asyncio.wait_for(main(), 60))
