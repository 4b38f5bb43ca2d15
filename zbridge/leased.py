"""A served hub's local clients borrow daemons (issue 21): the client side of the lease desk
(``leasedesk.py``).

Each calling thread has its own connection to the desk (a Unix stream socket beside the
hub's ipc socket). A call sends its REQUEST there and waits for the broker's decision: a
LEASE, with the daemon's channel attached (the hub has written the request on it already,
unless the lease says the client sends it), or an ANSWER (a REPLY the broker made). With a
lease, the client reads the reply on the channel itself, in slices ending at its deadline
(it judges its own deadline, like a caller in the hub's process: ``direct.py``), reports
the reply to the desk (which frees the daemon) and closes its copy of the channel. A call
that stops waiting (its deadline, a cancel, Ctrl-C) stops reading first, then tells the
desk, whose hub reads the late reply itself.

A hub without a desk (another version, a tcp endpoint, ``direct=False``) is called the
usual way (``fallback``: the client's ``HubTransport``), and so is a request over 64 KiB or
with buffer frames: the hub forwards those without a copy, where the desk would read the
request whole only to lend a daemon.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from typing import Any, Callable, Sequence

from .calls import closed_while_waiting
from .errors import BridgeError, CallTimeout, Cancelled, ConnectionLost, WorkerLost
from .leasedesk import FLAG_EXPIRED
from .protocol import HEADER_SIZE, Kind, decode_lease, encode_cancel, encode_error, read_header
from .shield import checkpoint, protected
from .wire import LENGTH, MORE, SMALL, Channel

Reply = tuple[bytes, Sequence[Any]]
SLICE = 0.1       # a waiting call looks at its cancel flag (and a Ctrl-C) this often
SPIN = 0.0001     # how long a call looks for its lease and its reply awake before it sleeps
SETTLE = 1.0      # after giving up, how long a call waits for the desk's verdict
RETRY = 1.0       # after failing to reach a desk, seconds before trying it again
REPORT = 64       # bytes of a reply's body reported to the desk (its error code is there)
_DONTWAIT = socket.MSG_DONTWAIT


class Desk:
    """One thread's connection to the desk: frames in, and the channels attached to them."""

    def __init__(self, path: str, max_size: int) -> None:
        self.sock = connect(path)
        self.out = Channel(self.sock, max_size)  # for sending (its framing)
        self.max_size = max_size
        self.data = b""
        self.fds: collections.deque[int] = collections.deque()

    def send(self, frame: bytes, buffers: Sequence[Any] = ()) -> None:
        self.out.send(frame, buffers)

    def next(self, until: float, spin: bool = False) -> tuple[bytes, int | None] | None:
        """The next frame (with the channel attached to a LEASE), or None at ``until``.
        EOFError when the desk is gone."""
        if spin:
            end = time.perf_counter() + SPIN
            while time.perf_counter() < end:
                message = self._take()
                if message is not None:
                    return message
                if not self._fill(_DONTWAIT):
                    continue
        while True:
            message = self._take()
            if message is not None:
                return message
            remaining = until - time.monotonic()
            if remaining <= 0:
                return None
            self.out.recv_timeout(min(remaining, SLICE))
            self._fill(0)
            checkpoint()

    def _take(self) -> tuple[bytes, int | None] | None:
        return take(self)

    def _fill(self, flags: int) -> bool:
        return fill(self, flags)

    def close(self) -> None:
        while self.fds:
            socket.close(self.fds.popleft())
        self.sock.close()


def connect(path: str) -> socket.socket:
    """A connection to the desk at ``path``; OSError if there is none."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def take(desk: Desk | Any) -> tuple[bytes, int | None] | None:
    """The next whole frame a desk connection holds (and the channel a LEASE came with)."""
    data = desk.data
    if len(data) < 4:
        return None
    (prefix,) = LENGTH.unpack_from(data)
    size = prefix & ~MORE
    if prefix & MORE or size > desk.max_size:
        raise EOFError("the desk sent a message it may not send")
    if len(data) < 4 + size:
        return None
    frame, desk.data = data[4:4 + size], data[4 + size:]
    fd = desk.fds.popleft() if frame[3:4] == bytes([Kind.LEASE]) and desk.fds else None
    return frame, fd


def fill(desk: Desk | Any, flags: int) -> bool:
    """Read what the desk sent (and the channels attached); False if nothing was there."""
    try:
        data, fds, _, _ = socket.recv_fds(desk.sock, SMALL, 4, flags)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError as exc:
        raise EOFError(f"the desk's connection broke: {exc}") from None
    if not data:
        raise EOFError("the desk closed the connection")
    desk.data += data
    desk.fds.extend(fds)
    return True


def report(reply: bytes) -> bytes:
    """What a borrower tells the desk of its reply: the header and the start of the body."""
    return reply[:HEADER_SIZE + REPORT]


class LeaseTransport:
    """Plain calls of a ``Client`` of a local hub, on daemons the hub lends it."""

    def __init__(self, path: str, max_size: int, fallback: Any, io: Callable[..., Any],
                 closed: Callable[[], bool]) -> None:
        self.path = path
        self.max_size = max_size
        self.fallback = fallback  # the hub's route, when there is no desk
        self.io = io              # the client's guard: close() waits for calls inside it
        self.closed = closed      # the client was closed: a waiting call ends Cancelled
        self._local = threading.local()
        self._cancels: set[int] = set()
        self._desks: list[Desk] = []
        self._lock = threading.Lock()
        self._retry_at = 0.0

    def _desk(self) -> Desk | None:
        desk: Desk | None = getattr(self._local, "desk", None)
        if desk is not None or time.monotonic() < self._retry_at:
            return desk
        try:
            desk = Desk(self.path, self.max_size)
        except OSError:
            self._retry_at = time.monotonic() + RETRY  # no desk (yet): the hub's route meanwhile
            return None
        self._local.desk = desk
        with self._lock:
            self._desks.append(desk)
        return desk

    def roundtrip(self, frame: bytes, buffers: Sequence[Any], timeout: float) -> Reply:
        desk = None if buffers or len(frame) > SMALL else self._desk()
        if desk is None:  # no desk, or a large request: the hub forwards it without a copy
            reply: Reply = self.fallback.roundtrip(frame, buffers, timeout)
            return reply
        leased: Reply = self.io(self._roundtrip, desk, frame, buffers, timeout)
        return leased

    def _roundtrip(self, desk: Desk, frame: bytes, buffers: Sequence[Any], timeout: float) -> Reply:
        request_id = read_header(frame).id
        deadline = time.monotonic() + timeout
        with protected():
            try:
                desk.send(frame, buffers)
                return self._await(desk, frame, buffers, request_id, deadline, timeout)
            except EOFError as exc:  # the hub went away, or dropped the connection
                self._drop(desk)
                if self.closed():
                    raise closed_while_waiting() from None
                raise ConnectionLost(
                    f"the hub at {self.path} dropped the connection while the call was in flight "
                    f"(e.g. a message over its max_message_size: {exc}); it may have run") from None
            except BaseException:  # Ctrl-C: the desk hears of it, the reply is the hub's to read
                self._send_quietly(desk, encode_cancel(request_id))
                raise
            finally:
                self._cancels.discard(request_id)

    def cancel(self, request_id: int) -> None:
        """From any thread: the waiting thread stops within a slice and tells the desk."""
        self._cancels.add(request_id)

    def _await(self, desk: Desk, frame: bytes, buffers: Sequence[Any], request_id: int,
               deadline: float, timeout: float) -> Reply:
        spin = True
        while True:
            message = desk.next(min(deadline, time.monotonic() + SLICE), spin)
            spin = False
            if message is None:
                if time.monotonic() >= deadline:
                    return self._settle(desk, frame, buffers, request_id, True, timeout)
                if request_id in self._cancels or self.closed():
                    return self._settle(desk, frame, buffers, request_id, False, timeout)
                continue
            answer, fd = message
            header = read_header(answer)
            if header.id != request_id:
                if fd is not None:
                    socket.close(fd)
                continue  # a stale verdict for a call this thread gave up on
            if header.kind is Kind.REPLY:
                return answer, ()
            if header.kind is Kind.LEASE and fd is not None:
                return self._borrow(desk, fd, answer, frame, buffers, request_id, deadline, timeout)

    def _borrow(self, desk: Desk, fd: int, lease: bytes, frame: bytes, buffers: Sequence[Any],
                request_id: int, deadline: float, timeout: float) -> Reply:
        """The lent channel: the request on it (if ours to send), the reply read, reported."""
        channel = Channel(socket.socket(fileno=fd), self.max_size)
        try:
            if decode_lease(lease)["send"]:
                channel.send(frame, buffers)
            got = channel.recv_soon(SPIN)
            while got is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or request_id in self._cancels or self.closed():
                    break
                channel.recv_timeout(min(remaining, SLICE))
                try:
                    got = channel.recv()
                except TimeoutError:
                    checkpoint()
        except (EOFError, OSError):  # the daemon is gone: the desk says how (WorkerLost)
            return self._verdict(desk, request_id, WorkerLost("the daemon's channel closed during the call"))
        finally:
            channel.sock.detach()
            socket.close(fd)
        if got is None:
            expired = time.monotonic() >= deadline
            return self._settle(desk, frame, buffers, request_id, expired, timeout)
        reply, reply_buffers = got
        desk.send(report(reply))
        return reply, reply_buffers

    def _settle(self, desk: Desk, frame: bytes, buffers: Sequence[Any], request_id: int,
                expired: bool, timeout: float) -> Reply:
        """This call stops waiting: the desk is told, and its verdict awaited a moment (a
        lease granted meanwhile is honoured: the request goes on, the hub reads its reply)."""
        desk.send(encode_cancel(request_id, FLAG_EXPIRED if expired else 0))
        error: BridgeError = (CallTimeout(f"call timed out after {timeout}s") if expired else
                              Cancelled("cancelled while running"))
        return self._verdict(desk, request_id, error, frame, buffers)

    def _verdict(self, desk: Desk, request_id: int, otherwise: BridgeError, frame: bytes = b"",
                 buffers: Sequence[Any] = ()) -> Reply:
        """The desk's answer to a call this thread stopped waiting for (``otherwise`` if
        none comes in time); a lease granted meanwhile is honoured: its request goes on,
        and the hub reads the reply."""
        until = time.monotonic() + SETTLE
        while (message := desk.next(until)) is not None:
            answer, fd = message
            header = read_header(answer)
            if fd is not None:
                if header.id == request_id and frame and decode_lease(answer)["send"]:
                    with socket.socket(fileno=socket.dup(fd)) as channel:
                        Channel(channel, self.max_size).send(frame, buffers)
                socket.close(fd)
            elif header.id == request_id and header.kind is Kind.REPLY:
                return answer, ()
        return encode_error(request_id, otherwise), ()

    def _send_quietly(self, desk: Desk, frame: bytes) -> None:
        try:
            desk.send(frame)
        except OSError:
            pass

    def _drop(self, desk: Desk) -> None:
        self._local.desk = None
        with self._lock:
            if desk in self._desks:
                self._desks.remove(desk)
        desk.close()

    def close(self) -> None:
        """The desks' connections end (after the client's close() waited for its calls)."""
        with self._lock:
            desks, self._desks = self._desks, []
        for desk in desks:
            desk.close()
