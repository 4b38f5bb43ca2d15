"""Example tools: a slow-to-load "model" kept warm, an echo, a sleep and one that fails."""

from __future__ import annotations

import os
import time
from typing import Any

import zbridge

MODEL: dict[str, Any] | None = None
LOAD_SECONDS = float(os.environ.get("ZBRIDGE_EXAMPLE_LOAD_SECONDS", "1.0"))


@zbridge.startup
def load_model() -> None:
    """Runs once per daemon before it reports ready: the expensive part we keep warm."""
    global MODEL
    started = time.time()
    time.sleep(LOAD_SECONDS)  # stands in for importing torch and reading weights
    MODEL = {"loaded_at": started, "load_seconds": LOAD_SECONDS,
             "positive": {"good", "great", "fast", "warm", "love"}}


@zbridge.tool
def predict(text: str) -> dict[str, Any]:
    """Classify text with the model loaded at start-up."""
    assert MODEL is not None, "load_model runs before any call"
    words = set(text.lower().split())
    score = len(words & MODEL["positive"])
    return {"label": "positive" if score else "neutral", "score": score,
            "pid": os.getpid(), "model_loaded_at": MODEL["loaded_at"]}


@zbridge.tool
def echo(value: Any = None) -> Any:
    """Return the argument unchanged."""
    return value


@zbridge.tool
def sleep(seconds: float = 0.1) -> dict[str, Any]:
    """Sleep, and say when, so callers can see calls overlap."""
    start = time.time()
    time.sleep(seconds)
    return {"pid": os.getpid(), "start": start, "end": time.time()}


@zbridge.tool
def fail(message: str = "this tool always fails") -> None:
    """Raise, to show how tool errors come back."""
    raise ValueError(message)
