"""Calling tools through a hub: ``Client(endpoint)``, the base of ``Bridge``.

What a client does is written once, as plans (``plans.py``); this class drives them with
blocking sockets. A plain call goes to the client's *transport* (httpx's pattern: one per
route, chosen at construction), which round-trips a request frame and can cancel it by
id: ``HubTransport`` here (the served route: each calling thread owns a DEALER to the
hub, so a call needs no thread hop), ``direct.DirectTransport`` for a ``Bridge``'s
embedded direct route. Questions for the hub itself (STATUS), streams and fan-outs use
the hub's sockets. ``submit()`` runs ``call()`` on a small thread pool and returns a
``concurrent.futures.Future`` whose ``cancel()`` cancels the running call.
"""

from __future__ import annotations

import secrets
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Sequence

import zmq

from . import fanout, plans, presence, shield
from .admin import SyncControl
from .calls import (
    HUB_GRACE,
    STREAM_WINDOW,
    ClientCore,
    asked_pickle,
    build_request,
    closed_error,
    closed_while_waiting,
    configure_dealer,
    read_stream_message,
    reply_id,
    result_of,
)
from .config import Settings
from .errors import BridgeError, ConnectionLost
from .handles import SyncHandles
from .leased import LeaseTransport
from .leasedesk import desk_path
from .protocol import encode_cancel, encode_credit
from .statusmap import Status
from .wire import recv_buffers
from .wire import send as send_message

Reply = tuple[bytes, Sequence[Any]]  # a REPLY frame and its buffer frames

SUBMIT_THREADS = 32
CLOSE_WAIT = 5.0  # seconds close() waits for other threads to leave their zmq calls


class Client(ClientCore, SyncHandles, SyncControl):
    """A connection to a hub at ``endpoint`` (as started by ``zbridge serve``)."""

    def __init__(self, endpoint: str | None = None, *, tools: Any = None,
                 settings: Settings | None = None, context: zmq.Context[Any] | None = None,
                 connect_timeout: float = 5.0, **overrides: Any) -> None:
        self._init_core(endpoint, tools, settings, connect_timeout, overrides)
        self._own_context = context is None
        self.context = context or zmq.Context()
        self._local = threading.local()
        self._sockets: list[tuple[weakref.ref[threading.Thread], zmq.Socket[Any]]] = []
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._watches: dict[zmq.Socket[Any], ConnectionWatch] = {}
        # sockets belong to their threads: close() waits until none is inside a zmq call
        self._idle = threading.Condition()
        self._busy = 0
        self._hub_route = HubTransport(self)
        self._transport: Any = self._hub_route  # where plain calls go
        desk = desk_path(self.endpoint) if self.settings.direct and self.endpoint else None
        if desk is not None:  # a local hub lends us its daemons (leased.py)
            self._transport = LeaseTransport(desk, self.settings.max_message_size + 4096,
                                             self._hub_route, self._io, lambda: self._closed)

    # --- public API --------------------------------------------------------------------

    def call(self, tool: str, args: Any = None, *, timeout: float | None = None,
             idempotent: bool = False, traceparent: str | None = None) -> Any:
        """Run ``tool`` with ``args`` (a list, a dict or None) and return its result.
        ``traceparent`` (W3C) reaches the tool as ``zbridge.current_call().traceparent``."""
        return self._drive(plans.call(self, tool, args, timeout, idempotent, traceparent))

    def submit(self, tool: str, args: Any = None, *, timeout: float | None = None,
               idempotent: bool = False, traceparent: str | None = None) -> CallFuture:
        """Like call(), but returns a Future at once; its cancel() also cancels a running call."""
        self._check()
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(SUBMIT_THREADS, thread_name_prefix="zbridge-submit")
        future = CallFuture(self)

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return  # cancelled before it left this process: it never runs
            self._local.tracker = future
            try:
                future.set_result(self.call(tool, args, timeout=timeout, idempotent=idempotent,
                                            traceparent=traceparent))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                future.set_exception(exc)
            finally:
                self._local.tracker = None

        self._executor.submit(run)
        return future

    def stream(self, tool: str, args: Any = None, *, timeout: float | None = None,
               window: int = STREAM_WINDOW, traceparent: str | None = None) -> Iterator[Any]:
        """Iterate over a generator tool's items as they are produced.

        The tool runs at most ``window`` items ahead of you; an exception in the tool is
        raised here after the items before it; ``timeout`` bounds the whole stream; leaving
        the loop early cancels the call. A tool that is not a generator yields its result once.
        """
        plan = plans.stream(self, tool, args, timeout, window, traceparent)
        first = next(plan)  # usage errors (closed client, bad window) surface here, at once
        return self._drive_stream(plan, first)

    def call_many(self, calls: Iterable[tuple[str, Any]], *, timeout: float | None = None,
                  idempotent: bool = False, return_exceptions: bool = False) -> list[Any]:
        """Run ``(tool, args)`` pairs concurrently across the daemons; results in order.

        At most ``max_in_flight`` are at the hub at once. With ``return_exceptions`` each
        failed call's error takes its place in the list; otherwise the first error (in call
        order) is raised once all calls have finished.
        """
        self._check()
        calls = list(calls)
        timeout = self.timeout_of(timeout)
        outcomes: list[Any] = []
        frames: list[tuple[bytes, list[Any]]] = []
        for tool, args in calls:
            try:
                buffers: list[Any] = []
                frames.append((build_request(self.settings, next(self._ids), tool, args, timeout,
                                             idempotent, oob=buffers), buffers))
                outcomes.append(None)
            except BridgeError as exc:
                outcomes.append(exc)
        if self.settings.pool_enabled and frames:
            self._enter_io()
            try:
                sock = self._socket()
                replies = iter(fanout.pipeline(
                    sock, frames, timeout + HUB_GRACE,
                    lambda r, b: result_of(r, self.settings.max_message_size, b, self.pickle),
                    window=self.settings.max_in_flight,
                    lost=lambda: self._connection_lost() if self._dropped(sock) else None))
            finally:
                self._leave_io()
            outcomes = [o if isinstance(o, BridgeError) else next(replies) for o in outcomes]
        for i, (tool, args) in enumerate(calls):
            if plans.needs_another_try(self, outcomes[i], idempotent):
                try:  # call() applies the same retry / fallback rules one call at a time
                    outcomes[i] = self.call(tool, args, timeout=timeout, idempotent=idempotent)
                except BridgeError as exc:
                    outcomes[i] = exc
        return plans.settle(outcomes, return_exceptions)

    def map(self, tool: str, items: Iterable[Any], *, timeout: float | None = None,
            idempotent: bool = False, return_exceptions: bool = False) -> list[Any]:
        """``tool(item)`` for every item, spread over the daemons; results in order."""
        return self.call_many([(tool, [item]) for item in items], timeout=timeout,
                              idempotent=idempotent, return_exceptions=return_exceptions)

    def wait_ready(self, timeout: float = 60.0, count: int | None = None) -> Status:
        """Block until ``count`` daemons (default: ``workers``, at least 1) are up; returns
        the status. Starts any not yet started. Raises PoolUnavailable on timeout, or at once
        when starts keep failing."""
        status: Status = self._drive(plans.wait_ready(self, timeout, count))
        return status

    def status(self, timeout: float = 5.0, *, prewarm: bool = False) -> Status:
        """The hub's view: daemons (pid, state, calls, uptime, current call), queue, counters."""
        status: Status = self._drive(plans.status(self, timeout, prewarm))
        return status

    def close(self) -> None:
        """Close sockets; waiting calls in other threads end with Cancelled (within a poll
        slice: each thread's socket is closed only once no thread is inside a zmq call)."""
        with self._idle:
            if self._closed:
                return
            self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0, timeout=CLOSE_WAIT)
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for _, sock in sockets:
            self._close_socket(sock)
        close = getattr(self._transport, "close", None)
        if close is not None:  # the route's own connections (a lease desk's)
            close()
        if self._own_context:
            self.context.destroy(linger=0)  # never waits on a socket another frame still holds

    def _enter_io(self) -> None:
        with self._idle:
            if self._closed:
                raise closed_error()
            self._busy += 1

    def _leave_io(self) -> None:
        with self._idle:
            self._busy -= 1
            if not self._busy:
                self._idle.notify_all()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- driving plans: the only I/O ---------------------------------------------------

    def _drive(self, plan: plans.Plan) -> Any:
        """Run a plan to its end, performing its operations with blocking sockets."""
        outcome: Any = None
        error: BaseException | None = None
        while True:
            done, op = plans.advance(plan, outcome, error)
            if done:
                return op
            outcome, error = None, None
            try:
                outcome = self._perform(op)
            except BridgeError as exc:
                error = exc

    def _perform(self, op: plans.Op) -> Any:
        match op:
            case plans.Roundtrip(frame, timeout, buffers, request_id):
                return self._call(self._transport, frame, timeout, buffers, request_id)
            case plans.Ask(frame, timeout):
                return self._call(self._hub_route, frame, timeout)
            case plans.OneShot(tool, args, timeout):
                return self._one_shot_call(tool, args, timeout)
            case plans.Sleep(seconds):
                time.sleep(seconds)
                return None
        raise TypeError(f"not a call operation: {op!r}")

    def _drive_stream(self, plan: plans.Plan, op: plans.Op) -> Iterator[Any]:
        """Run a stream plan: its own socket (other calls on this thread stay apart), items
        handed to the consumer, and a CANCEL whenever the plan does not reach its end."""
        sock: zmq.Socket[Any] | None = None
        request_id, finished = 0, False
        try:
            while True:
                outcome: Any = None
                error: BaseException | None = None
                match op:
                    case plans.Item(value):
                        yield value
                    case plans.OneShotItems(tool, args, timeout):
                        yield from self._one_shot_stream(tool, args, timeout)
                    case plans.Open(frame, buffers, request_id):
                        sock = self._new_socket()
                        error = self._try(lambda: self._io(self._send, sock, frame, buffers))
                    case plans.Receive(deadline, timeout):
                        assert sock is not None  # Open comes first
                        try:
                            outcome = self._io(self._next_stream_message, sock, request_id, deadline, timeout)
                        except BridgeError as exc:
                            error = exc
                    case plans.Credit(n):  # advisory: never blocks, never raises
                        assert sock is not None
                        self._send_quietly(sock, encode_credit(request_id, n))
                finished, op = plans.advance(plan, outcome, error)
                if finished:
                    return
        finally:
            if sock is not None and not self._closed:  # close() already closed it otherwise
                if not finished:  # the consumer left early, the deadline passed, or it failed
                    self._send_cancel(sock, request_id)
                self._close_socket(sock, linger=0 if finished else 100)

    @shield.call_site
    def _call(self, transport: Any, frame: bytes, timeout: float, buffers: Sequence[Any] = (),
              request_id: int = 0) -> Any:
        """One round trip on ``transport``; a ``submit()`` Future's cancel() cancels it."""
        tracker: CallFuture | None = getattr(self._local, "tracker", None)
        if tracker is not None and request_id:
            tracker.bind_cancel(lambda: transport.cancel(request_id))
        try:
            with shield.calling():
                reply, reply_buffers = transport.roundtrip(frame, buffers, timeout)
        finally:
            if tracker is not None:
                tracker.bind_cancel(None)
        return result_of(reply, self.settings.max_message_size, reply_buffers, asked_pickle(frame))

    def _io(self, action: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking socket operation that close() must wait for."""
        self._enter_io()
        try:
            return action(*args)
        finally:
            self._leave_io()

    @staticmethod
    def _try(action: Callable[[], None]) -> BridgeError | None:
        try:
            action()
        except BridgeError as exc:
            return exc
        return None

    def _next_stream_message(self, sock: zmq.Socket[Any], request_id: int, deadline: float,
                             timeout: float) -> tuple[str, Any]:
        while True:
            frame, buffers = self._receive(sock, deadline, timeout)
            message = read_stream_message(frame, request_id, self.settings.max_message_size, buffers, self.pickle)
            if message is not None:
                return message

    def _send(self, sock: zmq.Socket[Any], frame: bytes, buffers: Sequence[Any] = ()) -> None:
        try:
            send_message(sock, frame, buffers)
        except zmq.Again:
            raise self._unreachable() from None

    @classmethod
    def _send_cancel(cls, sock: zmq.Socket[Any], request_id: int) -> None:
        """CANCEL on the socket that sent the call: the hub honours no other."""
        cls._send_quietly(sock, encode_cancel(request_id))

    @staticmethod
    def _send_quietly(sock: zmq.Socket[Any], frame: bytes) -> None:
        try:
            sock.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the hub is gone or not reading: nothing to tell it

    def _receive(self, sock: zmq.Socket[Any], deadline: float, timeout: float,
                 on_slice: Callable[[], None] | None = None) -> tuple[bytes, list[memoryview]]:
        """The next message: a frame and its buffer frames (zero copy)."""
        while True:
            try:
                frame = sock.recv()
            except zmq.Again:
                if on_slice is not None:
                    on_slice()
                if self._closed:
                    raise closed_while_waiting() from None
                if self._dropped(sock):
                    raise self._connection_lost() from None
                if time.monotonic() >= deadline:
                    raise plans.timed_out(timeout) from None
                continue
            return frame, recv_buffers(sock)

    def _connection_lost(self) -> ConnectionLost:
        return ConnectionLost(f"the hub at {self.endpoint} dropped the connection while the call was "
                              "in flight (e.g. a message over its max_message_size); it may have run")

    def _dropped(self, sock: zmq.Socket[Any]) -> bool:
        watch = self._watches.get(sock)
        return watch is not None and watch.dropped()

    # --- internals ---------------------------------------------------------------------

    def _new_socket(self) -> zmq.Socket[Any]:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, b"c-" + secrets.token_hex(8).encode())  # named by cancels
        configure_dealer(sock, self.settings, self._curve, self.connect_timeout)
        assert self.endpoint is not None  # set whenever the pool is enabled
        sock.connect(self.endpoint)
        presence.fail_fast(sock, self.endpoint)  # no hub there: fail at once, not in connect_timeout
        if not self.endpoint.startswith("inproc://"):  # inproc connections never drop
            self._watches[sock] = ConnectionWatch(sock)
        return sock

    def _close_socket(self, sock: zmq.Socket[Any], linger: int = 0) -> None:
        watch = self._watches.pop(sock, None)
        if watch is not None:
            watch.close(sock)
        sock.close(linger)

    def _socket(self) -> zmq.Socket[Any]:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._new_socket()
            self._local.sock = sock
            with self._lock:  # close sockets of threads that have ended
                alive = []
                for thread, other in self._sockets:
                    owner = thread()
                    if owner is not None and owner.is_alive():
                        alive.append((thread, other))
                    else:
                        self._close_socket(other)
                self._sockets = alive + [(weakref.ref(threading.current_thread()), sock)]
        return sock



class HubTransport:
    """The served route: a request on the calling thread's own DEALER to the hub, its reply
    back on it. The hub judges the deadline; the caller gives up HUB_GRACE after it.
    ``cancel()`` may come from any thread: the thread that owns the socket sends the
    CANCEL (the hub honours it only from the connection that sent the call) within a
    poll slice."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._cancels: set[int] = set()

    def roundtrip(self, frame: bytes, buffers: Sequence[Any], timeout: float) -> Reply:
        reply: Reply = self.client._io(self._roundtrip, frame, buffers, timeout)
        return reply

    def _roundtrip(self, frame: bytes, buffers: Sequence[Any], timeout: float) -> Reply:
        client = self.client
        sock = client._socket()
        request_id = reply_id(frame, any_kind=True) or 0
        watch = client._watches.get(sock)
        if watch is not None:
            watch.forget()  # a drop before this call is not this call's
        client._send(sock, frame, buffers)
        deadline = time.monotonic() + timeout + HUB_GRACE

        def on_slice() -> None:
            if request_id in self._cancels:
                self._cancels.discard(request_id)
                client._send_cancel(sock, request_id)

        try:
            while True:
                reply, reply_buffers = client._receive(sock, deadline, timeout, on_slice)
                if reply_id(reply) == request_id:
                    return reply, reply_buffers
                # else a late reply to an earlier call on this socket
        except KeyboardInterrupt:  # Ctrl-C: the call must not keep running in the daemon
            client._send_cancel(sock, request_id)
            raise
        finally:
            self._cancels.discard(request_id)

    def cancel(self, request_id: int) -> None:
        self._cancels.add(request_id)


class ConnectionWatch:
    """Tells whether the connection behind a socket dropped, from libzmq's monitor events
    (the hub closes a connection that sent a frame over its MAXMSGSIZE, for instance)."""

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    def forget(self) -> None:
        while int(self.monitor.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            self.monitor.recv_multipart()

    def dropped(self) -> bool:
        seen = False
        while self.monitor.poll(0):
            self.monitor.recv_multipart()
            seen = True
        return seen

    def close(self, sock: zmq.Socket[Any]) -> None:
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(0)


class CallFuture(Future[Any]):
    """A Future for one call. cancel() before it starts means it never runs; cancel() while
    it runs cancels it on its transport (see cancel_mode) and the future then ends with
    zbridge.Cancelled."""

    def __init__(self, client: Client) -> None:
        super().__init__()
        self._client = client
        self.cancel_requested = threading.Event()
        self._cancel_hook: Callable[[], None] | None = None

    def bind_cancel(self, hook: Callable[[], None] | None) -> None:
        """How to cancel the running call (its transport's ``cancel(request_id)``)."""
        self._cancel_hook = hook
        if hook is not None and self.cancel_requested.is_set():
            hook()

    def cancel(self) -> bool:
        if super().cancel():
            return True
        if self.done():
            return False
        self.cancel_requested.set()
        hook = self._cancel_hook
        if hook is not None:
            hook()
        return True
