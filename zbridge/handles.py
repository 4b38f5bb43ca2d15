"""Typed tool handles: ``predict = client.handle(mytools.predict)``, then ``predict(x)``.

A handle is a callable with the tool's own parameters and return type (``ParamSpec``), so
mypy checks a call's arguments and result in the user's program, and a misspelt tool
(``mytools.predikt``) is an attribute error there too. It runs the call through the client
it came from (``Bridge``/``Client``: ``Handle``, returns ``R``; ``AsyncBridge``/
``AsyncClient``: ``AsyncHandle``, returns ``Awaitable[R]``), with ``.submit(...)`` and
``.with_options(timeout=..., idempotent=..., traceparent=...)``.

The wire name is the one ``@zbridge.tool`` registered (it marks the function with
``__zbridge_tool__``), else the function's ``__name__`` (a module exposing its public
functions). ``client.handle("name")`` is the untyped form for a tool whose module is not
importable where it is called; its arguments and result are ``Any``.

Arguments map onto the wire's params as ``call()`` takes them: positional only -> a list,
keywords only -> a dict, none -> nil. A call mixing both is sent as a dict, naming the
positional arguments from the function's signature (a handle by string cannot, and says so).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Generic,
    Iterator,
    Mapping,
    ParamSpec,
    Protocol,
    TypedDict,
    TypeVar,
    Unpack,
    cast,
    overload,
)

from .errors import InvalidParams
from .tools import WIRE_NAME

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

__all__ = ["Handle", "AsyncHandle", "Options", "wire_name", "wire_params", "positional_names"]


class Options(TypedDict, total=False):
    """What ``with_options`` may change; omitted ones keep their value."""
    timeout: float | None       # seconds; None: the client's ``timeout`` setting
    idempotent: bool            # may be retried after WorkerLost
    traceparent: str | None     # W3C trace context handed to the tool


@dataclass(frozen=True, slots=True)
class CallOptions:
    timeout: float | None = None
    idempotent: bool = False
    traceparent: str | None = None


# --- pure: names and parameters ----------------------------------------------------------


def wire_name(tool: Callable[..., Any]) -> str:
    """The name a daemon serves ``tool`` under."""
    name = getattr(tool, WIRE_NAME, None) or getattr(tool, "__name__", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"cannot tell the tool name of {tool!r}: pass a function or its name as a str")
    return name


def positional_names(tool: Callable[..., Any]) -> tuple[str | None, ...] | None:
    """The names positional arguments bind to, in order (None: positional-only, which no
    dict can name); None when the function has no signature to read."""
    import inspect
    try:
        parameters = inspect.signature(tool).parameters.values()
    except (TypeError, ValueError):
        return None
    names: list[str | None] = []
    for p in parameters:
        if p.kind is p.POSITIONAL_ONLY:
            names.append(None)
        elif p.kind is p.POSITIONAL_OR_KEYWORD:
            names.append(p.name)
        else:  # *args, keyword-only, **kwargs: no more positional names
            break
    return tuple(names)


def wire_params(tool: str, names: tuple[str | None, ...] | None, args: tuple[Any, ...],
                kwargs: Mapping[str, Any]) -> list[Any] | dict[str, Any] | None:
    """The request's params for ``tool(*args, **kwargs)``; InvalidParams when a call
    mixing positional and keyword arguments cannot be carried as one dict."""
    if not kwargs:
        return list(args) if args else None
    if not args:
        return dict(kwargs)
    if names is None:
        raise InvalidParams(f"tool {tool!r} is called by name, so its positional arguments cannot be "
                            "named: pass them all by position or all by keyword (the wire carries "
                            "a list or a dict)")
    if len(args) > len(names):
        raise InvalidParams(f"bad arguments for tool {tool!r}: {len(args)} positional arguments with "
                            f"keywords, but only {len(names)} parameters can take them by name")
    params: dict[str, Any] = {}
    for index, (name, value) in enumerate(zip(names, args)):
        if name is None:
            raise InvalidParams(f"bad arguments for tool {tool!r}: positional-only parameter "
                                f"{index} cannot be sent with keywords; pass all arguments by position")
        if name in kwargs:
            raise InvalidParams(f"bad arguments for tool {tool!r}: multiple values for argument {name!r}")
        params[name] = value
    params.update(kwargs)
    return params


# --- what a handle needs from its client -------------------------------------------------


class SyncCaller(Protocol):
    def call(self, tool: str, args: Any = None, *, timeout: float | None = None,
             idempotent: bool = False, traceparent: str | None = None) -> Any: ...

    def submit(self, tool: str, args: Any = None, *, timeout: float | None = None,
               idempotent: bool = False, traceparent: str | None = None) -> Future[Any]: ...

    def timeout_of(self, timeout: float | None) -> float: ...


class AsyncCaller(Protocol):
    async def call(self, tool: str, args: Any = None, *, timeout: float | None = None,
                   idempotent: bool = False, traceparent: str | None = None) -> Any: ...

    def timeout_of(self, timeout: float | None) -> float: ...


# --- the handles -------------------------------------------------------------------------


class _Base:
    __slots__ = ("name", "_names", "_options")

    def __init__(self, name: str, names: tuple[str | None, ...] | None, options: CallOptions) -> None:
        self.name = name
        self._names = names
        self._options = options

    def _params(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        return wire_params(self.name, self._names, args, kwargs)

    def _changed(self, checker: Callable[[float | None], float], options: Options) -> CallOptions:
        if options.get("timeout") is not None:
            checker(options["timeout"])  # a bad timeout fails here, not at the first call
        return replace(self._options, **options)

    def __repr__(self) -> str:
        o = self._options
        return (f"<{type(self).__name__} {self.name!r} timeout={o.timeout} "
                f"idempotent={o.idempotent}>")


class Handle(_Base, Generic[P, R]):
    """A tool as a plain function: ``handle(*args, **kwargs)`` runs it and returns its result."""
    __slots__ = ("_client",)

    def __init__(self, client: SyncCaller, name: str, names: tuple[str | None, ...] | None,
                 options: CallOptions = CallOptions()) -> None:
        super().__init__(name, names, options)
        self._client = client

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        o = self._options
        return cast(R, self._client.call(self.name, self._params(args, kwargs), timeout=o.timeout,
                                         idempotent=o.idempotent, traceparent=o.traceparent))

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Start the call and return a Future at once (see ``Client.submit``)."""
        o = self._options
        return cast("Future[R]", self._client.submit(
            self.name, self._params(args, kwargs), timeout=o.timeout, idempotent=o.idempotent,
            traceparent=o.traceparent))

    def with_options(self, **options: Unpack[Options]) -> Handle[P, R]:
        """The same tool with other call options (``timeout``, ``idempotent``, ``traceparent``)."""
        return Handle(self._client, self.name, self._names, self._changed(self._client.timeout_of, options))


class AsyncHandle(_Base, Generic[P, R]):
    """A tool as a coroutine function: ``await handle(*args, **kwargs)``."""
    __slots__ = ("_client",)

    def __init__(self, client: AsyncCaller, name: str, names: tuple[str | None, ...] | None,
                 options: CallOptions = CallOptions()) -> None:
        super().__init__(name, names, options)
        self._client = client

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        o = self._options
        return cast(R, await self._client.call(self.name, self._params(args, kwargs), timeout=o.timeout,
                                               idempotent=o.idempotent, traceparent=o.traceparent))

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> asyncio.Task[R]:
        """Start the call now; await the task for its result, cancel it to cancel the call."""
        return asyncio.ensure_future(self(*args, **kwargs))

    def with_options(self, **options: Unpack[Options]) -> AsyncHandle[P, R]:
        """The same tool with other call options (``timeout``, ``idempotent``, ``traceparent``)."""
        return AsyncHandle(self._client, self.name, self._names,
                           self._changed(self._client.timeout_of, options))


def _describe(tool: Callable[..., Any] | str) -> tuple[str, tuple[str | None, ...] | None]:
    if isinstance(tool, str):
        if not tool:
            raise ValueError("a tool name must be a non-empty string")
        return tool, None
    if not callable(tool):
        raise TypeError(f"handle() takes a tool function or a tool name, not {type(tool).__name__}")
    return wire_name(tool), positional_names(tool)


# --- the one method each client twin gains (a mixin keeps the clients' own code untouched) --
#
# A tool's declared result is what comes back, except that the daemon awaits a coroutine
# tool and gathers a generator tool's items into a list (stream() gives them one by one);
# the overloads say so.


class SyncHandles:
    @overload
    def handle(self: SyncCaller, tool: Callable[P, Iterator[T]]) -> Handle[P, list[T]]: ...
    @overload
    def handle(self: SyncCaller, tool: Callable[P, AsyncIterator[T]]) -> Handle[P, list[T]]: ...
    @overload
    def handle(self: SyncCaller, tool: Callable[P, Awaitable[R]]) -> Handle[P, R]: ...
    @overload
    def handle(self: SyncCaller, tool: Callable[P, R]) -> Handle[P, R]: ...
    @overload
    def handle(self: SyncCaller, tool: str) -> Handle[..., Any]: ...

    def handle(self: SyncCaller, tool: Callable[..., Any] | str) -> Handle[..., Any]:
        """A typed callable for ``tool`` (a tool function, or its name as a str)."""
        return Handle(self, *_describe(tool))


class AsyncHandles:
    @overload
    def handle(self: AsyncCaller, tool: Callable[P, Iterator[T]]) -> AsyncHandle[P, list[T]]: ...
    @overload
    def handle(self: AsyncCaller, tool: Callable[P, AsyncIterator[T]]) -> AsyncHandle[P, list[T]]: ...
    @overload
    def handle(self: AsyncCaller, tool: Callable[P, Awaitable[R]]) -> AsyncHandle[P, R]: ...
    @overload
    def handle(self: AsyncCaller, tool: Callable[P, R]) -> AsyncHandle[P, R]: ...
    @overload
    def handle(self: AsyncCaller, tool: str) -> AsyncHandle[..., Any]: ...

    def handle(self: AsyncCaller, tool: Callable[..., Any] | str) -> AsyncHandle[..., Any]:
        """A typed coroutine function for ``tool`` (a tool function, or its name as a str)."""
        return AsyncHandle(self, *_describe(tool))
