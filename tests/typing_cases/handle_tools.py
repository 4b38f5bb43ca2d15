"""Tools the typed-handle cases call (a user's tool module)."""

from __future__ import annotations

from typing import Iterator

import zbridge


@zbridge.tool
def predict(features: list[float], threshold: float = 0.5) -> dict[str, float]:
    return {"score": sum(features), "threshold": threshold}


@zbridge.tool(name="tokens")
def split_words(text: str) -> Iterator[str]:
    yield from text.split()


@zbridge.tool
async def shout(text: str) -> str:
    return text.upper()
