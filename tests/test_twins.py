"""The sync and asyncio clients, held to the same behaviour by one parametrized suite.

Each test runs against ``Bridge`` and ``AsyncBridge`` (driven from a loop in a background
thread), so a difference between the twins fails here.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

import pytest

import zbridge
from helpers import TOOLSETS

BASIC = str(TOOLSETS / "basic.py")


class SyncTwin:
    def __init__(self, tools: Any, **settings: Any) -> None:
        self.bridge = zbridge.Bridge(tools, **settings)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        return self.bridge.call(*args, **kwargs)

    def stream(self, *args: Any, take: int | None = None, **kwargs: Any) -> list[Any]:
        items = []
        for item in self.bridge.stream(*args, **kwargs):
            items.append(item)
            if take is not None and len(items) == take:
                break
        return items

    def call_many(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self.bridge.call_many(*args, **kwargs)

    def map(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self.bridge.map(*args, **kwargs)

    def wait_ready(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.bridge.wait_ready(*args, **kwargs)

    def status(self) -> dict[str, Any]:
        return self.bridge.status()

    def close_bridge(self) -> None:
        self.bridge.close(drain_timeout=1.0)

    close = close_bridge


class AsyncTwin:
    def __init__(self, tools: Any, **settings: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.bridge = zbridge.AsyncBridge(tools, **settings)

    def _run(self, make: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return await make()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=120)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(lambda: self.bridge.call(*args, **kwargs))

    def stream(self, *args: Any, take: int | None = None, **kwargs: Any) -> list[Any]:
        async def collect() -> list[Any]:
            items = []
            agen = self.bridge.astream(*args, **kwargs)
            try:
                async for item in agen:
                    items.append(item)
                    if take is not None and len(items) == take:
                        break
            finally:
                await agen.aclose()
            return items
        return self._run(collect)

    def call_many(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self._run(lambda: self.bridge.call_many(*args, **kwargs))

    def map(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self._run(lambda: self.bridge.map(*args, **kwargs))

    def wait_ready(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self._run(lambda: self.bridge.wait_ready(*args, **kwargs))

    def status(self) -> dict[str, Any]:
        return self._run(lambda: self.bridge.status())

    def close_bridge(self) -> None:
        self._run(lambda: self.bridge.close(drain_timeout=1.0))

    def close(self) -> None:
        try:
            self.close_bridge()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


@pytest.fixture(params=["sync", "async"])
def twin(request):
    made: list = []

    def make(tools: Any = BASIC, **settings: Any):
        made.append((SyncTwin if request.param == "sync" else AsyncTwin)(tools, **settings))
        return made[-1]

    yield make
    for t in made:
        t.close()


def test_results_and_typed_errors(twin):
    t = twin()
    assert t.call("add", [2, 40]) == 42
    assert t.call("add", {"a": 1, "b": 2}) == 3
    with pytest.raises(zbridge.ToolError) as info:
        t.call("boom", ["bad"])
    assert info.value.type == "ValueError" and "bad" in str(info.value)
    with pytest.raises(zbridge.ToolNotFound):
        t.call("nope")
    with pytest.raises(zbridge.InvalidParams):
        t.call("add", {"a": 1, "zzz": 2})
    with pytest.raises(TimeoutError):  # CallTimeout is a TimeoutError
        t.call("span", [5.0], timeout=0.3)


def test_idempotent_calls_retry_others_do_not(twin, tmp_path):
    t = twin()
    assert t.call("die_once", [str(tmp_path / "a")], idempotent=True) == "survived"
    with pytest.raises(zbridge.WorkerLost):
        t.call("die_once", [str(tmp_path / "b")])


def test_pool_disabled_gives_the_same_results_through_the_pipe(twin):
    t = twin(pool_enabled=False)
    assert t.call("add", [1, 2]) == 3
    assert t.stream("count", [4]) == [0, 1, 2, 3]
    with pytest.raises(zbridge.ToolError):
        t.call("boom")


def test_unloadable_tools_give_pool_unavailable_at_once_with_the_cause(twin):
    t = twin(str(TOOLSETS / "broken.py"))
    with pytest.raises(zbridge.PoolUnavailable, match="No module named") as info:
        t.call("anything")
    assert info.value.data["cause"] == "load_failed"
    with pytest.raises(zbridge.PoolUnavailable, match="No module named"):
        t.wait_ready(timeout=30)


def test_streams_items_errors_and_early_exit(twin):
    t = twin()
    pid = t.call("pid")
    assert t.stream("count", [100], window=8) == list(range(100))
    with pytest.raises(zbridge.ToolError, match="failed after 5"):
        t.stream("count", {"n": 10, "fail_after": 5})
    assert t.stream("count", [10**9], take=3) == [0, 1, 2]
    assert t.call("pid") == pid  # the abandoned stream was stopped, the daemon kept
    assert t.status()["counters"]["kills"] == 0
    for window in (0, -1, 100_000):
        with pytest.raises(ValueError, match="window"):
            t.stream("count", [3], window=window)


def test_fan_out_keeps_order_and_windows_calls(twin):
    t = twin(workers=2, max_queue=20, max_in_flight=8)
    assert t.map("add", range(300)) == list(range(300))
    outcomes = t.call_many([("add", [1, 1]), ("boom", ["x"]), ("echo", ["e"])], return_exceptions=True)
    assert outcomes[0] == 2 and isinstance(outcomes[1], zbridge.ToolError) and outcomes[2] == "e"
    with pytest.raises(zbridge.ToolError):
        t.call_many([("add", [1, 1]), ("boom", ["x"])])
    assert t.status()["counters"]["overloaded"] == 0


def test_wait_ready_and_status(twin):
    t = twin(workers=2)
    status = t.wait_ready(timeout=30)
    assert len([d for d in status["daemons"] if d["state"] == "idle"]) == 2
    assert status["protocol"] == 2 and status["max_message_size"] > 0
    assert {"stream", "prewarm", "trace"} <= set(status["capabilities"])


def test_a_closed_client_refuses_calls(twin):
    t = twin()
    assert t.call("pid")
    t.close_bridge()
    with pytest.raises(zbridge.PoolUnavailable) as info:
        t.call("pid")
    assert info.value.data["closing"]


TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_traceparent_reaches_the_tool(twin):
    t = twin(str(TOOLSETS / "observe.py"))
    who = t.call("whoami", traceparent=TRACE)
    assert who["traceparent"] == TRACE and who["tool"] == "whoami" and who["request_id"] >= 1
    assert t.stream("whoami_stream", [2], traceparent=TRACE) == [TRACE, TRACE]
    assert t.call("whoami")["traceparent"] is None
    with pytest.raises(ValueError, match="traceparent"):
        t.call("whoami", traceparent="not-a-trace")
