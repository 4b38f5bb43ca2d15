"""A small user program: it must type-check under mypy --strict."""

from __future__ import annotations

import asyncio

import zbridge


@zbridge.tool
def add(a: int, b: int = 0) -> int:
    return a + b


@zbridge.tool(name="greet", extra_args="ignore")
def hello(name: str) -> str:
    return f"hello {name}"


def main() -> None:
    total: int = add(1, 2)  # a decorated tool is still the plain function
    greeting: str = hello("x")
    with zbridge.Bridge(tools=__name__, workers=1) as bridge:
        result = bridge.call("add", [total, 1], timeout=5.0)
        future = bridge.submit("greet", {"name": greeting})
        future.result()
        for item in bridge.stream("count", [3]):
            print(item)
        status = bridge.status()
        print(result, status["daemons"])
        workers: int = bridge.scale(2)["workers"]
        replaced: int = bridge.reload(timeout=60.0)["replaced"]
        stacks: str = bridge.stacks("w1") + bridge.stacks(1234)
        print(workers, replaced, stacks, status.get("generation"))
    try:
        zbridge.Client().call("add", [1])
    except zbridge.DidNotRun as exc:
        print(exc.code, exc.data)
    except zbridge.CallTimeout as exc:
        timeout_error: TimeoutError = exc
        print(timeout_error)
    except zbridge.BridgeError as exc:
        print(exc.to_wire())


async def amain() -> None:
    async with zbridge.AsyncBridge(tools=__name__) as bridge:
        value = await bridge.call("add", [1, 2])
        task: asyncio.Task[object] = bridge.submit("add", [1, 2])
        await task
        async for item in bridge.astream("count", [2]):
            print(item, value)
        scaled = await bridge.scale(1)
        reloaded = await bridge.reload()
        print(scaled["was"], reloaded["took_s"], await bridge.stacks("w1"))
