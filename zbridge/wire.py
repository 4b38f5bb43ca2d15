"""How a message travels: its first frame (header and body, ``protocol``), then up to
MAX_BUFFERS buffer frames (large arrays and bytes out of band, ``codec.pack_value``).

* **On zmq** each frame is one zmq frame, "more" set on all but the last (``send`` /
  ``recv_buffers``). Buffer frames are sent without a copy and received as views.
* **On a byte stream** (a daemon's channel, the fallback's pipe) each frame follows a
  4-byte big-endian prefix: bit 31 set when another frame of the same message follows
  (zmq's "more"), bits 0-30 the frame's length (``chunks`` / ``write`` / ``read``, and
  ``Channel`` for a socket).

One threshold, ``SMALL`` (64 KiB, the protocol's out-of-band threshold): a frame below it
is copied (cheaper than zero-copy bookkeeping) and read in one piece; a larger one is
handed to zmq by reference and read into one preallocated buffer.

This module does not import zmq: the pipe daemon uses the stream half and must start fast.
"""

from __future__ import annotations

import os
import socket
import struct
import time

from .codec import MAX_BUFFERS, OOB_THRESHOLD
from .protocol import body_of, message_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO, Protocol, Sequence

    class Readable(Protocol):
        def read(self, n: int, /) -> bytes: ...

SMALL = OOB_THRESHOLD
LENGTH = struct.Struct(">I")
MORE = 0x8000_0000   # in a length prefix: another frame of this message follows
_SNDMORE = 2         # zmq.SNDMORE (libzmq's ABI), so this module needs no zmq import
_WAITALL = socket.MSG_WAITALL
_DONTWAIT = socket.MSG_DONTWAIT
_clock = time.perf_counter
_yield = os.sched_yield
LARGE_TIMEOUT = 5.0    # seconds a large message may pause between two reads


def oversized(frame: bytes, buffers: Sequence[Any], limit: int) -> int | None:
    """The bytes of a message's body and buffer frames together when over ``limit`` (what
    every receiver refuses; it also keeps each frame under libzmq's per-frame MAXMSGSIZE),
    or None."""
    size = message_size(body_of(frame), buffers)
    return size if size > limit else None


# --- zmq ------------------------------------------------------------------------------------

def send(sock: Any, frame: bytes, buffers: Sequence[Any] = (), flags: int = 0) -> None:
    """``frame`` then its ``buffers`` on a zmq socket, each buffer without a copy (zmq holds
    a reference until it is on the wire). No buffers: one plain send."""
    if not buffers:
        sock.send(frame, flags, copy=len(frame) < SMALL)
        return
    sock.send(frame, flags | _SNDMORE, copy=len(frame) < SMALL)
    last = len(buffers) - 1
    for i, buffer in enumerate(buffers):
        sock.send(buffer, flags if i == last else flags | _SNDMORE, copy=False)


def recv_buffers(sock: Any) -> list[memoryview]:
    """After a message's first frame on a blocking zmq socket: its buffer frames as views
    over the received zmq frames (no copy; a view keeps its frame alive). Frames beyond
    MAX_BUFFERS are read and dropped, so the socket stays in step; a reference to one of
    them fails to decode."""
    buffers: list[memoryview] = []
    while sock.rcvmore:
        part = sock.recv(copy=False)
        if len(buffers) < MAX_BUFFERS:
            buffers.append(part.buffer)
    return buffers


# --- byte streams ---------------------------------------------------------------------------

def chunks(frame: bytes, buffers: Sequence[Any] = ()) -> list[Any]:
    """What to write for a message, in order: prefixes and frames (buffers not copied)."""
    if not buffers:
        return [LENGTH.pack(len(frame)) + frame]
    out: list[Any] = [LENGTH.pack(len(frame) | MORE), frame]
    last = len(buffers) - 1
    for i, buffer in enumerate(buffers):
        view = memoryview(buffer).cast("B")
        out += [LENGTH.pack(view.nbytes | (MORE if i < last else 0)), view]
    return out


def write(out: BinaryIO, frame: bytes, buffers: Sequence[Any] = ()) -> None:
    """One message on a file (a pipe), then flush."""
    for chunk in chunks(frame, buffers):
        out.write(chunk)
    out.flush()


def read(inp: Readable, max_size: int) -> tuple[bytes, list[bytes]] | None:
    """The next message from a file (its frame and buffer frames), None at a clean EOF; a
    short read, frames over ``max_size`` bytes in all or more than MAX_BUFFERS buffer
    frames is an error (EOFError, ValueError), raised before the frame that would pass the
    limit is read."""
    first = _read_frame(inp, max_size, at_start=True)
    if first is None:
        return None
    frame, more = first
    buffers: list[bytes] = []
    left = max_size - len(frame)
    while more:
        if len(buffers) == MAX_BUFFERS:
            raise ValueError(f"message of more than {MAX_BUFFERS} buffer frames")
        part = _read_frame(inp, left, at_start=False)
        assert part is not None  # EOF inside a message raises
        buffer, more = part
        buffers.append(buffer)
        left -= len(buffer)
    return frame, buffers


def _read_frame(inp: Readable, max_size: int, at_start: bool) -> tuple[bytes, bool] | None:
    head = inp.read(LENGTH.size)
    if not head and at_start:
        return None
    if len(head) < LENGTH.size:
        raise EOFError("stream closed inside a length prefix")
    (prefix,) = LENGTH.unpack(head)
    n = prefix & ~MORE
    if n > max_size:
        raise ValueError(f"frame of {n} bytes exceeds the {max_size}-byte limit")
    body = inp.read(n)
    if len(body) < n:
        raise EOFError("stream closed inside a frame")
    return body, bool(prefix & MORE)


class Channel:
    """Messages on a connected stream socket (a daemon's channel: a ``socketpair`` end).

    ``send`` writes a small message with one system call; ``recv`` reads a small message
    with one (it asks for up to SMALL bytes and keeps what belongs to the next message),
    a large frame straight into one buffer of its size. The socket stays blocking; a
    timeout is the kernel's (``SO_RCVTIMEO``, see ``recv_timeout``): then ``recv`` raises
    ``TimeoutError`` and nothing is lost (a partly read message waits for the next call).
    ``flags`` (``socket.MSG_DONTWAIT``) lets an event loop read without blocking.
    """

    __slots__ = ("sock", "max_size", "_pending", "_timeout")

    def __init__(self, sock: socket.socket, max_size: int) -> None:
        self.sock = sock
        self.max_size = max_size
        self._pending = b""
        self._timeout = -1.0

    def fileno(self) -> int:
        return self.sock.fileno()

    def pending(self) -> bool:
        """Whether bytes of a next message were already read (a poll would not see them)."""
        return bool(self._pending)

    def send(self, frame: bytes, buffers: Sequence[Any] = ()) -> None:
        """One message; OSError if the peer is gone (the channel is then unusable)."""
        if not buffers:
            self.sock.sendall(LENGTH.pack(len(frame)) + frame)
            return
        for chunk in chunks(frame, buffers):
            self.sock.sendall(chunk)

    def recv_timeout(self, seconds: float) -> None:
        """How long one ``recv`` may block before TimeoutError (the kernel's SO_RCVTIMEO,
        so a wait costs no poll); at least a millisecond (zero would mean forever)."""
        if seconds != self._timeout:
            self._timeout = seconds
            self._set_timeout(max(0.001, seconds))

    def _set_timeout(self, seconds: float) -> None:
        whole = int(seconds)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                             struct.pack("ll", whole, int((seconds - whole) * 1e6)))

    def recv(self, flags: int = 0) -> tuple[bytes, list[Any]]:
        """The next message; EOFError when the peer is gone (or sent garbage: the stream
        cannot be trusted after it), TimeoutError (or BlockingIOError with MSG_DONTWAIT)
        when none arrived in time."""
        data = self._pending
        if not data:  # the usual case: one system call reads a whole small message
            try:
                data = self.sock.recv(SMALL, flags)
            except (BlockingIOError, InterruptedError):
                if flags:
                    raise
                raise TimeoutError("no message in time") from None
            except OSError as exc:  # reset: the peer died with unread data
                raise EOFError(f"channel broken: {exc}") from None
            if not data:
                raise EOFError("channel closed")
        if len(data) < 4:
            data = self._fill(data, 4, flags)
        (prefix,) = LENGTH.unpack_from(data)
        n = prefix & ~MORE
        if n > self.max_size:
            self._pending = b""
            raise EOFError(f"frame of {n} bytes exceeds the {self.max_size}-byte limit")
        if prefix & MORE or n > SMALL:
            return self._recv_large(data)
        if n + 4 > len(data):
            data = self._fill(data, n + 4, flags)
        self._pending = data[n + 4:]
        return data[4:n + 4], []

    def recv_soon(self, seconds: float) -> tuple[bytes, list[Any]] | None:
        """The next message if it arrives within ``seconds`` (a short spin: no sleep, so
        no wake-up to pay, which on a virtual machine costs more than a small call), else
        None."""
        end = _clock() + seconds
        while True:
            try:
                return self.recv(_DONTWAIT)
            except BlockingIOError:
                if _clock() >= end:
                    return None
                _yield()  # the peer may be waiting for this very CPU

    def _fill(self, data: bytes, want: int, flags: int) -> bytes:
        """``data`` and more read until it holds ``want`` bytes; what was read is kept
        (``_pending``) if the wait ends first."""
        while len(data) < want:
            try:
                more = self.sock.recv(max(SMALL, want - len(data)), flags)
            except (BlockingIOError, InterruptedError):
                self._pending = data
                if flags:
                    raise
                raise TimeoutError("no message in time") from None
            except OSError as exc:  # reset: the peer died with unread data
                self._pending = b""
                raise EOFError(f"channel broken: {exc}") from None
            except BaseException:
                self._pending = data
                raise
            if not more:
                self._pending = b""
                raise EOFError("channel closed")
            data += more
        return data

    def _recv_large(self, data: bytes) -> tuple[bytes, list[Any]]:
        """A message with a large frame or buffer frames: read whole, blocking, with a
        generous timeout per read (the sender writes it at once, but may be descheduled)."""
        self._pending = b""
        reader = _Buffered(self.sock, data)
        self._set_timeout(LARGE_TIMEOUT)
        try:
            message = read(reader, self.max_size)
        except (OSError, ValueError) as exc:  # timed out, reset, or a bad length
            raise EOFError(f"channel broken inside a message: {exc}") from None
        finally:  # back to the caller's timeout (0: none)
            self._set_timeout(max(0.001, self._timeout) if self._timeout > 0 else 0.0)
        if message is None:
            raise EOFError("channel closed")
        self._pending = reader.rest()
        return message[0], list(message[1])

    def close(self) -> None:
        self.sock.close()


class _Buffered:
    """``read(n)`` over what a channel already holds, then its socket (exactly n bytes,
    fewer only at EOF); large reads go into one buffer of their size."""

    def __init__(self, sock: socket.socket, head: bytes) -> None:
        self.sock, self.head = sock, head

    def read(self, n: int) -> bytes:
        if self.head:
            take, self.head = self.head[:n], self.head[n:]
            return take if len(take) == n else take + self._socket_read(n - len(take))
        return self._socket_read(n)

    def _socket_read(self, n: int) -> bytes:
        buffer = bytearray(n)  # filled in place: no quadratic joins of partial reads
        view, got = memoryview(buffer), 0
        while got < n:
            count = self.sock.recv_into(view[got:], n - got, _WAITALL)
            if not count:
                return bytes(view[:got])
            got += count
        return buffer  # type: ignore[return-value]  # bytes-like, and no copy of a large frame

    def rest(self) -> bytes:
        return self.head
