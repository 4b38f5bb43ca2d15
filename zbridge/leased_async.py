"""The asyncio twin of ``leased.py``: an ``AsyncClient`` of a local hub borrows daemons.

One connection to the desk carries every call of the event loop (replies and leases name
their request id); a reader (``loop.add_reader``) sorts what arrives to the waiting calls.
A leased call reads its reply on the lent channel when the loop says it is readable
(``MSG_DONTWAIT``), reports it and closes its copy. A call that stops waiting (its
deadline, a cancelled task) tells the desk; a lease that crosses that message is honoured
(a request the client must send is sent) by the reader.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
from typing import Any, Callable, Sequence

from .errors import BridgeError, CallTimeout, ConnectionLost, WorkerLost
from .leased import RETRY, SETTLE, Reply, connect, fill, report, take
from .leasedesk import FLAG_EXPIRED
from .protocol import Kind, decode_lease, encode_cancel, encode_error, read_header
from .wire import LENGTH, SMALL, Channel, chunks

_DONTWAIT = socket.MSG_DONTWAIT
Message = tuple[bytes, "int | None"]


class AsyncDesk:
    """The loop's connection to the desk."""

    def __init__(self, path: str, max_size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = connect(path)
        self.sock.setblocking(False)
        self.max_size = max_size
        self.loop = loop
        self.data = b""
        self.fds: collections.deque[int] = collections.deque()
        self.waiting: dict[int, asyncio.Future[Message]] = {}
        self.given_up: dict[int, tuple[bytes, Sequence[Any]]] = {}  # honoured if a lease comes
        self.broken: BaseException | None = None
        loop.add_reader(self.sock.fileno(), self._on_readable)

    async def send(self, frame: bytes, buffers: Sequence[Any] = ()) -> None:
        for chunk in chunks(frame, buffers):
            await self.loop.sock_sendall(self.sock, chunk)

    def _on_readable(self) -> None:
        try:
            while fill(self, _DONTWAIT):
                pass
            while (message := take(self)) is not None:
                self._sort(message)
        except EOFError as exc:
            self._break(exc)

    def _sort(self, message: Message) -> None:
        frame, fd = message
        request_id = read_header(frame).id
        future = self.waiting.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(message)
            return
        given_up = self.given_up.pop(request_id, None) if frame[3] != Kind.LEASE else \
            self.given_up.get(request_id)
        if fd is not None:  # a lease for a call that stopped waiting: honoured
            if given_up is not None and decode_lease(frame)["send"]:
                with socket.socket(fileno=socket.dup(fd)) as channel:
                    Channel(channel, self.max_size).send(*given_up)
            socket.close(fd)

    def wait(self, request_id: int) -> asyncio.Future[Message]:
        future: asyncio.Future[Message] = self.loop.create_future()
        if self.broken is not None:
            future.set_exception(self.broken)
        else:
            self.waiting[request_id] = future
        return future

    def _break(self, exc: BaseException) -> None:
        self.broken = exc
        self.loop.remove_reader(self.sock.fileno())
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(exc)
        self.waiting.clear()

    def close(self) -> None:
        if self.broken is None:
            self.loop.remove_reader(self.sock.fileno())
        while self.fds:
            socket.close(self.fds.popleft())
        self.sock.close()


class AsyncLeaseTransport:
    """Plain calls of an ``AsyncClient`` of a local hub, on daemons the hub lends it."""

    def __init__(self, path: str, max_size: int, fallback: Any, closed: Callable[[], bool]) -> None:
        self.path = path
        self.max_size = max_size
        self.fallback = fallback
        self.closed = closed
        self.desk: AsyncDesk | None = None
        self._retry_at = 0.0

    def _desk(self) -> AsyncDesk | None:
        if self.desk is not None and self.desk.broken is None:
            return self.desk
        if time.monotonic() < self._retry_at:
            return None
        if self.desk is not None:
            self.desk.close()
            self.desk = None
        try:
            self.desk = AsyncDesk(self.path, self.max_size, asyncio.get_running_loop())
        except OSError:
            self._retry_at = time.monotonic() + RETRY
        return self.desk

    async def roundtrip(self, frame: bytes, buffers: Sequence[Any], timeout: float) -> Reply:
        desk = None if buffers or len(frame) > SMALL else self._desk()
        if desk is None:  # no desk, or a large request: the hub forwards it without a copy
            reply: Reply = await self.fallback.roundtrip(frame, buffers, timeout)
            return reply
        request_id = read_header(frame).id
        deadline = time.monotonic() + timeout
        answer = desk.wait(request_id)
        try:
            await desk.send(frame, buffers)
            message = await _until(desk.loop, answer, deadline)
            if message is None:
                return await self._settle(desk, frame, buffers, request_id, timeout)
            got, fd = message
            if fd is None:
                return got, ()
            return await self._borrow(desk, fd, got, frame, buffers, request_id, deadline, timeout)
        except EOFError as exc:
            raise ConnectionLost(
                f"the hub at {self.path} dropped the connection while the call was in flight "
                f"(e.g. a message over its max_message_size: {exc}); it may have run") from None
        except asyncio.CancelledError:  # the task was cancelled: so is the call
            desk.waiting.pop(request_id, None)
            desk.given_up[request_id] = (frame, tuple(buffers))
            self._tell(desk, encode_cancel(request_id))
            raise

    async def _borrow(self, desk: AsyncDesk, fd: int, lease: bytes, frame: bytes,
                      buffers: Sequence[Any], request_id: int, deadline: float, timeout: float) -> Reply:
        channel = Channel(socket.socket(fileno=fd), self.max_size)
        loop = desk.loop
        try:
            if decode_lease(lease)["send"]:
                channel.send(frame, buffers)
            while True:
                try:
                    reply, reply_buffers = channel.recv(_DONTWAIT)
                    break
                except BlockingIOError:
                    readable = loop.create_future()
                    loop.add_reader(fd, _resolve, readable, True)
                    try:
                        if await _until(loop, readable, deadline) is None:
                            return await self._settle(desk, frame, buffers, request_id, timeout)
                    finally:
                        loop.remove_reader(fd)
        except (EOFError, OSError):  # the daemon is gone: the desk says how
            return await self._verdict(desk, request_id, WorkerLost("the daemon's channel closed"))
        finally:
            channel.sock.detach()
            socket.close(fd)
        await desk.send(report(reply))
        return reply, reply_buffers

    async def _settle(self, desk: AsyncDesk, frame: bytes, buffers: Sequence[Any], request_id: int,
                      timeout: float) -> Reply:
        """Its deadline passed: the desk is told (a crossing lease is honoured by the
        reader) and its verdict awaited a moment."""
        desk.given_up[request_id] = (frame, tuple(buffers))
        await desk.send(encode_cancel(request_id, FLAG_EXPIRED))
        return await self._verdict(desk, request_id, CallTimeout(f"call timed out after {timeout}s"))

    async def _verdict(self, desk: AsyncDesk, request_id: int, otherwise: BridgeError) -> Reply:
        answer = desk.wait(request_id)
        message = await _until(desk.loop, answer, time.monotonic() + SETTLE)
        while message is not None and message[1] is not None:  # a lease crossing our message
            socket.close(message[1])
            answer = desk.wait(request_id)
            message = await _until(desk.loop, answer, time.monotonic() + SETTLE)
        desk.given_up.pop(request_id, None)
        return (message[0], ()) if message is not None else (encode_error(request_id, otherwise), ())

    def _tell(self, desk: AsyncDesk, frame: bytes) -> None:
        try:
            desk.sock.send(LENGTH.pack(len(frame)) + frame)
        except OSError:
            pass

    async def close(self) -> None:
        if self.desk is not None:
            self.desk.close()
            self.desk = None


async def _until(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], deadline: float) -> Any:
    """``future``'s result, or None at ``deadline``."""
    timer = loop.call_at(deadline, _resolve, future)
    try:
        return await future
    finally:
        timer.cancel()


def _resolve(future: asyncio.Future[Any], value: Any = None) -> None:
    if not future.done():
        future.set_result(value)
