"""The pipe protocol: one JSON-RPC 2.0 line in, one line out (nothing for notifications).

A plain request always gets exactly one line, also for a generator tool (its items as a
list), so a client reading one line per request never drifts. Streaming is opt-in: method
``zbridge.stream`` with ``{"tool": NAME, "args": ...}`` writes each item at once as a
notification ``{"jsonrpc":"2.0","method":"zbridge.partial","params":{"id":ID,"seq":N,"item":...}}``,
then the request's own reply ``{"result": {"items": count}}`` (or the error that ended it);
a tool that is not a generator streams its result as one item. The pipe itself paces the
tool: when the reader stops reading, the write blocks.
"""

from __future__ import annotations

import sys

from zbridge.errors import BridgeError, InternalError
from zbridge.execution import Executor, as_items
from zbridge.jsonrpc import (
    PARTIAL_METHOD,
    STREAM_METHOD,
    Call,
    Invalid,
    encode_line,
    error_object,
    notification_object,
    parse_line,
    resolve_stream_call,
    result_object,
)

TYPE_CHECKING = False  # typing and inspect stay off the pipe's start-up path
if TYPE_CHECKING:
    from typing import Any, BinaryIO, Callable

    Emit = Callable[[bytes], None]



def _partial_line(id: Any, seq: int, value: Any) -> bytes:
    try:
        return encode_line(notification_object(PARTIAL_METHOD, {"id": id, "seq": seq, "item": value}))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InternalError(f"item {seq} cannot be encoded as JSON: {exc}"[:500]) from None


def _stream(executor: Executor, item: Call, emit: Emit) -> dict[str, Any]:
    """Run a ``zbridge.stream`` request: one notification per item, then the count."""
    tool, args = resolve_stream_call(item.params)
    result = executor.run(tool, args, stream=True)
    items = as_items(result)
    count = 0
    try:
        for value in items:
            if not item.notification:  # nobody to tie the items to: run, drop them
                emit(_partial_line(item.id, count, value))
            count += 1
    finally:
        items.close()
    return {"items": count}


def _run(executor: Executor, item: Call, emit: Emit) -> Any:
    if item.method == STREAM_METHOD:
        return _stream(executor, item, emit)
    return executor.run(item.method, item.params)


def _reply(executor: Executor | BridgeError, item: Call | Invalid, emit: Emit) -> dict[str, Any] | None:
    if isinstance(item, Invalid):
        return error_object(item.id, item.error)
    try:
        if isinstance(executor, BridgeError):  # tools failed to load: every call says why
            raise executor
        reply = result_object(item.id, _run(executor, item, emit))
    except BridgeError as exc:
        reply = error_object(item.id, exc)
    return None if item.notification else reply


def _encode(obj: Any) -> bytes:
    try:
        return encode_line(obj)
    except (TypeError, ValueError, RecursionError) as exc:
        return encode_line(error_object(obj.get("id"), InternalError(
            f"result cannot be encoded as JSON: {type(exc).__name__}: {exc}"[:500])))


def handle_line(executor: Executor | BridgeError, line: bytes, emit: Emit = lambda _: None) -> bytes | None:
    """The reply line for one input line, or None when nothing is to be written; streamed
    items go out through ``emit`` as they come."""
    items, is_batch = parse_line(line)
    replies = [r for r in (_reply(executor, item, emit) for item in items) if r is not None]
    if not replies:
        return None
    if not is_batch:
        return _encode(replies[0])
    return b"[" + b",".join(_encode(r).rstrip(b"\n") for r in replies) + b"]\n"


def serve(executor: Executor | BridgeError, out: BinaryIO, inp: BinaryIO | None = None) -> None:
    """Serve until EOF on stdin. Lines may be any length."""
    inp = inp or sys.stdin.buffer

    def emit(data: bytes) -> None:
        out.write(data)
        out.flush()

    while True:
        line = inp.readline()
        if not line:
            return
        if not line.strip():
            continue
        reply = handle_line(executor, line, emit)
        if reply is not None:
            emit(reply)


def run(tools: tuple[str, ...] | list[str], out: BinaryIO, expose_tracebacks: bool) -> None:
    """Load the tools and serve; if they fail to load, every call is answered with why."""
    from .loading import executor_for
    serve(executor_for(tools, expose_tracebacks), out)
