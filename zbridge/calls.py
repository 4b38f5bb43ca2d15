"""Client logic shared by the sync and asyncio twins: building requests, reading replies,
setting up a DEALER. No I/O happens here."""

from __future__ import annotations

from typing import Any

import zmq

from .config import Settings
from .errors import BridgeError, InternalError, InvalidParams, InvalidRequest, error_from_wire
from .protocol import (Kind, MAX_TIMEOUT_MS, decode_reply_body, encode_request, read_header)
from .security import make_client

HUB_GRACE = 1.0       # how long past a deadline to wait for the hub's own CallTimeout
POLL_SLICE_MS = 250   # how often a waiting call notices close()


def build_request(settings: Settings, request_id: int, tool: str, args: Any, timeout: float,
                  idempotent: bool) -> bytes:
    """The request frame, or InvalidRequest/InvalidParams before anything is sent."""
    if not isinstance(tool, str) or not tool:
        raise InvalidRequest("tool name must be a non-empty string")
    if args is not None and not isinstance(args, (list, tuple, dict)):
        raise InvalidParams("args must be a list, a tuple, a dict or None")
    timeout_ms = max(1, min(MAX_TIMEOUT_MS, int(timeout * 1000)))
    try:
        frame = encode_request(request_id, tool, args, timeout_ms=timeout_ms, idempotent=idempotent)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidParams(f"arguments cannot be encoded: {exc}") from None
    if len(frame) > settings.max_message_size:
        raise InvalidRequest(f"request is {len(frame)} bytes, over max_message_size="
                             f"{settings.max_message_size}")
    return frame


def reply_id(reply: bytes) -> int | None:
    """The request id a REPLY answers, or None for anything else."""
    try:
        header = read_header(reply)
    except BridgeError:
        return None
    return header.id if header.kind is Kind.REPLY else None


def result_of(reply: bytes, max_size: int) -> Any:
    """The result in a REPLY, or its error raised."""
    try:
        body = decode_reply_body(reply, max_size=max_size)
    except BridgeError as exc:
        raise InternalError(f"undecodable reply: {exc}") from None
    if "error" in body:
        raise error_from_wire(body["error"])
    return body["result"]


def configure_dealer(sock: zmq.Socket, settings: Settings, curve: Any, connect_timeout: float) -> None:
    sock.linger = 0
    sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue a request for a hub we are not connected to
    sock.setsockopt(zmq.SNDTIMEO, int(connect_timeout * 1000))
    sock.setsockopt(zmq.RCVTIMEO, POLL_SLICE_MS)  # lets a waiting call notice close()
    sock.setsockopt(zmq.MAXMSGSIZE, settings.max_message_size + 4096)
    if curve:
        make_client(sock, *curve)
