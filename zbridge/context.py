"""What a tool can know about the call it is serving: ``zbridge.current_call()``.

The daemon sets it around each call (``zbridge_daemon.worker``), in a ContextVar, so a
tool (or a thread/task it copies its context to) can join the caller's trace and log with
the caller's request id. Outside a call, or on the one-shot pipe path, it is None.
Kept free of heavy imports: tool modules and pipe daemons import zbridge.
"""

from __future__ import annotations

from contextvars import ContextVar, Token


class CallInfo:
    """The call being served; read-only."""

    __slots__ = ("request_id", "tool", "deadline", "traceparent")
    request_id: int
    tool: str
    deadline: float | None
    traceparent: str | None

    def __init__(self, request_id: int, tool: str, deadline: float | None, traceparent: str | None) -> None:
        set_ = object.__setattr__
        set_(self, "request_id", request_id)   # the caller's id, echoed in its reply
        set_(self, "tool", tool)
        set_(self, "deadline", deadline)       # unix time the caller stops waiting, if it said
        set_(self, "traceparent", traceparent)  # the caller's W3C traceparent, if it sent one

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("CallInfo is read-only")

    def __repr__(self) -> str:
        return (f"CallInfo(request_id={self.request_id}, tool={self.tool!r}, "
                f"deadline={self.deadline!r}, traceparent={self.traceparent!r})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CallInfo) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


_CURRENT: ContextVar[CallInfo | None] = ContextVar("zbridge_current_call", default=None)


def current_call() -> CallInfo | None:
    """The call this tool is serving (request id, tool, deadline, traceparent), or None."""
    return _CURRENT.get()


def begin(info: CallInfo) -> Token[CallInfo | None]:
    return _CURRENT.set(info)


def end(token: Token[CallInfo | None]) -> None:
    _CURRENT.reset(token)
