"""Many calls in flight on one socket: the engine behind ``call_many`` and ``map``.

Requests go out in a sliding window (so a long list does not overflow the hub's queue), the
hub spreads them over idle daemons, and replies are matched back by request id.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import zmq

from .errors import BridgeError, CallTimeout, PoolUnavailable
from .frames import recv_buffers, send_message
from .protocol import Header, Kind, read_header

WINDOW = 64


def pipeline(sock: zmq.Socket[Any], frames: Sequence[tuple[bytes, Sequence[Any]]], deadline: float,
             decode: Callable[[bytes, Sequence[Any]], Any], window: int = WINDOW,
             lost: Callable[[], BridgeError | None] = lambda: None) -> list[Any]:
    """Send every request (a frame and its buffer frames) and wait for all replies: a
    result or a BridgeError per request, in order (``decode`` gets a reply and its buffer
    frames). ``lost`` says (as an error) whether the connection dropped, failing what is
    in flight."""
    ids = [read_header(f).id for f, _ in frames]
    wanted = set(ids)
    outcomes: dict[int, Any] = {}
    sent = 0
    while len(outcomes) < len(frames):
        while sent < len(frames) and sent - len(outcomes) < window:
            try:
                send_message(sock, *frames[sent])
            except zmq.Again:  # the hub is unreachable: the rest never left
                for id in ids[sent:]:
                    outcomes[id] = PoolUnavailable("hub not reachable (the call was not sent)",
                                                   {"cause": "unreachable"})
                sent = len(frames)
                break
            sent += 1
        if len(outcomes) == len(frames):
            break
        try:
            reply = sock.recv()
            buffers = recv_buffers(sock)
        except zmq.Again:
            if time.monotonic() >= deadline:
                for id in wanted - outcomes.keys():
                    outcomes[id] = CallTimeout("no reply from the hub before the deadline")
            elif (error := lost()) is not None:  # what was sent is lost; the rest may still go
                for id in set(ids[:sent]) - outcomes.keys():
                    outcomes[id] = error
            continue
        header = _header(reply)
        if header is None or header.id not in wanted or header.id in outcomes:
            continue
        try:
            outcomes[header.id] = decode(reply, buffers)
        except BridgeError as exc:
            outcomes[header.id] = exc
    return [outcomes[id] for id in ids]


def _header(reply: bytes) -> Header | None:
    try:
        header = read_header(reply)
    except BridgeError:
        return None
    return header if header.kind is Kind.REPLY else None
