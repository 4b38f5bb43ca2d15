"""Sending a generator tool's items as PARTIAL messages, paced by the caller's credit.

The daemon sends at most ``window`` items ahead of what the caller has consumed; then it
waits on its data socket for a CREDIT naming this request. A slow consumer therefore pauses
the tool itself (inside its ``yield``), and neither side's memory grows with the stream.
Between items, and while it waits, it also reads the hub's control messages: a CANCEL for
this stream (its caller timed out, cancelled or vanished) ends it at once, so an abandoned
stream leaves a warm daemon behind instead of one the hub has to kill.
"""

from __future__ import annotations

from typing import Any, Generator

import zmq

from zbridge.errors import BridgeError, Cancelled, InternalError, WorkerLost
from zbridge.wire import oversized, send
from zbridge.protocol import (
    DEFAULT_WINDOW,
    Kind,
    Request,
    decode_credit,
    encode_error,
    encode_partial,
    encode_result,
    read_header,
)


class Stopping(Exception):
    """The hub told this daemon to exit while it was streaming."""


class StreamCancelled(Exception):
    """The hub told this daemon that nobody consumes the stream any more."""


def send_stream(sock: zmq.Socket[Any], request: Request, items: Generator[Any, None, None],
                max_message: int) -> tuple[bytes, bool]:
    """Stream every item; returns (final reply frame, whether the hub asked us to stop)."""
    credits, sent = request.window or DEFAULT_WINDOW, 0
    try:
        for item in items:
            credits += _control(sock, request.id, block=credits == 0)
            while credits == 0:
                credits += _control(sock, request.id, block=True)
            frame, buffers = _partial(request, item, sent, max_message)
            send(sock, frame, buffers)
            credits -= 1
            sent += 1
    except BridgeError as exc:
        return encode_error(request.id, exc), False
    except StreamCancelled:
        return encode_error(request.id, Cancelled("stream abandoned by its caller")), False
    except Stopping:
        return encode_error(request.id, WorkerLost("daemon stopping mid-stream: the tool ran")), True
    finally:
        items.close()  # runs the tool's own finally blocks if we stopped early
    return encode_result(request.id, {"items": sent}), False


def _partial(request: Request, item: object, seq: int, max_message: int) -> tuple[bytes, list[Any]]:
    """The PARTIAL frame for an item and its buffer frames (large arrays and bytes)."""
    buffers: list[Any] = []
    try:
        frame = encode_partial(request.id, item, oob=buffers)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InternalError(f"item {seq} of {request.method!r} cannot be encoded: "
                            f"{type(exc).__name__}: {exc}"[:500]) from None
    size = oversized(frame, buffers, max_message)
    if size is not None:
        raise InternalError(f"item {seq} of {request.method!r} is {size} bytes, "
                            f"over the {max_message}-byte limit")
    return frame, buffers


def _control(sock: zmq.Socket[Any], request_id: int, block: bool) -> int:
    """Read what the hub sent (waiting for one message if ``block``); returns new credit.
    Raises StreamCancelled or Stopping when told so."""
    credit = 0
    flags = 0 if block else zmq.NOBLOCK
    while True:
        if flags and not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            return credit  # cheaper than a failed recv per item
        try:
            frame = sock.recv(flags)
        except zmq.Again:
            return credit
        flags = zmq.NOBLOCK  # after the first, take only what is already there
        try:
            header = read_header(frame)
        except BridgeError:
            continue
        if header.kind is Kind.DISCONNECT:
            raise Stopping()
        if header.id != request_id:
            continue  # leftovers for an earlier call
        if header.kind is Kind.CANCEL:
            raise StreamCancelled()
        if header.kind is Kind.CREDIT:
            try:
                credit += decode_credit(frame)
            except BridgeError:
                continue
