"""ZBRIDGE_POOL_ENABLED=false: one subprocess per call, same answers as the pool."""

from __future__ import annotations

import pytest

import zbridge

CASES = [
    ("echo", [{"a": [1, 2.5, None, True, "s"]}]),
    ("add", [1, 2]),
    ("add", {"a": 5, "b": 6}),
    ("execute_tool", {"tool_name": "add", "args": [7]}),
    ("boom", {"message": "same"}),
    ("no_such_tool", None),
    ("add", {"q": 1}),
    ("unencodable", None),
]


def outcome(bridge: zbridge.Bridge, tool: str, args):
    try:
        return ("result", bridge.call(tool, args))
    except zbridge.BridgeError as exc:
        data = exc.data if isinstance(exc.data, dict) else {}
        return ("error", type(exc).__name__, exc.code, data.get("type"), data.get("message"))


def test_pool_disabled_by_env_gives_same_results_and_codes(bridge_factory, basic_tools, monkeypatch):
    pooled = bridge_factory(basic_tools)
    monkeypatch.setenv("ZBRIDGE_POOL_ENABLED", "false")
    piped = bridge_factory(basic_tools)
    assert piped.settings.pool_enabled is False
    for tool, args in CASES:
        assert outcome(piped, tool, args) == outcome(pooled, tool, args), (tool, args)


def test_pipe_path_uses_a_fresh_process_per_call(bridge_factory, basic_tools):
    piped = bridge_factory(basic_tools, pool_enabled=False)
    assert piped.call("cached", ["k"])["hits"] == 1
    assert piped.call("cached", ["k"])["hits"] == 1


def test_pipe_path_timeout_kills_the_subprocess(bridge_factory, basic_tools):
    piped = bridge_factory(basic_tools, pool_enabled=False)
    with pytest.raises(zbridge.CallTimeout):
        piped.call("span", [30], timeout=1.5)


def test_hub_unreachable_falls_back_only_before_sending(basic_tools):
    # nothing listens here: the request never leaves, so the fallback may run it
    with zbridge.Client("ipc:///nonexistent-zbridge-dir/hub.sock", tools=[basic_tools],
                        connect_timeout=0.2) as client:
        assert client.call("add", [2, 3]) == 5
    with zbridge.Client("ipc:///nonexistent-zbridge-dir/hub.sock", tools=[basic_tools],
                        connect_timeout=0.2, fallback=False) as client:
        with pytest.raises(zbridge.PoolUnavailable, match="not reachable"):
            client.call("add", [2, 3])
