"""The asyncio twin: ``AsyncClient`` and ``AsyncBridge``.

What to do (retries, fallbacks, credit, readiness) is the sync client's own plan
(``plans.py``), driven here with ``await``. A plain call goes to the client's transport:
``AsyncHubTransport`` (the served route, on ``zmq.asyncio``: one DEALER per client carries
every call of the event loop; a reader task matches replies to futures by request id, so
thousands of concurrent calls cost one socket) or, for an ``AsyncBridge``, the embedded
direct route (``direct_async.py``). At most ``max_in_flight`` calls are out at once.
Cancelling the awaiting task cancels the call: a queued call never runs, a running one
follows ``cancel_mode``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Iterable, Sequence

import zmq
import zmq.asyncio

from . import plans, presence
from .admin import AsyncControl
from .calls import (
    HUB_GRACE,
    STREAM_WINDOW,
    ClientCore,
    closed_error,
    closed_while_waiting,
    asked_pickle,
    configure_dealer,
    read_stream_message,
    reply_id,
    result_of,
)
from .config import Settings, load_settings
from .direct import Reply
from .direct_async import AsyncDirectTransport
from .errors import BridgeError, ConnectionLost, PoolUnavailable
from .handles import AsyncHandles
from .leased_async import AsyncLeaseTransport
from .leasedesk import desk_path
from .hub import start_embedded
from .protocol import MAX_BUFFERS, encode_cancel, encode_credit, read_header
from .wire import SMALL
from .statusmap import Status
from .tools import tool_specs


class AsyncClient(ClientCore, AsyncHandles, AsyncControl):
    """Await calls on a hub at ``endpoint`` (as started by ``zbridge serve``)."""

    def __init__(self, endpoint: str | None = None, *, tools: Any = None,
                 settings: Settings | None = None, context: zmq.Context[Any] | None = None,
                 connect_timeout: float = 5.0, **overrides: Any) -> None:
        self._init_core(endpoint, tools, settings, connect_timeout, overrides)
        self._own_context = context is None
        self.context = zmq.asyncio.Context.shadow(context) if context else zmq.asyncio.Context()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, asyncio.Queue[tuple[str, Any]]] = {}
        self._sock: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._window: asyncio.Semaphore | None = None  # made in the loop that uses it
        self._hub_route = AsyncHubTransport(self)
        self._transport: Any = self._hub_route  # where plain calls go
        desk = desk_path(self.endpoint) if self.settings.direct and self.endpoint else None
        if desk is not None:  # a local hub lends us its daemons (leased_async.py)
            self._transport = AsyncLeaseTransport(desk, self.settings.max_message_size + 4096,
                                                  self._hub_route, lambda: self._closed)

    # --- public API --------------------------------------------------------------------

    async def call(self, tool: str, args: Any = None, *, timeout: float | None = None,
                   idempotent: bool = False, traceparent: str | None = None) -> Any:
        """Run ``tool`` and return its result; cancelling the task cancels the call."""
        return await self._drive(plans.call(self, tool, args, timeout, idempotent, traceparent))

    def submit(self, tool: str, args: Any = None, *, timeout: float | None = None,
               idempotent: bool = False, traceparent: str | None = None) -> asyncio.Task[Any]:
        """Start a call now; await the task for its result, cancel it to cancel the call."""
        return asyncio.ensure_future(self.call(tool, args, timeout=timeout, idempotent=idempotent,
                                               traceparent=traceparent))

    async def call_many(self, calls: Iterable[tuple[str, Any]], *, timeout: float | None = None,
                        idempotent: bool = False, return_exceptions: bool = False) -> list[Any]:
        """``(tool, args)`` pairs concurrently, at most ``max_in_flight`` at the hub; results
        in order (see Client.call_many)."""
        results = await asyncio.gather(
            *(self.call(tool, args, timeout=timeout, idempotent=idempotent) for tool, args in calls),
            return_exceptions=True)
        return plans.settle(results, return_exceptions)

    async def map(self, tool: str, items: Iterable[Any], *, timeout: float | None = None,
                  idempotent: bool = False, return_exceptions: bool = False) -> list[Any]:
        """``tool(item)`` for every item, spread over the daemons; results in order."""
        return await self.call_many([(tool, [item]) for item in items], timeout=timeout,
                                    idempotent=idempotent, return_exceptions=return_exceptions)

    async def wait_ready(self, timeout: float = 60.0, count: int | None = None) -> Status:
        """Wait until ``count`` daemons (default: ``workers``, at least 1) are up."""
        status: Status = await self._drive(plans.wait_ready(self, timeout, count))
        return status

    async def status(self, timeout: float = 5.0, *, prewarm: bool = False) -> Status:
        """The hub's view: daemons, queue, counters (see Client.status)."""
        status: Status = await self._drive(plans.status(self, timeout, prewarm))
        return status

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        gone = closed_while_waiting()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(gone)
        for queue in self._streams.values():
            queue.put_nowait(("error", gone))
        for task in (self._reader, self._watcher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._sock is not None:
            if self._watcher is not None:
                self._sock.disable_monitor()
            self._sock.close(0)
        close = getattr(self._transport, "close", None)
        if close is not None:  # the route's own connection (a lease desk's)
            await close()
        if self._own_context:
            self.context.destroy(linger=0)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # --- internals ---------------------------------------------------------------------

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            sock = self.context.socket(zmq.DEALER)
            configure_dealer(sock, self.settings, self._curve, self.connect_timeout)
            sock.rcvtimeo = -1  # the reader task waits for as long as the client lives
            assert self.endpoint is not None  # set whenever the pool is enabled
            sock.connect(self.endpoint)
            presence.fail_fast(sock, self.endpoint)  # no hub there: fail at once, not in connect_timeout
            self._sock = sock
            self._reader = asyncio.ensure_future(self._read_replies())
            if not self.endpoint.startswith("inproc://"):  # inproc connections never drop
                self._watcher = asyncio.ensure_future(self._watch_connection(sock))
        return self._sock

    def _in_flight(self) -> asyncio.Semaphore:
        """At most max_in_flight calls at the hub; the rest wait here, not in its queue."""
        if self._window is None:
            self._window = asyncio.Semaphore(self.settings.max_in_flight)
        return self._window

    async def _watch_connection(self, sock: zmq.asyncio.Socket) -> None:
        """A dropped connection fails every call and stream in flight on it at once."""
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            while True:
                await monitor.recv_multipart()
                error = ConnectionLost(f"the hub at {self.endpoint} dropped the connection while "
                                       "calls were in flight; they may have run")
                for future in self._pending.values():
                    if not future.done():
                        future.set_exception(error)
                for queue in self._streams.values():
                    queue.put_nowait(("error", error))
        finally:
            monitor.close(0)

    async def _read_replies(self) -> None:
        sock = self._sock
        assert sock is not None  # started by _socket() once the socket exists
        while True:
            reply = await sock.recv()
            buffers = await _recv_buffers(sock) if sock.getsockopt(zmq.RCVMORE) else []
            if self._streams:
                if self._to_stream(reply, buffers):
                    continue
            future = self._pending.get(reply_id(reply) or 0)
            if future is not None and not future.done():  # else the caller gave up: dropped
                future.set_result((reply, buffers))

    def _to_stream(self, frame: bytes, buffers: Sequence[Any] = ()) -> bool:
        try:
            request_id = read_header(frame).id
        except BridgeError:
            return False
        queue = self._streams.get(request_id)
        message = (read_stream_message(frame, request_id, self.settings.max_message_size, buffers, self.pickle)
                   if queue else None)
        if queue is None or message is None:
            return False
        queue.put_nowait(message)  # bounded by the credit window
        return True

    async def astream(self, tool: str, args: Any = None, *, timeout: float | None = None,
                      window: int = STREAM_WINDOW, traceparent: str | None = None) -> AsyncIterator[Any]:
        """Async-iterate over a generator tool's items (see Client.stream)."""
        plan = plans.stream(self, tool, args, timeout, window, traceparent)
        op = next(plan)
        sock: zmq.asyncio.Socket | None = None
        request_id, finished = 0, False
        try:
            while True:
                outcome: Any = None
                error: BaseException | None = None
                match op:
                    case plans.Item(value):
                        yield value
                    case plans.OneShotItems(tool, args, timeout):
                        async for item in self._fallback_stream(tool, args, timeout):
                            yield item
                    case plans.Open(frame, buffers, request_id):
                        sock = self._socket()
                        self._streams[request_id] = asyncio.Queue()
                        try:
                            await self._send(sock, frame, buffers)
                        except BridgeError as exc:
                            error = exc
                    case plans.Receive(deadline, timeout):
                        if self._closed:  # items still queued are not wanted any more
                            error = closed_while_waiting()
                        else:
                            try:
                                outcome = await asyncio.wait_for(self._streams[request_id].get(),
                                                                 max(0.0, deadline - time.monotonic()))
                            except asyncio.TimeoutError:
                                error = plans.timed_out(timeout)
                    case plans.Credit(n):  # advisory: never blocks, never raises
                        assert sock is not None  # Open comes first
                        await self._send_quietly(sock, encode_credit(request_id, n))
                finished, op = plans.advance(plan, outcome, error)
                if finished:
                    return
        finally:
            if sock is not None:
                self._streams.pop(request_id, None)
                if not finished and not self._closed:
                    await asyncio.shield(self._send_cancel(sock, request_id))

    # --- driving plans: the only I/O ---------------------------------------------------

    async def _drive(self, plan: plans.Plan) -> Any:
        """Run a plan to its end, awaiting its operations."""
        outcome: Any = None
        error: BaseException | None = None
        while True:
            done, op = plans.advance(plan, outcome, error)
            if done:
                return op
            outcome, error = None, None
            try:
                outcome = await self._perform(op)
            except BridgeError as exc:
                error = exc

    async def _perform(self, op: plans.Op) -> Any:
        match op:
            case plans.Roundtrip(frame, timeout, buffers, _):
                async with self._in_flight():
                    reply, reply_buffers = await self._transport.roundtrip(frame, buffers, timeout)
                return result_of(reply, self.settings.max_message_size, reply_buffers, asked_pickle(frame))
            case plans.Ask(frame, timeout):
                reply, reply_buffers = await self._hub_route.roundtrip(frame, (), timeout)
                return result_of(reply, self.settings.max_message_size, reply_buffers)
            case plans.OneShot(tool, args, timeout):
                return await asyncio.get_running_loop().run_in_executor(
                    None, self._one_shot_call, tool, args, timeout)
            case plans.Sleep(seconds):
                await asyncio.sleep(seconds)
                return None
        raise TypeError(f"not a call operation: {op!r}")

    async def _fallback_stream(self, tool: str, args: Any, timeout: float) -> AsyncIterator[Any]:
        """The pipe fallback's items one by one, each read in a worker thread."""
        loop = asyncio.get_running_loop()
        items = self._one_shot_stream(tool, args, timeout)
        done = object()
        try:
            while (item := await loop.run_in_executor(None, next, items, done)) is not done:
                yield item
        finally:
            await loop.run_in_executor(None, items.close)

    async def _send(self, sock: zmq.asyncio.Socket, frame: bytes, buffers: Sequence[Any] = ()) -> None:
        """``frame``, then its buffer frames without a copy (see ``frames.send_message``)."""
        try:
            if buffers:
                await sock.send_multipart([frame, *buffers], copy=False)
            else:
                await sock.send(frame, copy=len(frame) < SMALL)
        except zmq.Again:
            raise self._unreachable() from None

    @classmethod
    async def _send_cancel(cls, sock: zmq.asyncio.Socket, request_id: int) -> None:
        await cls._send_quietly(sock, encode_cancel(request_id))

    @staticmethod
    async def _send_quietly(sock: zmq.asyncio.Socket, frame: bytes) -> None:
        try:
            await sock.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the hub is gone or not reading: nothing to tell it



class AsyncHubTransport:
    """The served route for asyncio: requests on the client's one DEALER, replies matched
    to futures by the client's reader task; the hub judges the deadline (the caller gives
    up HUB_GRACE after it); a cancelled task sends CANCEL for its request id."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def roundtrip(self, frame: bytes, buffers: Sequence[Any], timeout: float) -> Reply:
        client = self.client
        sock = client._socket()
        request_id = reply_id(frame, any_kind=True) or 0
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        client._pending[request_id] = future
        try:
            await client._send(sock, frame, buffers)
            try:
                return await asyncio.wait_for(future, timeout + HUB_GRACE)
            except asyncio.TimeoutError:
                raise plans.timed_out(timeout) from None
            except asyncio.CancelledError:
                if not client._closed:
                    await asyncio.shield(client._send_cancel(sock, request_id))
                raise
        finally:
            client._pending.pop(request_id, None)


async def _recv_buffers(sock: zmq.asyncio.Socket) -> list[memoryview]:
    """The buffer frames after a message's first frame (the twin of ``frames.recv_buffers``):
    zero-copy views; frames beyond MAX_BUFFERS are read and dropped."""
    buffers: list[memoryview] = []
    while sock.getsockopt(zmq.RCVMORE):
        part = await sock.recv(copy=False)
        if len(buffers) < MAX_BUFFERS:
            buffers.append(part.buffer)
    return buffers


class AsyncBridge(AsyncClient):
    """``Bridge`` for asyncio: a hub in a background thread, daemons as child processes;
    plain calls take the embedded direct route (``direct_async.py``)."""

    def __init__(self, tools: Any = None, workers: int | None = None, *,
                 settings: Settings | None = None, **overrides: Any) -> None:
        settings = settings or load_settings(workers=workers, **overrides)
        specs = tool_specs(tools)
        self._hub, self._thread, sync_context, endpoint = start_embedded(settings, specs)
        super().__init__(endpoint, tools=specs, settings=settings, context=sync_context)
        self._sync_context = sync_context
        if self._hub is not None and self._hub.direct:
            self._transport = AsyncDirectTransport(self._hub, settings.timeout)

    def _check(self) -> None:
        super()._check()
        hub = self._hub
        if hub is not None and hub.broker.broken is not None:
            raise PoolUnavailable(f"the pool is broken: {hub.broker.broken}", {"cause": "broken"})

    async def close(self, drain_timeout: float = 10.0) -> None:
        """Refuse new calls, let running ones finish (up to drain_timeout), stop daemons."""
        if self._forked():
            self._closed = True  # a forked child's copy: the daemons are the parent's
            return
        hub = self._hub
        if hub is not None and self._thread is not None:
            hub.request_stop(drain_timeout)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._hub = None
        await super().close()
        self._sync_context.term()

    @property
    def private_dir(self) -> str | None:
        return self._hub.private_dir if self._hub else None
