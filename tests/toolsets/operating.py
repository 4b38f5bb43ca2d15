"""Tools for the operator's tests (issue 23): a sleeper, a failing tool, a chatty one."""

import sys
import time

import zbridge


@zbridge.tool
def nap(seconds: float = 0.2) -> float:
    time.sleep(seconds)
    return seconds


@zbridge.tool
def hang(seconds: float = 3.0) -> float:
    time.sleep(seconds)
    return seconds


@zbridge.tool
def boom(message: str = "kaput") -> None:
    raise ValueError(message)


@zbridge.tool
def chatty(text: str = "hello") -> str:
    print(f"tool says {text}")
    print(f"tool warns {text}", file=sys.stderr)
    return text


@zbridge.tool
def crash(code: int = 9) -> None:
    import os
    os._exit(code)
