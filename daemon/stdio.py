"""The pipe protocol: one JSON-RPC 2.0 line in, one line out (nothing for notifications)."""

from __future__ import annotations

import sys
from typing import Any, BinaryIO

from zbridge.errors import BridgeError, InternalError
from zbridge.execution import Executor
from zbridge.jsonrpc import Call, Invalid, encode_line, error_object, parse_line, result_object


def _reply(executor: Executor | BridgeError, item: Call | Invalid) -> dict | None:
    if isinstance(item, Invalid):
        return error_object(item.id, item.error)
    try:
        if isinstance(executor, BridgeError):  # tools failed to load: every call says why
            raise executor
        result = executor.run(item.method, item.params)
        reply = result_object(item.id, result)
    except BridgeError as exc:
        reply = error_object(item.id, exc)
    return None if item.notification else reply


def _encode(obj: Any) -> bytes:
    try:
        return encode_line(obj)
    except (TypeError, ValueError, RecursionError) as exc:
        return encode_line(error_object(obj.get("id"), InternalError(
            f"result cannot be encoded as JSON: {type(exc).__name__}: {exc}"[:500])))


def handle_line(executor: Executor | BridgeError, line: bytes) -> bytes | None:
    """The output for one input line, or None when nothing is to be written."""
    items, is_batch = parse_line(line)
    replies = [r for r in (_reply(executor, item) for item in items) if r is not None]
    if not replies:
        return None
    if not is_batch:
        return _encode(replies[0])
    return b"[" + b",".join(_encode(r).rstrip(b"\n") for r in replies) + b"]\n"


def serve(executor: Executor | BridgeError, out: BinaryIO, inp: BinaryIO | None = None) -> None:
    """Serve until EOF on stdin. Lines may be any length."""
    inp = inp or sys.stdin.buffer
    while True:
        line = inp.readline()
        if not line:
            return
        if not line.strip():
            continue
        reply = handle_line(executor, line)
        if reply is not None:
            out.write(reply)
            out.flush()
