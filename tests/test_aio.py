"""The asyncio twin and cancellation by request id, against real daemons."""

from __future__ import annotations

import asyncio
import random

import pytest

import zbridge
from helpers import daemon_pids


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def until(predicate, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.02)
    return False


async def busy(bridge):
    return any(d["state"] == "busy" for d in (await bridge.status())["daemons"])


def test_a_thousand_concurrent_calls_on_one_loop(basic_tools):
    async def main():
        async with zbridge.AsyncBridge(basic_tools, workers=2, prewarm=True) as bridge:
            await bridge.wait_ready()  # both daemons up, so the calls can spread
            results = await asyncio.gather(*(bridge.call("add", [i, i]) for i in range(1000)))
            assert results == [2 * i for i in range(1000)]
            served = {d["id"]: d["calls"] for d in (await bridge.status())["daemons"]}
            assert len(served) == 2 and all(served.values()), served
    run(main())


def test_async_errors_status_and_map(basic_tools):
    async def main():
        async with zbridge.AsyncBridge(basic_tools) as bridge:
            with pytest.raises(zbridge.ToolError):
                await bridge.call("boom")
            with pytest.raises(zbridge.InvalidParams):
                await bridge.call("add", {"x": 1})
            assert await bridge.map("echo", ["a", "b"]) == ["a", "b"]
            with pytest.raises(zbridge.CallTimeout):
                await bridge.call("span", [30], timeout=0.3)
            assert (await bridge.status())["queue_depth"] == 0
    run(main())


def test_cancelled_queued_call_never_runs(basic_tools, tmp_path):
    journal = tmp_path / "ran"

    async def main():
        async with zbridge.AsyncBridge(basic_tools, prewarm=True) as bridge:
            blocker = bridge.submit("span", [1.0])
            assert await until(lambda: busy(bridge))
            queued = bridge.submit("record", [str(journal), "queued"])
            assert await until(lambda: _queue_depth(bridge, 1))
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert await until(lambda: _queue_depth(bridge, 0))
            await blocker
            await bridge.call("pid")
            assert (await bridge.status())["counters"]["cancelled"] == 1
    run(main())
    assert not journal.exists()


async def _queue_depth(bridge, n):
    return (await bridge.status())["queue_depth"] == n


@pytest.mark.parametrize("mode", ["interrupt", "abandon", "kill"])
def test_cancel_modes(basic_tools, tmp_path, mode):
    marker = tmp_path / "cleaned-up"

    async def main():
        async with zbridge.AsyncBridge(basic_tools, prewarm=True, cancel_mode=mode) as bridge:
            before = await bridge.call("pid")
            task = bridge.submit("interruptible", [0.8 if mode == "abandon" else 60, str(marker)])
            assert await until(lambda: busy(bridge))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            after = await bridge.call("pid")  # waits until the daemon is free (or replaced)
            assert await bridge.call("add", [2, 2]) == 4
            return before, after

    before, after = run(main())
    if mode == "interrupt":
        assert after == before and marker.read_text() == str(before)  # warm, and it cleaned up
    elif mode == "abandon":
        assert after == before and not marker.exists()  # it ran to the end; result dropped
    else:
        assert after != before and before not in daemon_pids()


def test_cancel_never_touches_the_next_call(basic_tools):
    async def main():
        async with zbridge.AsyncBridge(basic_tools, prewarm=True, cancel_mode="interrupt") as bridge:
            pid = await bridge.call("pid")
            rng = random.Random(5)
            for i in range(60):
                task = bridge.submit("span", [0.01])
                await asyncio.sleep(rng.uniform(0, 0.015))
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                assert await bridge.call("echo", [i]) == i  # never a stray Cancelled
            assert await bridge.call("pid") == pid
    run(main())


def test_async_pool_disabled_uses_the_pipe(basic_tools):
    async def main():
        async with zbridge.AsyncBridge(basic_tools, pool_enabled=False) as bridge:
            assert await bridge.call("add", [1, 2]) == 3
            with pytest.raises(zbridge.ToolNotFound):
                await bridge.call("nope")
    run(main())


def test_async_wait_ready(basic_tools):
    async def main():
        async with zbridge.AsyncBridge(basic_tools, workers=2) as bridge:
            status = await bridge.wait_ready(timeout=30)
            assert sum(d["state"] == "idle" for d in status["daemons"]) == 2
    run(main())


def test_async_stream_through_the_pipe_fallback(basic_tools):
    async def main():
        async with zbridge.AsyncBridge(basic_tools, pool_enabled=False) as bridge:
            assert [x async for x in bridge.astream("count", [20])] == list(range(20))
            got = []
            with pytest.raises(zbridge.ToolError):
                async for x in bridge.astream("count", [10, 3]):
                    got.append(x)
            assert got == [0, 1, 2]
    run(main())
