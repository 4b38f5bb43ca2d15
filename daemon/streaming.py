"""Sending a generator tool's items as PARTIAL messages, paced by the caller's credit.

The daemon sends at most ``window`` items ahead of what the caller has consumed; then it
waits on its data socket for a CREDIT naming this request. A slow consumer therefore pauses
the tool itself (inside its ``yield``), and neither side's memory grows with the stream.
"""

from __future__ import annotations

from typing import Iterator

import zmq

from zbridge.errors import BridgeError, InternalError, PoolUnavailable
from zbridge.protocol import (Kind, Request, decode_credit, encode_error, encode_partial,
                              encode_result, read_header)

DEFAULT_WINDOW = 64


class Stopping(Exception):
    """The hub told this daemon to exit while it was streaming."""


def send_stream(sock: zmq.Socket, request: Request, items: Iterator, max_message: int) -> tuple[bytes, bool]:
    """Stream every item; returns (final reply frame, whether the hub asked us to stop)."""
    credits, sent = request.window or DEFAULT_WINDOW, 0
    try:
        for item in items:
            while credits == 0:
                credits += _wait_for_credit(sock, request.id)
            sock.send(_partial(request, item, sent, max_message))
            credits -= 1
            sent += 1
    except BridgeError as exc:
        return encode_error(request.id, exc), False
    except Stopping:
        return encode_error(request.id, PoolUnavailable("daemon stopping mid-stream")), True
    finally:
        items.close()  # runs the tool's own finally blocks if we stopped early
    return encode_result(request.id, {"items": sent}), False


def _partial(request: Request, item: object, seq: int, max_message: int) -> bytes:
    try:
        frame = encode_partial(request.id, item)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InternalError(f"item {seq} of {request.method!r} cannot be encoded: "
                            f"{type(exc).__name__}: {exc}"[:500]) from None
    if len(frame) > max_message:
        raise InternalError(f"item {seq} of {request.method!r} is {len(frame)} bytes, over the "
                            f"{max_message}-byte limit")
    return frame


def _wait_for_credit(sock: zmq.Socket, request_id: int) -> int:
    while True:
        frame = sock.recv()
        try:
            header = read_header(frame)
        except BridgeError:
            continue
        if header.kind is Kind.DISCONNECT:
            raise Stopping()
        if header.kind is Kind.CREDIT and header.id == request_id:
            try:
                return decode_credit(frame)
            except BridgeError:
                continue
