"""Running one tool call inside a daemon: bind arguments, run, map failures to errors.

Shared by the zmq worker and the stdio loop so both answer identically.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import platform
import sys
import time
import traceback
from typing import Any

from .errors import BridgeError, InvalidParams, ToolError, ToolNotFound
from .jsonrpc import resolve_tool_call
from .tools import Registry

HEALTH = "health"


class Executor:
    """Runs calls against a registry and keeps the daemon's counters."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.started = time.time()
        self.calls = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, method: str, params: Any) -> Any:
        """Run one call; raises a BridgeError for anything but success."""
        self.calls += 1
        name, args = resolve_tool_call(method, params)
        entry = self.registry.tools.get(name)
        if entry is None:
            if name == HEALTH:
                return self.health()
            raise ToolNotFound(f"unknown tool {name!r}; loaded: {', '.join(self.registry.names()) or 'none'}")
        bound_args, bound_kwargs = _bind(entry.signature, name, args)
        try:
            result = entry.fn(*bound_args, **bound_kwargs)
            if inspect.isawaitable(result):
                result = self._await(result)
            return result
        except (Exception, SystemExit) as exc:
            raise tool_error(exc) from None

    def health(self, **_ignored: Any) -> dict:
        return {
            "status": "ok",
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 3),
            "calls_served": self.calls,
            "tools": self.registry.names(),
            "python": platform.python_version(),
            "executable": sys.executable,
        }

    def _await(self, awaitable: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)


def _bind(signature: inspect.Signature | None, name: str, args: Any) -> tuple[tuple, dict]:
    positional: tuple = tuple(args) if isinstance(args, list) else ()
    named: dict = args if isinstance(args, dict) else {}
    if signature is not None:
        try:
            signature.bind(*positional, **named)
        except TypeError as exc:
            raise InvalidParams(f"bad arguments for tool {name!r}: {exc}") from None
    return positional, named


def tool_error(exc: BaseException) -> ToolError:
    """A ToolError carrying the exception's type, message and traceback."""
    tb = traceback.TracebackException.from_exception(exc)
    # drop the executor's own frame so the trace starts in the tool
    if tb.stack and tb.stack[0].filename == __file__:
        tb.stack = traceback.StackSummary.from_list(tb.stack[1:])
    type_name = type(exc).__qualname__
    message = str(exc)
    return ToolError(f"{type_name}: {message}" if message else type_name,
                     {"type": type_name, "message": message, "traceback": "".join(tb.format())})


def error_for(exc: BaseException) -> BridgeError:
    """Any exception as a BridgeError (unexpected ones become ToolError)."""
    return exc if isinstance(exc, BridgeError) else tool_error(exc)
