"""zbridge errors as HTTP responses, for a web app in front of a pool (docs/WEB.md).

Pure and framework-free: ``http_error(exc)`` gives the status, headers and a JSON body; a
Starlette / FastAPI exception handler (or aiohttp, Flask...) only has to send them.

The rule: *whose fault, and will trying again help?* Arguments that do not fit the tool are
the HTTP client's fault (422). Everything else is the server's: a tool that raised is a bug
or an input the app should have validated (500; name the exception types your tools raise
for bad input, ``bad_input=("ValueError",)``, to make those 422); the pool answered too late (504) or lost
the daemon mid-call (502: the upstream failed); a full queue or a pool that cannot serve
right now is temporary (503, with ``Retry-After``), unless its cause will not go away by
waiting (tools that fail to load: 503 without ``Retry-After``).

The body never carries a tool's traceback or arguments: they stay in the server's log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import (
    BridgeError,
    CallTimeout,
    Cancelled,
    ConnectionLost,
    InvalidParams,
    Overloaded,
    PoolUnavailable,
    ToolError,
    WorkerLost,
)

__all__ = ["HttpError", "http_error", "STATUS", "RETRY_AFTER"]

# Most specific first: the first class an error is an instance of decides.
STATUS: tuple[tuple[type[BridgeError], int], ...] = (
    (InvalidParams, 422),    # the request's arguments do not fit the tool's signature
    (CallTimeout, 504),      # the pool did not answer within the call's deadline
    (WorkerLost, 502),       # the daemon died holding the call (it may have run)
    (ConnectionLost, 502),   # the hub dropped this worker's connection mid-call
    (Overloaded, 503),       # the hub's queue is full: shed load, come back later
    (PoolUnavailable, 503),  # no daemon can serve (hub down or restarting, starts failing)
    (Cancelled, 503),        # the server is shutting down and cancelled the call
    (ToolError, 500),        # the tool raised: a bug, or input the app should validate
)
DEFAULT_STATUS = 500         # ToolNotFound (deployment mismatch), InvalidRequest, InternalError
RETRY_AFTER = 1              # seconds, for a full queue or a pool coming back
# PoolUnavailable causes that waiting does not fix: the tools fail to load on every start.
PERMANENT_CAUSES = frozenset({"load_failed"})


@dataclass(frozen=True, slots=True)
class HttpError:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)


def status_for(exc: BridgeError, bad_input: Iterable[str] = ()) -> int:
    """``bad_input``: names of exception types a tool raises for input it cannot use (e.g.
    ``("ValueError",)``): a ToolError of those types is the HTTP client's fault (422)."""
    if isinstance(exc, ToolError) and exc.type in set(bad_input):
        return 422
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return DEFAULT_STATUS


def _retry_after(exc: BridgeError, retry_after: int) -> dict[str, str]:
    if isinstance(exc, Overloaded):
        return {"Retry-After": str(retry_after)}
    if isinstance(exc, PoolUnavailable):
        cause = exc.data.get("cause") if isinstance(exc.data, dict) else None
        if cause not in PERMANENT_CAUSES:
            return {"Retry-After": str(retry_after)}
    return {}


def http_error(exc: BridgeError, *, bad_input: Iterable[str] = (), retry_after: int = RETRY_AFTER) -> HttpError:
    """The response for ``exc``: status, headers (``Retry-After`` when waiting helps) and
    ``{"error": {"code", "type", "message"}}`` (plus ``tool_error``: the exception's type
    name, for a ToolError; never its traceback). ``bad_input``: see ``status_for``."""
    error: dict[str, Any] = {"code": exc.code, "type": type(exc).__name__, "message": exc.message}
    if isinstance(exc, ToolError) and exc.type:
        error["tool_error"] = exc.type
    return HttpError(status_for(exc, bad_input), _retry_after(exc, retry_after), {"error": error})
