"""Edges of the client API: closing under load, windows and deadlines, fallbacks of streams."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

import pytest

import zbridge
from helpers import TOOLSETS

BASIC = str(TOOLSETS / "basic.py")

CLOSE_UNDER_A_CALL = textwrap.dedent("""
    import sys, threading, time, zbridge
    client = zbridge.Bridge(sys.argv[1], workers=2)
    client.call("pid")
    outcome = []
    def waiting():
        try:
            client.call("span", [3])
            outcome.append("result")
        except zbridge.Cancelled as exc:
            outcome.append("cancelled")
        except zbridge.BridgeError as exc:
            outcome.append(type(exc).__name__)
    t = threading.Thread(target=waiting); t.start()
    time.sleep(0.5)
    zbridge.Client.close(client)   # the client half only, while the other thread waits
    t.join(10)
    client.close()
    print(outcome)
""")


def test_closing_a_client_while_another_thread_waits_ends_that_call_cleanly():
    out = subprocess.run([sys.executable, "-c", CLOSE_UNDER_A_CALL, BASIC], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() in ("['cancelled']", "['result']"), out.stdout + out.stderr[-2000:]


def test_fan_out_on_a_closed_client_raises(bridge_factory):
    bridge = bridge_factory(BASIC)
    bridge.close()
    with pytest.raises(zbridge.PoolUnavailable):
        bridge.call_many([("add", [1, 2])])


def test_calls_waiting_in_the_client_window_start_their_time_when_sent(bridge_factory):
    bridge = bridge_factory(BASIC, max_in_flight=1)
    results = bridge.map("span", [0.4] * 5, timeout=1.0)  # 2 s in all, 0.4 s each once sent
    assert len(results) == 5 and all(r["end"] > r["start"] for r in results)


def test_closing_an_async_client_ends_its_streams_at_once(basic_tools):
    async def main() -> float:
        bridge = zbridge.AsyncBridge(basic_tools, timeout=30)
        await bridge.call("pid")

        async def consume() -> None:
            async for _ in bridge.astream("count", [10**9], window=2):
                await asyncio.sleep(2)  # a slow consumer

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await zbridge.AsyncClient.close(bridge)
        with pytest.raises(zbridge.Cancelled):
            await asyncio.wait_for(task, 20)
        waited = time.monotonic() - started
        await bridge.close()
        return waited
    assert asyncio.run(main()) < 15  # not the 30 s deadline


def test_a_stream_to_an_unreachable_hub_falls_back_like_a_call():
    with zbridge.Client("ipc:///nonexistent-zbridge-dir/hub.sock", tools=[BASIC],
                        connect_timeout=0.2) as client:
        assert client.call("add", [1, 2]) == 3
        assert list(client.stream("count", [3])) == [0, 1, 2]


def test_a_pipe_daemon_that_cannot_start_is_pool_unavailable_not_an_os_error(bridge_factory):
    bridge = bridge_factory(BASIC, pool_enabled=False, python="/nonexistent/python")
    with pytest.raises(zbridge.PoolUnavailable, match="cannot start"):
        bridge.call("add", [1, 2])
