"""Every error zbridge raises, as one tree with JSON-RPC codes, grouped by what a caller can do.

    BridgeError (-32603)                 root; catch this to catch everything
    ├── DidNotRun                        the call never ran: safe to retry or send elsewhere
    │   ├── ParseError (-32700)          bytes / JSON that could not be decoded
    │   ├── InvalidRequest (-32600)      well-formed but not a valid request
    │   ├── ToolNotFound (-32601)        no tool by that name in the daemon
    │   ├── InvalidParams (-32602)       arguments do not fit the tool's signature
    │   ├── Overloaded (-32003)          the hub's queue is full
    │   └── PoolUnavailable (-32004)     no daemon can serve (start failed, hub gone, closing)
    ├── MayHaveRun                       it may have run: retry only what is idempotent
    │   ├── CallTimeout (-32001)         the deadline passed before a reply (also a TimeoutError)
    │   ├── WorkerLost (-32002)          the daemon died or was killed while holding the call
    │   ├── Cancelled (-32005)           the call was cancelled
    │   └── ConnectionLost (-32006)      the hub dropped this client's connection mid-call
    ├── ToolError (-32000)               the tool ran and raised; .data has type, message, traceback
    ├── ReloadFailed (-32007)            a reload was aborted: the new tools did not start, and
    │                                    the daemons already running serve on (their old code)
    └── InternalError (-32603)           zbridge failed (e.g. the result cannot be encoded)

    Interrupted (a BaseException)        raised *inside a tool* when its caller cancels it, so a
                                         tool's ``except Exception:`` does not swallow it

Errors convert both ways: ``err.to_wire()`` gives the JSON-RPC error object and
``error_from_wire(obj)`` rebuilds the matching class (unknown codes give ``BridgeError``).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~2.5 ms at start-up; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "BridgeError", "DidNotRun", "MayHaveRun", "Interrupted", "ParseError", "InvalidRequest", "ToolNotFound", "InvalidParams",
    "InternalError", "ToolError", "CallTimeout", "WorkerLost", "Overloaded",
    "PoolUnavailable", "Cancelled", "ConnectionLost", "ReloadFailed", "error_from_wire", "error_class_for",
]


class BridgeError(Exception):
    """Root of every zbridge error; ``code`` is its JSON-RPC error code."""

    code: int = -32603

    def __init__(self, message: str = "", data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_wire(self) -> dict[str, Any]:
        """The JSON-RPC 2.0 error object for this error."""
        wire: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            wire["data"] = self.data
        return wire

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class DidNotRun(BridgeError):
    """The call never ran: retrying it, or running it elsewhere, cannot run it twice."""


class MayHaveRun(BridgeError):
    """The call may have run: retry it only if running it twice is harmless (idempotent)."""


class Interrupted(BaseException):
    """Raised inside a tool whose caller cancelled it (cancel_mode=interrupt). A
    BaseException, like asyncio.CancelledError, so ``except Exception:`` lets it through;
    catch it by name to clean up, then let it go."""


class ParseError(DidNotRun):
    """The message could not be decoded."""
    code = -32700


class InvalidRequest(DidNotRun):
    """The message decoded but is not a valid request."""
    code = -32600


class ToolNotFound(DidNotRun):
    """No tool with the requested name is loaded."""
    code = -32601


class InvalidParams(DidNotRun):
    """The arguments do not match the tool's signature."""
    code = -32602


class InternalError(BridgeError):
    """zbridge failed to carry out an otherwise valid call."""
    code = -32603


class ToolError(BridgeError):
    """The tool raised. ``data`` holds ``type``, ``message`` and ``traceback``."""
    code = -32000

    @property
    def type(self) -> str | None:
        return self.data.get("type") if isinstance(self.data, dict) else None

    @property
    def traceback(self) -> str | None:
        return self.data.get("traceback") if isinstance(self.data, dict) else None


class CallTimeout(MayHaveRun, TimeoutError):
    """The call's deadline passed before a reply arrived."""
    code = -32001


class WorkerLost(MayHaveRun):
    """The daemon running the call died or was killed; the call may have run."""
    code = -32002


class Overloaded(DidNotRun):
    """The hub's queue is full; the call was not accepted and did not run."""
    code = -32003


class PoolUnavailable(DidNotRun):
    """No daemon can serve the call; the call did not run."""
    code = -32004


class Cancelled(MayHaveRun):
    """The call was cancelled."""
    code = -32005


class ConnectionLost(MayHaveRun):
    """The connection to the hub dropped while the call was in flight (for example after
    a frame over the hub's max_message_size); the call may have run."""
    code = -32006


class ReloadFailed(BridgeError):
    """``reload()`` was aborted: the first daemon with the new tools did not start (the
    message names why; ``data.cause`` is ``load_failed`` or ``start_failed``, or ``closing``
    when the hub stopped first). The daemons already running keep serving their old code."""
    code = -32007


_BY_CODE: dict[int, type[BridgeError]] = {
    cls.code: cls
    for cls in (ParseError, InvalidRequest, ToolNotFound, InvalidParams, InternalError,
                ToolError, CallTimeout, WorkerLost, Overloaded, PoolUnavailable, Cancelled,
                ConnectionLost, ReloadFailed)
}


def error_class_for(code: int) -> type[BridgeError]:
    """The error class for a JSON-RPC code; unknown codes map to the root."""
    return _BY_CODE.get(code, BridgeError)


def error_from_wire(obj: Any) -> BridgeError:
    """Rebuild an error from a JSON-RPC error object, tolerating malformed ones."""
    if not isinstance(obj, dict):
        return InternalError(f"malformed error object: {obj!r}"[:500])
    code = obj.get("code")
    message = obj.get("message")
    cls = error_class_for(code) if isinstance(code, int) else BridgeError
    err = cls(message if isinstance(message, str) else repr(message), obj.get("data"))
    if cls is BridgeError and isinstance(code, int):
        err.code = code
    return err
