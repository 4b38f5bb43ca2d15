"""Typed handles used rightly: must type-check under mypy --strict."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Awaitable, Callable

import handle_tools
import zbridge


def main() -> None:
    with zbridge.Bridge(tools=handle_tools, workers=1) as bridge:
        predict = bridge.handle(handle_tools.predict)
        scores: dict[str, float] = predict([1.0, 2.0])
        strict = predict.with_options(timeout=2.0, idempotent=True)
        pending: Future[dict[str, float]] = strict.submit([0.5], threshold=0.1)
        plain: Callable[[list[float]], dict[str, float]] = predict  # a Callable[P, R]
        words: list[str] = bridge.handle(handle_tools.split_words)("a b")  # items as a list
        loud: str = bridge.handle(handle_tools.shout)("x")                 # awaited in the daemon
        by_name: Any = bridge.handle("predict")([1.0])                     # untyped by name
        print(scores, pending.result(), plain([1.0]), words, loud, by_name)


async def amain() -> None:
    async with zbridge.AsyncClient() as client:
        predict = client.handle(handle_tools.predict)
        scores: dict[str, float] = await predict([1.0], threshold=0.2)
        coroutine_function: Callable[[list[float]], Awaitable[dict[str, float]]] = predict
        task = predict.with_options(timeout=1.0).submit(features=[1.0])
        print(scores, await task, await coroutine_function([2.0]))
