"""Streaming partial results: order, flow control, errors mid-stream, deadlines, cancel."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

import zbridge
from test_cli import zb


def test_ten_thousand_items_complete_and_in_order(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)
    assert list(bridge.stream("count", [10_000])) == list(range(10_000))
    assert bridge.call("count", [5]) == [0, 1, 2, 3, 4]  # call() collects a generator
    assert list(bridge.stream("add", [1, 2])) == [3]     # a plain tool streams one item


def test_async_stream_in_order_and_async_generators(basic_tools):
    async def main():
        async with zbridge.AsyncBridge(basic_tools) as bridge:
            assert [x async for x in bridge.astream("count", [10_000])] == list(range(10_000))
            assert [x async for x in bridge.astream("acount", [3])] == [{"i": 0}, {"i": 1}, {"i": 2}]
    asyncio.run(asyncio.wait_for(main(), 120))


def test_slow_consumer_pauses_the_tool(bridge_factory, basic_tools, tmp_path):
    log = tmp_path / "produced"
    window, n = 8, 120
    bridge = bridge_factory(basic_tools)
    consumed_at = []
    for item in bridge.stream("count", {"n": n, "log": str(log)}, window=window):
        time.sleep(0.005)
        consumed_at.append(time.time())
        assert item == len(consumed_at) - 1
    produced_at = [float(line.split()[1]) for line in log.read_text().splitlines()]
    assert len(produced_at) == n
    for k, stamp in enumerate(produced_at):
        consumed_before = sum(1 for c in consumed_at if c < stamp)
        # at most one window (plus the item waiting for credit) ahead of the consumer
        assert k + 1 - consumed_before <= window + 1, (k, consumed_before)


def test_error_mid_stream_arrives_after_the_items_before_it(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)
    got = []
    with pytest.raises(zbridge.ToolError, match="failed after 500 items"):
        for item in bridge.stream("count", [1000, 500]):
            got.append(item)
    assert got == list(range(500))


def test_async_error_mid_stream(basic_tools):
    async def main():
        async with zbridge.AsyncBridge(basic_tools) as bridge:
            got = []
            with pytest.raises(zbridge.ToolError):
                async for item in bridge.astream("count", [1000, 500]):
                    got.append(item)
            assert got == list(range(500))
    asyncio.run(asyncio.wait_for(main(), 60))


def test_stream_deadline(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)
    got = []
    with pytest.raises(zbridge.CallTimeout):
        for item in bridge.stream("count", [10**9], timeout=0.5, window=4):
            got.append(item)
            time.sleep(0.05)
    assert got and got == list(range(len(got)))
    assert bridge.call("add", [1, 1]) == 2


def test_leaving_a_stream_early_cancels_it_and_the_daemon_stays_warm(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)
    pid = bridge.call("pid")
    for item in bridge.stream("count", [10**9]):
        if item == 10:
            break
    assert bridge.call("pid") == pid
    counters = bridge.status()["counters"]
    # the CANCEL, or the hub seeing the stream's socket gone first, whichever comes first
    assert counters["cancelled"] + counters["abandoned"] == 1 and counters["kills"] == 0


def test_pipe_fallback_streams_too(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, pool_enabled=False)
    assert list(bridge.stream("count", [50])) == list(range(50))
    with pytest.raises(zbridge.ToolError):
        list(bridge.stream("count", [10, 3]))


def test_stdio_streams_as_notifications_tied_to_the_id_when_asked(basic_tools):
    line = json.dumps({"jsonrpc": "2.0", "id": "s1", "method": "zbridge.stream",
                       "params": {"tool": "count", "args": [3]}}) + "\n"
    out = subprocess.run([sys.executable, "-m", "zbridge_daemon", "--stdio", "--tools", basic_tools],
                         input=line.encode(), capture_output=True, timeout=30)
    lines = [json.loads(x) for x in out.stdout.decode().splitlines()]
    assert lines[:3] == [{"jsonrpc": "2.0", "method": "zbridge.partial",
                          "params": {"id": "s1", "seq": i, "item": i}} for i in range(3)]
    assert lines[3:] == [{"jsonrpc": "2.0", "id": "s1", "result": {"items": 3}}]


def test_cli_call_stream_prints_each_item(basic_tools):
    out = zb("call", "count", "--args", "[4]", "--stream", "--tools", basic_tools)
    assert out.returncode == 0, out.stderr
    assert [json.loads(x) for x in out.stdout.splitlines()] == [0, 1, 2, 3]
