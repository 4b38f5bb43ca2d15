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

from zbridge.errors import BridgeError
from zbridge.execution import Executor, as_items
from zbridge.jsonrpc import STREAM_METHOD, Call, answer, encode_replies, parse_line, partial_line, resolve_stream_call

TYPE_CHECKING = False  # typing and inspect stay off the pipe's start-up path
if TYPE_CHECKING:
    from typing import Any, BinaryIO, Callable

    Emit = Callable[[bytes], None]


def _stream(executor: Executor, item: Call, emit: Emit) -> dict[str, Any]:
    """Run a ``zbridge.stream`` request: one notification per item, then the count."""
    tool, args = resolve_stream_call(item.params)
    result = executor.run(tool, args, stream=True)
    items = as_items(result)
    count = 0
    try:
        for value in items:
            if not item.notification:  # nobody to tie the items to: run, drop them
                emit(partial_line(item.id, count, value))
            count += 1
    finally:
        items.close()
    return {"items": count}


def _run(executor: Executor | BridgeError, item: Call, emit: Emit) -> Any:
    if isinstance(executor, BridgeError):  # tools failed to load: every call says why
        raise executor
    if item.method == STREAM_METHOD:
        return _stream(executor, item, emit)
    return executor.run(item.method, item.params)


def handle_line(executor: Executor | BridgeError, line: bytes, emit: Emit = lambda _: None) -> bytes | None:
    """The reply line for one input line, or None when nothing is to be written; streamed
    items go out through ``emit`` as they come."""
    items, is_batch = parse_line(line)
    return encode_replies([answer(item, lambda call: _run(executor, call, emit)) for item in items],
                          is_batch)


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
