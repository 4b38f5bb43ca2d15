"""Typed tool handles (``client.handle(fn)``) against real daemons, both twins.

The type checking itself is in test_typing.py (mypy on tests/typing_cases/handles_*.py);
the argument mapping alone is in test_handle_params.py.
"""

from __future__ import annotations

import asyncio
import importlib.util
from concurrent.futures import Future
from types import ModuleType

import pytest

import zbridge
from helpers import TOOLSETS

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def load_toolset() -> ModuleType:
    """The tool module, imported here as a user's program imports its own tools."""
    spec = importlib.util.spec_from_file_location("zbridge_tools_typed", TOOLSETS / "typed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


typed = load_toolset()


@pytest.fixture(scope="module")
def bridge():
    """One warm daemon for the module's tests (up before any test's leak check starts)."""
    with zbridge.Bridge(tools=typed, workers=1, prewarm=True) as b:
        b.wait_ready(timeout=60)
        yield b


def test_a_handle_calls_the_tool_with_its_own_parameters(bridge):
    scale = bridge.handle(typed.scale)
    assert scale.name == "scale"
    assert scale([1.0, 2.0]) == [2.0, 4.0]                                   # a list on the wire
    assert scale(values=[1.0], factor=3.0) == [3.0]                          # a dict
    assert scale([1.0], 3.0, offset=1.0) == [4.0]                            # mixed: named from the signature
    assert scale([1.0], offset=0.5) == [2.5]


def test_a_renamed_tool_is_called_by_its_registered_name(bridge):
    describe = bridge.handle(typed._describe_args)
    assert describe.name == "describe"
    assert describe(1, second=2) == {"first": 1, "second": 2}


def test_coroutine_and_generator_tools_return_what_call_returns(bridge):
    assert bridge.handle(typed.shout)("hey") == "HEY"
    assert bridge.handle(typed.words)("a warm pool") == ["a", "warm", "pool"]
    assert bridge.handle(typed.letters)("ab") == ["a", "b"]


def test_submit_returns_a_future_of_the_result(bridge):
    future = bridge.handle(typed.scale).submit([1.5], factor=2.0)
    assert isinstance(future, Future)
    assert future.result(timeout=30) == [3.0]


def test_with_options_sets_timeout_and_trace_and_keeps_the_rest(bridge):
    nap = bridge.handle(typed.nap)
    quick = nap.with_options(timeout=0.3)
    with pytest.raises(zbridge.CallTimeout):
        quick(1.0)
    assert nap(0.0) == 0.0  # the original handle keeps its options
    traced = bridge.handle(typed.trace).with_options(traceparent=TRACE)
    assert traced() == TRACE
    assert traced.with_options(timeout=5.0)() == TRACE  # other options are kept
    with pytest.raises(ValueError, match="timeout"):
        nap.with_options(timeout=-1)


def test_a_string_handle_is_the_untyped_call(bridge):
    describe = bridge.handle("describe")
    assert describe(1, 2) == {"first": 1, "second": 2}
    assert describe(first="x") == {"first": "x", "second": None}
    with pytest.raises(zbridge.InvalidParams, match="all by position or all by keyword"):
        describe(1, second=2)  # no signature to name the positional argument by


def test_wrong_arguments_get_the_daemons_answer(bridge):
    with pytest.raises(zbridge.InvalidParams, match="scale"):
        bridge.handle(typed.scale)([1.0], nope=1)
    with pytest.raises(zbridge.ToolNotFound, match="undecorated"):
        bridge.handle(typed.undecorated)(1)  # the module registers tools, so serves only those
    with pytest.raises(zbridge.InvalidParams, match="positional-only"):
        bridge.handle(typed.pos_only)(3, b=1)
    assert bridge.handle(typed.pos_only)(3, 1) == 2


def test_handle_refuses_what_is_no_tool(bridge):
    with pytest.raises(TypeError, match="tool function or a tool name"):
        bridge.handle(42)
    with pytest.raises(ValueError):
        bridge.handle("")


def test_the_async_twin_awaits_handles():
    async def main() -> None:
        async with zbridge.AsyncBridge(tools=typed, workers=1) as b:
            scale = b.handle(typed.scale)
            assert await scale([1.0], 3.0, offset=1.0) == [4.0]
            task = scale.submit(values=[2.0])
            assert isinstance(task, asyncio.Task)
            assert await task == [4.0]
            assert await b.handle(typed.shout)("hey") == "HEY"
            assert await b.handle(typed.words)("a b") == ["a", "b"]
            with pytest.raises(zbridge.CallTimeout):
                await b.handle(typed.nap).with_options(timeout=0.3)(1.0)
            assert await b.handle(typed.trace).with_options(traceparent=TRACE)() == TRACE
            assert await b.handle("describe")(first=1) == {"first": 1, "second": None}
    asyncio.run(main())


def test_a_served_client_gets_handles_too(tmp_path):
    from helpers import served
    with served(tmp_path, "--tools", str(TOOLSETS / "typed.py"), "--workers", "1") as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:
            assert client.handle(typed.scale)([1.0], factor=5.0) == [5.0]
