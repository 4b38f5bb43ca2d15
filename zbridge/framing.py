"""Messages as length-prefixed frames on a byte stream (a pipe, a Unix socket): the pool's
own frames exactly as they travel on zmq (the protocol frame, then any buffer frames),
each after a 4-byte big-endian prefix: bit 31 set when another frame of the same message
follows (zmq's "more"), bits 0-30 the frame's length. Used by the pipe fallback
(``zbridge-daemon --stdio-msgpack``) and by the embedded direct path's Unix sockets."""

from __future__ import annotations

import socket
import struct

from .protocol import MAX_BUFFERS
from .protocol import message_size as message_size  # re-exported: one definition

_WAITALL = socket.MSG_WAITALL
SMALL = 64 * 1024  # frames up to this size are read into a bytes object at once
# Messages above this go through zmq (the hub, zero-copy) rather than a direct Unix socket:
# there a large message moves in socket-buffer-sized steps between two busy threads.
STREAM_MAX = 1024 * 1024


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO, Protocol, Sequence

    class Readable(Protocol):
        def read(self, n: int, /) -> bytes: ...

LENGTH = struct.Struct(">I")
MORE = 0x8000_0000  # in a length prefix: another frame of this message follows


def message_chunks(frame: bytes, buffers: Sequence[Any] = ()) -> list[Any]:
    """What to write for a message, in order: prefixes and frames (buffers not copied)."""
    chunks: list[Any] = [LENGTH.pack(len(frame) | (MORE if buffers else 0)), frame]
    for i, buffer in enumerate(buffers):
        view = memoryview(buffer).cast("B")
        chunks += [LENGTH.pack(view.nbytes | (MORE if i < len(buffers) - 1 else 0)), view]
    return chunks


def write_frame(out: BinaryIO, frame: bytes, buffers: Sequence[Any] = ()) -> None:
    """One message: ``frame`` and its buffer frames."""
    if not buffers:
        out.write(LENGTH.pack(len(frame)) + frame)
    else:
        for chunk in message_chunks(frame, buffers):
            out.write(chunk)
    out.flush()


def read_message(inp: Readable, max_size: int) -> tuple[bytes, list[bytes]] | None:
    """The next message (its frame and buffer frames), None at a clean EOF; a short read,
    frames over ``max_size`` bytes in all or more than MAX_BUFFERS buffer frames is an
    error, raised before the frame that would pass the limit is read."""
    first = _read_one(inp, max_size, at_start=True)
    if first is None:
        return None
    frame, more = first
    buffers: list[bytes] = []
    left = max_size - len(frame)
    while more:
        if len(buffers) == MAX_BUFFERS:
            raise ValueError(f"message of more than {MAX_BUFFERS} buffer frames")
        part = _read_one(inp, left, at_start=False)
        assert part is not None  # EOF inside a message raises
        buffer, more = part
        buffers.append(buffer)
        left -= len(buffer)
    return frame, buffers


def read_frame(inp: Readable, max_size: int) -> bytes | None:
    """The next message's first frame (see ``read_message``)."""
    message = read_message(inp, max_size)
    return None if message is None else message[0]


def _read_one(inp: Readable, max_size: int, at_start: bool) -> tuple[bytes, bool] | None:
    head = inp.read(LENGTH.size)
    if not head and at_start:
        return None
    if len(head) < LENGTH.size:
        raise EOFError("pipe closed inside a length prefix")
    (prefix,) = LENGTH.unpack(head)
    size = prefix & ~MORE
    if size > max_size:
        raise ValueError(f"frame of {size} bytes exceeds the {max_size}-byte limit")
    body = inp.read(size)
    if len(body) < size:
        raise EOFError("pipe closed inside a frame")
    return body, bool(prefix & MORE)


class SocketReader:
    """A stream socket as ``read_message`` reads it: ``read(n)`` returns exactly n bytes,
    or fewer only at EOF."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock

    def read(self, n: int) -> bytes:
        if n <= SMALL:
            data: bytes = self.sock.recv(n, _WAITALL)
            while 0 < len(data) < n:  # a signal (or a socket with a timeout) cuts it short
                more = self.sock.recv(n - len(data), _WAITALL)
                if not more:
                    break
                data += more
            return data
        buffer = bytearray(n)  # filled in place: no quadratic joins of partial reads
        view, got = memoryview(buffer), 0
        while got < n:
            count = self.sock.recv_into(view[got:], n - got, _WAITALL)
            if not count:
                return bytes(view[:got])  # EOF inside a frame: the caller sees a short read
            got += count
        return buffer  # type: ignore[return-value]  # bytes-like, and no copy of a large frame


def send_message(sock: Any, frame: bytes, buffers: Sequence[Any] = ()) -> None:
    """One message on a stream socket; buffer frames are not copied."""
    if not buffers:
        sock.sendall(LENGTH.pack(len(frame)) + frame)
        return
    for chunk in message_chunks(frame, buffers):
        sock.sendall(chunk)
