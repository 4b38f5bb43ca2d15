"""Annotated tools for typed handles (tests/test_handles.py)."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Iterator

import zbridge


@zbridge.tool
def scale(values: list[float], factor: float = 2.0, *, offset: float = 0.0) -> list[float]:
    return [v * factor + offset for v in values]


@zbridge.tool(name="describe")
def _describe_args(first: Any, second: Any = None) -> dict[str, Any]:
    """Served as "describe": says how its arguments arrived."""
    return {"first": first, "second": second}


@zbridge.tool
def pos_only(a: int, /, b: int = 0) -> int:
    return a - b


@zbridge.tool
async def shout(text: str) -> str:
    return text.upper()


@zbridge.tool
def words(text: str) -> Iterator[str]:
    yield from text.split()


@zbridge.tool
async def letters(text: str) -> AsyncIterator[str]:
    for letter in text:
        yield letter


@zbridge.tool
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@zbridge.tool
def trace() -> str | None:
    return zbridge.current_call().traceparent


def undecorated(x: int) -> int:
    """Not served by this module (it registers tools): a handle names it by __name__."""
    return x
