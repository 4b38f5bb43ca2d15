"""Running one tool call inside a daemon: bind arguments, run, map failures to errors.

Shared by the zmq worker and the stdio loop so both answer identically.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable
from types import AsyncGeneratorType, GeneratorType

from .errors import InvalidParams, ToolError, ToolNotFound
from .jsonrpc import resolve_tool_call
from .tools import Registry

TYPE_CHECKING = False  # no typing or inspect at start-up: the pipe daemon imports this module
if TYPE_CHECKING:
    import asyncio
    import inspect
    from typing import Any, Iterator

HEALTH = "health"


class Executor:
    """Runs calls against a registry and keeps the daemon's counters."""

    def __init__(self, registry: Registry, expose_tracebacks: bool = True) -> None:
        self.registry = registry
        self.expose_tracebacks = expose_tracebacks
        self.started = time.time()
        self.calls = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, method: str, params: Any, stream: bool = False) -> Any:
        """Run one call; raises a BridgeError for anything but success.

        A generator tool's items come back as a list, or with ``stream`` as an iterator
        that raises BridgeErrors (a tool exception mid-stream surfaces at that item).
        """
        result = self._call(method, params)
        if isinstance(result, (GeneratorType, AsyncGeneratorType)):
            items = self._items(result)
            return items if stream else list(items)
        return result

    def _items(self, gen: Any) -> Iterator[Any]:
        try:
            if isinstance(gen, AsyncGeneratorType):
                while True:
                    try:
                        yield self._await(gen.__anext__())
                    except StopAsyncIteration:
                        return
            else:
                yield from gen
        except GeneratorExit:
            raise
        except (Exception, SystemExit) as exc:
            raise tool_error(exc, self.expose_tracebacks) from None

    def _call(self, method: str, params: Any) -> Any:
        self.calls += 1
        name, args = resolve_tool_call(method, params)
        entry = self.registry.tools.get(name)
        if entry is None:
            if name == HEALTH:
                return self.health()
            raise ToolNotFound(f"unknown tool {name!r}; loaded: {', '.join(self.registry.names()) or 'none'}")
        positional = args if isinstance(args, list) else ()
        named = args if isinstance(args, dict) else {}
        if entry.accepted is not None and named:  # extra_args="ignore"
            named = {k: v for k, v in named.items() if k in entry.accepted}
        try:
            result = entry.fn(*positional, **named)
            if isinstance(result, Awaitable):
                result = self._await(result)
            return result
        except TypeError as exc:
            # Binding is checked only when a call fails, keeping it off the hot path: a
            # TypeError raised before the tool's first line ran means the arguments were wrong.
            if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
                _check_arguments(entry.signature, name, positional, named)
            raise tool_error(exc, self.expose_tracebacks) from None
        except (Exception, SystemExit) as exc:
            raise tool_error(exc, self.expose_tracebacks) from None

    def health(self, **_ignored: Any) -> dict:
        import platform  # off the start-up path: health is rarely the first call
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
            import asyncio  # ~25 ms: paid only by daemons that serve coroutine tools
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)


def _check_arguments(signature: inspect.Signature | None, name: str, positional: Any,
                     named: dict) -> None:
    """Raise InvalidParams, with the reason, if the arguments do not fit the signature."""
    if signature is None:
        return
    try:
        signature.bind(*positional, **named)
    except TypeError as exc:
        raise InvalidParams(f"bad arguments for tool {name!r}: {exc}") from None


def tool_error(exc: BaseException, with_traceback: bool = True) -> ToolError:
    """A ToolError carrying the exception's type, message and (optionally) traceback."""
    import traceback  # off the start-up path: needed only once a tool fails
    tb = traceback.TracebackException.from_exception(exc)
    # drop the executor's own frame so the trace starts in the tool
    if tb.stack and tb.stack[0].filename == __file__:
        tb.stack = traceback.StackSummary.from_list(tb.stack[1:])
    type_name = type(exc).__qualname__
    message = str(exc)
    data = {"type": type_name, "message": message}
    if with_traceback:
        data["traceback"] = "".join(tb.format())
    return ToolError(f"{type_name}: {message}" if message else type_name, data)

