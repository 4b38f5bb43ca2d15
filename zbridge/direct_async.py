"""The asyncio twin of the embedded direct path (``zbridge/direct.py``).

The event loop is one direct caller (one slot): the broker is used under the hub's lock
from the loop thread, leases are sent on one ``zmq.asyncio`` DEALER per daemon, and a
reader task per daemon socket reports every reply to the broker, whose answers resolve
the waiting futures. Answers and leases decided in the hub thread (timeouts, lost
daemons, queued calls dispatched) wake the loop through the slot's pipe
(``loop.add_reader``). A late reply (the call timed out or was cancelled) is read by the
same reader task, so no socket needs handing over: the daemon comes back warm.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

import zmq
import zmq.asyncio

from .actions import Action
from .calls import HUB_GRACE
from .direct import Lease, NoVerdict, Slot, _bytes_view, run_event
from .errors import BridgeError
from .protocol import Kind, read_header

if TYPE_CHECKING:
    from .hub import Hub

Reply = tuple[bytes, tuple[Any, ...]]


class AsyncDirect:
    def __init__(self, hub: Hub, max_message: int, context: zmq.asyncio.Context) -> None:
        self.hub = hub
        self.broker = hub.broker
        self.max_message = max_message
        self.context = context
        self.slot: Slot | None = None            # made in the loop's thread, at the first call
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: dict[int, asyncio.Future[Reply]] = {}
        self.sockets: dict[bytes, tuple[zmq.asyncio.Socket, asyncio.Task[None]]] = {}

    def _ensure(self) -> Slot:
        if self.slot is None:
            self.slot = self.hub.new_slot()
            self.loop = asyncio.get_running_loop()
            self.loop.add_reader(self.slot.waker.fd, self._on_wake)
        return self.slot

    def _run(self, event: Callable[..., list[Action]], *args: Any) -> None:
        """One broker event from the loop: deliveries to us are taken at once."""
        run_event(self.hub, event, *args)
        self._take()

    def _on_wake(self) -> None:
        assert self.slot is not None
        self.slot.waker.clear()
        self._take()

    def _take(self) -> None:
        assert self.slot is not None
        for entry in self.slot.take():
            if isinstance(entry, Lease):
                self._send(entry)  # always honoured, even for a call already answered
                continue
            future = self.pending.get(entry.id)
            if future is not None and not future.done():
                future.set_result((entry.frame, entry.extra))

    # --- one call ----------------------------------------------------------------------

    async def roundtrip(self, frame: bytes, buffers: Sequence[Any], timeout: float) -> Reply:
        slot = self._ensure()
        assert self.loop is not None
        header = read_header(frame)
        request_id = header.id
        future: asyncio.Future[Reply] = self.loop.create_future()
        self.pending[request_id] = future
        extra = tuple(_bytes_view(b) for b in buffers) if buffers else ()
        now = time.monotonic()
        try:
            self._run(self.broker.submit, slot.ident, header, frame, now, extra)
            self.hub.timer_at(now + timeout)
            try:
                return await asyncio.wait_for(asyncio.shield(future), timeout + HUB_GRACE)
            except asyncio.TimeoutError:  # the hub thread gave no verdict: judge it here
                self._run(self.broker.expire_call, slot.ident, request_id, time.monotonic())
                if future.done():
                    return future.result()
                raise NoVerdict() from None
            except asyncio.CancelledError:  # the awaiting task was cancelled: so is the call
                self._run(self.broker.cancel, slot.ident, request_id, time.monotonic())
                raise
        finally:
            self.pending.pop(request_id, None)

    # --- daemon sockets ----------------------------------------------------------------

    def _send(self, lease: Lease) -> None:
        sock = self._socket(lease.daemon, lease.endpoint)
        sending = cast("asyncio.Future[Any]", sock.send_multipart([lease.frame, *lease.extra], copy=False)
                       if lease.extra else sock.send(lease.frame))

        def sent(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is not None:  # as the hub does
                self._forget(lease.daemon)
                self._run(self.broker.daemon_unreachable, lease.daemon, lease.frame,
                          time.monotonic(), lease.extra)

        sending.add_done_callback(sent)

    def _socket(self, daemon: bytes, endpoint: str) -> zmq.asyncio.Socket:
        known = self.sockets.get(daemon)
        if known is not None:
            return known[0]
        for gone in [d for d in self.sockets if d not in self.broker.daemons]:
            self._forget(gone)
        sock = self.context.socket(zmq.DEALER)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message + 4096)
        sock.connect(endpoint)
        self.sockets[daemon] = (sock, asyncio.ensure_future(self._read(daemon, sock)))
        return sock

    async def _read(self, daemon: bytes, sock: zmq.asyncio.Socket) -> None:
        """Every reply from this daemon, reported to the broker (late ones too)."""
        while True:
            parts = await sock.recv_multipart(copy=False)
            reply = parts[0].bytes
            try:
                header = read_header(reply)
            except BridgeError:
                continue
            if header.kind is Kind.REPLY:
                self._run(self.broker.daemon_reply, daemon, header, reply, time.monotonic(),
                          tuple(part.buffer for part in parts[1:]))

    def _forget(self, daemon: bytes) -> None:
        known = self.sockets.pop(daemon, None)
        if known is not None:
            known[1].cancel()
            known[0].close(0)

    async def close(self) -> None:
        tasks = [task for _, task in self.sockets.values()]
        for daemon in list(self.sockets):
            self._forget(daemon)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.slot is not None and self.loop is not None:
            self.loop.remove_reader(self.slot.waker.fd)
