"""Tools for the observability tests: plain, failing, crashing, and one that reports
``zbridge.current_call()``."""

import os
import time

import zbridge


@zbridge.tool
def noop(value=None):
    return value


@zbridge.tool
def fail(message: str = "no") -> None:
    raise ValueError(message)


@zbridge.tool
def crash(code: int = 9) -> None:
    os._exit(code)


@zbridge.tool
def nap(seconds: float = 0.2) -> float:
    time.sleep(seconds)
    return seconds


@zbridge.tool
def whoami() -> dict | None:
    call = zbridge.current_call()
    if call is None:
        return None
    return {"request_id": call.request_id, "tool": call.tool, "deadline": call.deadline,
            "traceparent": call.traceparent}


@zbridge.tool
def whoami_stream(n: int = 2):
    for _ in range(n):
        call = zbridge.current_call()
        yield call.traceparent if call else None
