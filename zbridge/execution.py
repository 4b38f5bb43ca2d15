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
    from typing import Any, Generator

    from .ratelimit import RateLimit

HEALTH = "health"
TOOL_ERRORS_PER_MINUTE = 5  # logged per tool; the rest are counted in the next line


class Executor:
    """Runs calls against a registry and keeps the daemon's counters."""

    def __init__(self, registry: Registry, expose_tracebacks: bool = True) -> None:
        self.registry = registry
        self.expose_tracebacks = expose_tracebacks
        self.started = time.time()
        self.calls = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._errors_logged: RateLimit | None = None

    def run(self, method: str, params: Any, stream: bool = False) -> Any:
        """Run one call; raises a BridgeError for anything but success.

        A generator tool's items come back as a list, or with ``stream`` as an iterator
        that raises BridgeErrors (a tool exception mid-stream surfaces at that item).
        """
        result = self._call(method, params)
        if isinstance(result, (GeneratorType, AsyncGeneratorType)):
            items = self._items(result, resolve_tool_call(method, params)[0])
            return items if stream else list(items)
        return result

    def _items(self, gen: Any, name: str) -> Generator[Any, None, None]:
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
            raise self._failed(name, exc) from None

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
            raise self._failed(name, exc) from None
        except (Exception, SystemExit) as exc:
            raise self._failed(name, exc) from None

    def _failed(self, name: str, exc: BaseException) -> ToolError:
        """The ToolError the caller gets, logged here once (the server's side of it)."""
        error = tool_error(exc, self.expose_tracebacks)
        if self._errors_logged is None:
            from .ratelimit import RateLimit  # off the start-up path, like logging itself
            self._errors_logged = RateLimit(TOOL_ERRORS_PER_MINUTE, 60.0)
        log_tool_error(name, exc, self._errors_logged)
        return error

    def health(self, **_ignored: Any) -> dict[str, Any]:
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
                     named: dict[str, Any]) -> None:
    """Raise InvalidParams, with the reason, if the arguments do not fit the signature."""
    if signature is None:
        return
    try:
        signature.bind(*positional, **named)
    except TypeError as exc:
        raise InvalidParams(f"bad arguments for tool {name!r}: {exc}") from None


def log_tool_error(tool: str, exc: BaseException, limit: RateLimit) -> None:
    """One WARNING record per failed call (tool, request id, exception type and message),
    the traceback at DEBUG; at most ``limit`` allows per tool, the rest counted."""
    suppressed = limit.allow(tool, time.monotonic())
    if suppressed is None:
        return
    import logging

    from .context import current_call
    log = logging.getLogger("zbridge.daemon")
    call = current_call()
    fields: dict[str, Any] = {"event": "tool_error", "tool": tool,
                              "request_id": call.request_id if call is not None else None,
                              "error_type": type(exc).__qualname__, "error": str(exc)[:500]}
    more = f" ({suppressed} more errors of this tool were not logged)" if suppressed else ""
    if suppressed:
        fields["suppressed"] = suppressed
    log.warning("tool %s raised %s: %s%s", tool, fields["error_type"], fields["error"], more, extra=fields)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("traceback of tool %s", tool, exc_info=exc, extra=fields)


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


def as_items(result: Any) -> Generator[Any, None, None]:
    """A streamed call's items: the tool's generator, or its one plain result as one item."""
    if isinstance(result, GeneratorType):
        return result
    return (item for item in (result,))
