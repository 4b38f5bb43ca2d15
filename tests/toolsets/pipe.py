"""Tools for the pipe-daemon tests: seed-style argument handling and a look at the imports."""

import sys

import zbridge

# what the --stdio start must not import (each costs milliseconds, click and asyncio tens)
HEAVY = ("click", "zmq", "asyncio", "msgpack", "logging", "zbridge.protocol")


@zbridge.tool
def heavy_modules() -> list:
    return sorted(name for name in HEAVY if name in sys.modules)


@zbridge.tool(extra_args="ignore")
def lenient(a: int, b: int = 0) -> int:
    return a + b


@zbridge.tool(extra_args="ignore")
def lenient_kwargs(a: int, **rest) -> dict:
    return {"a": a, "rest": rest}


@zbridge.tool
def noisy_items(n: int):
    """A generator that prints between items: neither may reach the protocol stream."""
    for i in range(n):
        print("item", i, "coming")
        yield {"i": i}
