"""Many calls in flight on one socket: the engine behind ``call_many`` and ``map``.

Requests go out in a sliding window (so a long list does not overflow the hub's queue), the
hub spreads them over idle daemons, and replies are matched back by request id.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import zmq

from .errors import BridgeError, CallTimeout, PoolUnavailable
from .wire import recv_buffers, send as send_message
from .protocol import Header, Kind, encode_cancel, read_header

WINDOW = 64


def pipeline(sock: zmq.Socket[Any], frames: Sequence[tuple[bytes, Sequence[Any]]], wait: float,
             decode: Callable[[bytes, Sequence[Any]], Any], window: int = WINDOW,
             lost: Callable[[], BridgeError | None] = lambda: None) -> list[Any]:
    """Send every request (a frame and its buffer frames) and wait for all replies: a
    result or a BridgeError per request, in order (``decode`` gets a reply and its buffer
    frames).

    At most ``window`` calls are at the hub at once; the rest wait here, and each call's
    ``wait`` (its timeout plus grace) starts when it is sent. A call whose wait runs out gets
    CallTimeout and a CANCEL. ``lost`` says (as an error) whether the connection dropped,
    failing what is in flight.
    """
    ids = [read_header(f).id for f, _ in frames]
    outcomes: dict[int, Any] = {}
    due: dict[int, float] = {}  # in flight: id -> when its wait runs out
    sent = 0
    while len(outcomes) < len(frames):
        while sent < len(frames) and len(due) < window:
            try:
                send_message(sock, *frames[sent])
            except zmq.Again:  # the hub is unreachable: the rest never left
                for id in ids[sent:]:
                    outcomes[id] = PoolUnavailable("hub not reachable (the call was not sent)",
                                                   {"cause": "unreachable"})
                sent = len(frames)
                break
            due[ids[sent]] = time.monotonic() + wait
            sent += 1
        if not due:
            break
        try:
            reply = sock.recv()
            buffers = recv_buffers(sock)
        except zmq.Again:
            _expire(sock, due, outcomes, lost())
            continue
        header = _header(reply)
        if header is None or header.id not in due:
            continue  # not ours, or already given up on
        del due[header.id]
        try:
            outcomes[header.id] = decode(reply, buffers)
        except BridgeError as exc:
            outcomes[header.id] = exc
    return [outcomes[id] for id in ids]


def _expire(sock: zmq.Socket[Any], due: dict[int, float], outcomes: dict[int, Any],
            error: BridgeError | None) -> None:
    """Fail what the dropped connection lost, or what waited past its time (and cancel it)."""
    now = time.monotonic()
    for id, until in list(due.items()):
        if error is None and now < until:
            continue
        del due[id]
        outcomes[id] = error or CallTimeout("no reply from the hub before the call's deadline")
        if error is None:
            try:
                sock.send(encode_cancel(id), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass


def _header(reply: bytes) -> Header | None:
    try:
        header = read_header(reply)
    except BridgeError:
        return None
    return header if header.kind is Kind.REPLY else None
