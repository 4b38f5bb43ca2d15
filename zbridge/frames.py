"""A message on a blocking zmq socket: its first frame, then up to MAX_BUFFERS buffer frames
(large arrays and bytes out of band, see ``codec.pack_value``). Shared by the sync client
and the daemon; the asyncio client has its own twin of ``recv_buffers`` in ``aio``."""

from __future__ import annotations

from typing import Any, Sequence

import zmq

from .protocol import MAX_BUFFERS, OOB_THRESHOLD, body_of, message_size

_RCVMORE, _SNDMORE = int(zmq.RCVMORE), int(zmq.SNDMORE)


def recv_buffers(sock: zmq.Socket[Any]) -> list[memoryview]:
    """After a message's first frame: its buffer frames as memoryviews over the received
    zmq frames (no copy; a view keeps its frame alive). Frames beyond MAX_BUFFERS are read
    and dropped, so the socket stays in step; a reference to one of them fails to decode."""
    buffers: list[memoryview] = []
    while sock.getsockopt(_RCVMORE):
        part = sock.recv(copy=False)
        if len(buffers) < MAX_BUFFERS:
            buffers.append(part.buffer)
    return buffers


def send_message(sock: zmq.Socket[Any], frame: bytes, buffers: Sequence[Any] = (),
                 flags: int = 0) -> None:
    """``frame`` then its ``buffers``, each buffer sent without a copy (zmq holds a
    reference until it is on the wire). No buffers: one plain send, as before."""
    if not buffers:
        sock.send(frame, flags, copy=len(frame) < OOB_THRESHOLD)
        return
    sock.send(frame, flags | _SNDMORE, copy=len(frame) < OOB_THRESHOLD)
    last = len(buffers) - 1
    for i, buffer in enumerate(buffers):
        sock.send(buffer, flags if i == last else flags | _SNDMORE, copy=False)


def oversized(frame: bytes, buffers: Sequence[Any], limit: int) -> int | None:
    """The bytes of a message's body and buffer frames together when over ``limit`` (what
    every receiver refuses; it also keeps each frame under libzmq's per-frame MAXMSGSIZE),
    or None."""
    size = message_size(body_of(frame), buffers)
    return size if size > limit else None
