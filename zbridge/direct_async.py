"""The asyncio twin of the embedded direct route (``zbridge/direct.py``): the same daemons'
channels, the same broker decisions (``direct.Route``), waited on by the event loop.

A call checks out a daemon, sends its frame on the daemon's channel and waits for the
channel to be readable (``loop.add_reader``), then reads with ``MSG_DONTWAIT``: the channel
stays a blocking socket for the threads that borrow it at other times. A queued call waits
on a future of its own, which whoever lends it a daemon (or answers it) resolves, from
any thread (``call_soon_threadsafe``). Its deadline is a timer of the loop's.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import TYPE_CHECKING, Any, Sequence

from .direct import EXIT_WAIT, Reply, Route, send_request
from .state import Job

if TYPE_CHECKING:
    from .hub import Hub

_TIMEOUT = object()  # a wait's future resolved by its deadline
_DONTWAIT = socket.MSG_DONTWAIT


class LoopOwner:
    """An asyncio call's place to wait for its job to move: a future, resolved by ``wake``
    from the loop's thread or any other."""

    __slots__ = ("loop", "future", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.thread = threading.get_ident()

    def wake(self, job: Job | None = None) -> None:
        if threading.get_ident() == self.thread:
            self._set()
            return
        try:
            self.loop.call_soon_threadsafe(self._set)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    def _set(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    async def wait(self, deadline: float) -> None:
        """Until woken or ``deadline`` (the loop's clock is time.monotonic)."""
        await _until(self.loop, self.future, deadline)
        if self.future.done():
            self.future = self.loop.create_future()


async def _until(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], deadline: float) -> bool:
    """Await ``future`` until ``deadline``: True if it resolved first."""
    timer = loop.call_at(deadline, _resolve, future, _TIMEOUT)
    try:
        return await future is not _TIMEOUT
    finally:
        timer.cancel()


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


class AsyncDirectTransport(Route):
    """Plain calls of an ``AsyncBridge`` on the direct route."""

    def __init__(self, hub: Hub, default_timeout: float) -> None:
        super().__init__(hub, default_timeout)

    async def roundtrip(self, frame: bytes, buffers: Sequence[Any], timeout: float) -> Reply:
        me = LoopOwner(asyncio.get_running_loop())
        job = self._check_out(frame, buffers, me)
        try:
            reply = await self._await(job, me)
        except BaseException:  # the task was cancelled: so is the call
            self._give_up(job, me)
            raise
        self._jobs.pop(job.id, None)
        return reply

    async def _await(self, job: Job, me: LoopOwner) -> Reply:
        while True:
            if job.answer is not None:
                return self._answered(job)
            if job.channel is not None and (job.sent or job.owner_sends):
                if not job.sent and not send_request(self.hub, job):
                    continue  # it never left: queued again, or answered
                return await self._read(job, me)
            if me.loop.time() >= job.deadline:
                self._expire(job, me)
                continue
            await me.wait(job.deadline)

    async def _read(self, job: Job, me: LoopOwner) -> Reply:
        channel, loop = job.channel, me.loop
        fd = channel.fileno()
        while True:
            try:
                frame, buffers = channel.recv(_DONTWAIT)
            except BlockingIOError:
                readable = loop.create_future()
                loop.add_reader(fd, _resolve, readable, None)
                try:
                    arrived = await _until(loop, readable, job.deadline)
                finally:
                    loop.remove_reader(fd)
                if not arrived:
                    return self._time_out(job, me)
                continue
            except EOFError:
                return await self._after_exit(job, me)
            if self._check_in(job, frame, buffers, me):
                assert job.answer is not None
                return job.answer

    async def _after_exit(self, job: Job, me: LoopOwner) -> Reply:
        """The channel closed: the hub's verdict on the exit, or the daemon given up here."""
        give_up = me.loop.time() + EXIT_WAIT
        while job.answer is None and me.loop.time() < give_up:
            await me.wait(give_up)
        self._channel_lost(job, me)
        assert job.answer is not None
        return job.answer
