"""The hub: the broker's sockets and poll loop, and the supervisor's processes.

Runs in a background thread of the caller (``Bridge``) or as the main thread of
``zbridge serve``. Only this thread touches the hub's sockets; other threads talk to it
through the inproc ``events`` socket (daemon exits, stop requests).

The broker is shared with the callers of the embedded direct route (``zbridge/direct.py``)
under the pool's lock (``guard``), which this thread, like them, holds only while the
broker decides: **decide under the lock, act outside it**. Sends, spawns, kills, /proc
reads and logging happen after the lock is released, in the order the broker decided.

Three rules keep it from wedging, whatever its peers do:

* **It never blocks in a send.** Every send is non-blocking; a peer whose pipe is full
  (it stopped reading) or that is gone loses that message, which is counted, logged once
  per peer and fed back to the broker as an event (a stream that lost an item is stopped).
* **Replies before verdicts.** Before deadlines and heartbeats are judged, everything
  daemons have sent is read and applied, so a stall of this thread (a host holding the GIL)
  never turns a result that reached the hub into ``WorkerLost`` or ``CallTimeout``.
* **It fails loudly.** If this thread dies of an exception, the pool is broken: queued
  and later calls get ``PoolUnavailable`` naming the cause at once, running ones
  ``WorkerLost`` as their daemons stop (loky's ``terminate_broken``).
"""

from __future__ import annotations

import logging
import math
import os
import select
import socket
import sys
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from typing import Any, Callable, cast

import zmq

from .actions import Action, Answered, Interrupt, Kill, Lease, Note, Spawn, ToClient, ToDaemon
from . import forks
from .broker import Broker
from .config import Settings
from .control import Controls
from .direct import lend
from .endpoints import (
    check_bindable,
    create_private_dir,
    ipc_endpoint,
    remove_private_dir,
)
from .errors import BridgeError, InvalidRequest
from .fdguard import FdGuard, guard_hub
from .leasedesk import LeaseDesk, desk_path
from .logs import configure as configure_logs
from .logs import note_text
from .pickling import refuse_remote
from .preload import Plan
from .protocol import (FLAG_PREWARM, MAX_BUFFERS, VERSION, Kind, capabilities, decode_credit, decode_heartbeat,
                       decode_ready, encode_cancel, encode_error, encode_heartbeat, encode_result,
                       read_header, refusal)
from .security import HubSecurity
from .shield import Guard, mark_internal
from .state import Job, describe_exit
from .supervisor import Supervisor
from .wire import SMALL

log = logging.getLogger("zbridge.hub")
REAP_INTERVAL = 0.5
DRAIN_LIMIT = 100_000    # daemon messages read before judging time (bounds a flooding daemon)
DISCARD_CHUNK = 1_000    # frames of an over-long message dropped per loop, so others still get turns
WARNED_PEERS = 1024      # peers remembered for "logged once"
SNAPSHOT_INTERVAL = 0.5  # how stale the metrics exporter's copy of status() may be

_RCVMORE, _SNDMORE, _NOBLOCK = int(zmq.RCVMORE), int(zmq.SNDMORE), int(zmq.NOBLOCK)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
_REQUEST, _REPLY = Kind.REQUEST, Kind.REPLY


def expose_tracebacks(settings: Settings, frontend: str) -> bool:
    if settings.expose_tracebacks == "auto":
        return not frontend.startswith("tcp://")  # local callers see tracebacks, remote ones not
    return settings.expose_tracebacks == "true"


class Waker:
    """A pipe another thread writes a byte to, so the hub's poll wakes up. Its fds close
    with the object (a caller may still wake a hub that has stopped)."""

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._w, False)
        weakref.finalize(self, _close_fds, self.fd, self._w)

    def wake(self) -> None:
        try:
            os.write(self._w, b"!")
        except BlockingIOError:
            pass  # already full of wake-ups

    def clear(self) -> None:
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass



def _close_fds(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


def daemon_command(settings: Settings, endpoint: str, heartbeat: str, tools: list[str],
                   extra: list[str]) -> list[str]:
    cmd = [settings.python or sys.executable, "-m", "zbridge_daemon", "--connect", endpoint,
           "--max-message-size", str(settings.max_message_size), "--heartbeat", heartbeat,
           "--heartbeat-interval", str(settings.heartbeat_interval),
           "--heartbeat-misses", str(settings.heartbeat_misses),
           "--max-rss-mb", str(settings.max_rss_mb)] + extra
    for spec in tools:
        cmd += ["--tools", spec]
    return cmd


def _read_buffers(sock: zmq.Socket[Any]) -> tuple[tuple[Any, ...], bool]:
    """The buffer frames after a message's first frame, as zmq.Frame objects (never
    copied: they are forwarded as they are), and whether the message ended within
    MAX_BUFFERS of them (if not, the rest is still to be discarded)."""
    parts = []
    for _ in range(MAX_BUFFERS):
        part = sock.recv(copy=False)
        parts.append(part)
        if not part.more:
            return tuple(parts), True
    return tuple(parts), False


def _discard_rest(sock: zmq.Socket[Any], limit: int | None = None) -> tuple[int, bool]:
    """Drop the remaining frames of a message: (frames dropped, whether the message ended)."""
    dropped, recv = 0, sock.recv
    while limit is None or dropped < limit:
        dropped += 1
        if not recv(copy=False).more:  # ~1 µs a frame; getsockopt(RCVMORE) doubled it
            return dropped, True
    return dropped, False


class Hub:
    _next_timer = 0.0  # when broker.tick() may next have work: set by run() and _judge_time

    def __init__(self, settings: Settings, tools: list[str], *, frontend: str,
                 context: zmq.Context[Any] | None = None, direct: bool = False) -> None:
        self.settings = settings
        self.context = context or zmq.Context()
        self._own_context = context is None
        self.private_dir = create_private_dir()
        self.backend_endpoint = ipc_endpoint(self.private_dir, "backend")
        self.heartbeat_endpoint = ipc_endpoint(self.private_dir, "heartbeat")
        self.events_endpoint = f"inproc://zbridge-events-{uuid.uuid4().hex}"
        self.frontend_endpoint = frontend
        self._stop_at: float | None = None   # drain deadline once stopping
        self._stopped = threading.Event()
        self._post_lock = threading.Lock()  # _post never races the shutdown
        self._failed: list[tuple[str, bytes, Any, bool, tuple[Any, ...]]] = []  # sends that failed while applying actions
        self._warned: OrderedDict[bytes, None] = OrderedDict()
        self._discarding: list[Any] | None = None  # [client, frames] of an over-long message
        self._pending: list[Action] = []     # actions a handler produced while actions ran
        self.security: HubSecurity | None = None
        self.snapshot: dict[str, Any] | None = None    # status() + histograms for the metrics thread
        self.loop_lag = 0.0                  # worst late wake-up since the last snapshot
        self._exporter = None
        self.fd_guard: FdGuard | None = None  # refuses connections near the fd limit
        # the pool's lock: this thread and direct callers (zbridge/direct.py) hold it only
        # while the broker decides
        self.guard = Guard()
        self.desk: LeaseDesk | None = None         # local served clients borrow daemons here
        lending = settings.direct and desk_path(frontend) is not None
        self.direct = direct or lending            # daemons get channels
        self.thread_ident: int | None = None       # the thread running the loop
        self._waker = Waker()
        self._posted: deque[Action] = deque()      # broker actions from calling threads
        self._adopted: deque[Job] = deque()        # owners' jobs whose reply we read instead
        self._orphans: dict[int, Job] = {}         # channel fd: its job, while we read it
        self._next_prune = 0.0
        self._forked = False                       # this is a forked child's copy
        configure_logs(settings.log_format)
        try:
            self.security = HubSecurity(settings, self.context, self.private_dir, frontend)
            expose = expose_tracebacks(settings, frontend)
            # pickle never crosses a network: no endpoint of a pickle hub may be tcp
            refuse_remote(settings.serializer, frontend, settings.daemon_bind, settings.heartbeat_bind)
            pickle = ["--allow-pickle"] if settings.serializer == "pickle" else []
            self.supervisor = Supervisor(
                daemon_command(settings, self.backend_endpoint, self.heartbeat_endpoint, tools,
                               self.security.local_daemon_args +
                               ["--expose-tracebacks" if expose else "--no-expose-tracebacks"] + pickle +
                               ["--stacks-dir", self.private_dir]),
                self._notify_exit, stop_timeout=settings.stop_timeout,
                channels=settings.max_message_size + 4096 if self.direct else 0,
                preload=Plan.for_settings(settings))
            # daemons not spawned by us are admitted only where they can connect at all
            self.broker = Broker(settings, remote_ok=bool(settings.daemon_bind),
                                 probe=self.supervisor.process_state, expose_errors=expose)
            self.control = Controls(self)  # scale, reload, stacks
            self._bind()
            path = desk_path(frontend)
            if lending and path is not None:
                self.desk = LeaseDesk(self, path)
            self.fd_guard = guard_hub(self)
            forks.register(self)
            if settings.metrics:
                from .metrics import start_exporter
                self.snapshot = self.publish_snapshot()
                self._exporter = start_exporter(settings, self, self.fd_guard)
        except BaseException:
            self._close_sockets()
            if self.security is not None:
                self.security.stop()
            remove_private_dir(self.private_dir)
            raise

    def _socket(self, kind: int) -> zmq.Socket[Any]:
        sock = self.context.socket(kind)
        sock.linger = 0
        return sock

    def _bind(self) -> None:
        max_size = self.settings.max_message_size + 4096
        self.frontend = self._socket(zmq.ROUTER)
        self.backend = self._socket(zmq.ROUTER)
        self.events = self._socket(zmq.PULL)
        self.heartbeat = self._socket(zmq.ROUTER)
        self.heartbeat.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
        for sock in (self.backend, self.heartbeat):  # a daemon reconnecting after a network
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # loss takes its identity back from the dead link
        for sock in (self.frontend, self.backend):
            # a send to a full or vanished peer fails at once instead of blocking or vanishing
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, max_size)
        assert self.security is not None  # made before the sockets
        check_bindable(self.frontend_endpoint, authenticated=self.security.frontend_curve)
        self.security.secure(self.frontend, [self.backend, self.heartbeat])
        old = os.umask(0o077)  # ipc socket files readable by us only
        try:
            self.backend.bind(self.backend_endpoint)
            self.heartbeat.bind(self.heartbeat_endpoint)
            if self.settings.daemon_bind:
                self.backend.bind(self.settings.daemon_bind)
                self.heartbeat.bind(self.settings.heartbeat_bind)
            self.frontend.bind(self.frontend_endpoint)
        finally:
            os.umask(old)
        self.events.bind(self.events_endpoint)

    # --- cross-thread entry points -----------------------------------------------------

    def _post(self, *frames: bytes) -> None:
        """From another thread (a daemon's watcher, close()): never once the hub has stopped."""
        with self._post_lock:
            if self._stopped.is_set():
                return
            try:
                sock = self.context.socket(zmq.PUSH)
            except zmq.ZMQError:
                return  # the context is ending: nobody is left to tell
            sock.linger = 1000
            try:
                sock.connect(self.events_endpoint)
                sock.send_multipart(list(frames))
            finally:
                sock.close()

    def _notify_exit(self, ident: bytes, code: int | None, tail: str) -> None:
        if not self._stopped.is_set():
            self._post(b"exit", ident, b"" if code is None else str(code).encode(),
                       tail.encode(errors="replace"))

    def send_later(self, client: bytes, frame: bytes) -> None:
        """From another thread: ``frame`` to ``client``, sent by the hub thread."""
        self._post(b"reply", client, frame)

    def request_stop(self, drain_timeout: float = 10.0) -> None:
        """Ask the loop to drain (running calls may finish for drain_timeout) and stop."""
        if not self._stopped.is_set():
            self._post(b"stop", str(drain_timeout).encode())

    # --- the loop ----------------------------------------------------------------------

    def _decide(self, event: Callable[..., list[Action]], *args: Any) -> list[Action]:
        """One broker event under the pool's lock; its actions are carried out after it."""
        with self.guard:
            return event(*args)

    def run(self, prewarm: bool = False, wake_fd: int | None = None,
            on_wake: Callable[[Hub], None] | None = None) -> None:
        """Serve until stopped; always leaves no daemon, socket or ipc file behind.

        Polls file descriptors, not zmq sockets (zmq_poll costs two poll() calls and two
        ZMQ_EVENTS reads per socket per wake-up): a zmq socket's fd only says that it has
        news, edge-triggered, so a socket this thread used since (a send may take its
        signal) is asked for ZMQ_EVENTS before the loop sleeps."""
        self.thread_ident = threading.get_ident()
        if threading.current_thread() is not threading.main_thread():
            mark_internal()  # a log handler on this thread must not call the pool: it would wait for us
        try:
            self._loop(prewarm, wake_fd, on_wake)
        except BaseException as exc:
            self._break(exc)
            raise
        finally:
            self._shutdown()

    def _loop(self, prewarm: bool, wake_fd: int | None, on_wake: Callable[[Hub], None] | None) -> None:
        poller = select.poll()
        self._poller = poller
        sockets = {cast(int, sock.getsockopt(zmq.FD)): sock for sock in (self.backend, self.frontend, self.events, self.heartbeat)}
        for fd in sockets:
            poller.register(fd, select.POLLIN)
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
        poller.register(self._waker.fd, select.POLLIN)
        if self.desk is not None:
            poller.register(self.desk.fileno(), select.POLLIN)
        next_reap = next_beat = next_snapshot = 0.0
        publish = self._exporter is not None
        backend, frontend, heartbeat, events = self.backend, self.frontend, self.heartbeat, self.events
        poll, clock = poller.poll, time.monotonic
        look_heartbeat = look_events = True  # ask these for ZMQ_EVENTS (the ROUTERs: always)
        if prewarm:
            self._apply(self._decide(self.broker.start, time.monotonic()))
        now = clock()
        self._next_timer = now  # judged at once, which arms the timer
        while not self._done(now):
            # Timers are judged only when one may be due: _next_timer is set after each
            # tick() (at most REAP_INTERVAL ahead) and lowered by whatever starts an
            # earlier one, so the hot path never scans the daemons.
            due = min(self._next_timer, next_beat)
            wait = due - now
            ready: dict[Any, int] = {}
            for sock in (backend, frontend):
                if cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
                    ready[sock] = _POLLIN
            if look_heartbeat and cast(int, heartbeat.getsockopt(_EVENTS)) & _POLLIN:
                ready[heartbeat] = _POLLIN
            if look_events and cast(int, events.getsockopt(_EVENTS)) & _POLLIN:
                ready[events] = _POLLIN
            for fd, _ in poll(0 if ready or wait <= 0.0 else math.ceil(wait * 1000.0)):
                ready[sockets.get(fd, fd)] = _POLLIN  # a socket's fd: maybe a message (recvs cope)
            now = clock()
            if now - due > self.loop_lag:  # woke after its timer was due: the thread was starved
                self.loop_lag = now - due
            others = len(ready)  # anything but the three ROUTERs may start a timer
            if backend in ready:
                self._drain(backend, self._on_backend, now, 1)  # one each, then the others' turn
                others -= 1
            if frontend in ready:
                self._read_clients(now)
                others -= 1
            if heartbeat in ready:
                self._drain(heartbeat, self._on_heartbeat, now)
                others -= 1
            look_events = False
            if events in ready:
                while cast(int, events.getsockopt(_EVENTS)) & _POLLIN:
                    self._on_event(now)
            if wake_fd is not None and wake_fd in ready and on_wake is not None:
                on_wake(self)
            self._serve_owners(ready, now)
            if self.desk is not None:  # a borrower judges its own deadline: no timer to look at
                others -= self._serve_desk(ready, now)
            look_heartbeat = bool(others) or now >= self._next_timer
            if look_heartbeat:
                now = self._judge_time()
            if now >= next_reap:
                self.supervisor.reap()
                next_reap = now + REAP_INTERVAL
            if now >= next_beat:
                self._beat()
                look_heartbeat = True
                next_beat = now + self.settings.heartbeat_interval
            if publish and now >= next_snapshot:
                self.snapshot = self.publish_snapshot(now)
                next_snapshot = now + SNAPSHOT_INTERVAL

    def _judge_time(self) -> float:
        """Deadlines and heartbeats, judged only after everything daemons sent is applied;
        then the next time they may need judging (never more than REAP_INTERVAL ahead)."""
        now = time.monotonic()
        self._drain(self.backend, self._on_backend, now)
        self._drain(self.heartbeat, self._on_heartbeat, now)
        self._read_orphans(now)
        now = time.monotonic()
        with self.guard:
            actions = self.broker.tick(now)
            wait = self.broker.next_wakeup(now)
        self._apply(actions)
        self._next_timer = now + (REAP_INTERVAL if wait is None else min(wait, REAP_INTERVAL))
        return now

    def _drain(self, sock: zmq.Socket[Any], handle: Callable[[bytes, float], None], now: float,
               limit: int = DRAIN_LIMIT) -> int:
        """Handle what is queued on a ROUTER without a poll per message."""
        recv = sock.recv
        for n in range(limit):
            try:
                ident = recv(_NOBLOCK)
            except zmq.Again:
                return n
            handle(ident, now)
        return limit

    def _done(self, now: float) -> bool:
        if self._stop_at is None:
            return False
        with self.guard:
            if self.broker.running() and now < self._stop_at:
                return False
            actions = self.broker.abandon_running("bridge stopped before the call finished")
        self._apply(actions)
        return True

    def _break(self, exc: BaseException) -> None:
        """This thread is dying of ``exc``: the pool is broken, and says why at once."""
        reason = f"its hub thread died: {type(exc).__name__}: {exc}"[:500]
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            reason = f"its hub stopped ({type(exc).__name__})"
        else:
            log.critical("the pool is broken: %s", reason, exc_info=exc)
        try:
            with self.guard:
                actions = self.broker.break_(reason) + self.broker.abandon_running(reason)
            self._wake_owners(actions)
        except BaseException:  # noqa: BLE001 - breaking must not hide the original error
            log.exception("while breaking the pool")

    # --- clients -------------------------------------------------------------------------

    def _read_clients(self, now: float) -> None:
        """One client message per poll (the poll says whether more wait, and daemons get
        their turn in between); an over-long message is dropped a chunk per call."""
        if self._discarding is not None and not self._discard_client_frames():
            return
        frontend = self.frontend
        try:
            client = frontend.recv(_NOBLOCK)
        except zmq.Again:
            return
        part = frontend.recv(copy=False)  # its .more is cheaper than getsockopt(RCVMORE)
        # a large frame is not copied: its memoryview goes through the broker (which only
        # measures it, peeks at its start and forwards it) and is sent on zero-copy
        frame = part.bytes if len(part) < SMALL else cast(bytes, part.buffer)
        if not part.more:
            self._on_client(client, frame, now)
            return
        extra, ended = _read_buffers(frontend)
        if ended:
            self._on_client(client, frame, now, extra)
        else:
            self._discarding = [client, 1 + len(extra)]

    def _discard_client_frames(self) -> bool:
        """Drop frames of a message with more than one; True once it ended (and was answered)."""
        assert self._discarding is not None
        dropped, ended = _discard_rest(self.frontend, DISCARD_CHUNK)
        self._discarding[1] += dropped
        if ended:
            client, frames = self._discarding
            self._discarding = None
            self._send_error(client, 0, InvalidRequest(
                f"expected at most {1 + MAX_BUFFERS} frames per message (a frame and "
                f"{MAX_BUFFERS} buffer frames), got {frames}"))
        return ended

    def _on_client(self, client: bytes, frame: bytes, now: float, extra: tuple[Any, ...] = ()) -> None:
        try:
            header = read_header(frame)
        except BridgeError as exc:  # another version is answered in its own layout
            self._apply([ToClient(client, refusal(frame, exc))])
            return
        kind = header.kind
        if kind is _REQUEST:
            broker = self.broker
            with self.guard:
                actions = broker.submit(client, header, frame, now, extra)
                wait = broker.next_wakeup(now) if broker.queued else None
            self._apply(actions)
            if wait is not None:  # it waits (or the pool grows, or is hopeless): any timer may move
                if now + wait < self._next_timer:
                    self._next_timer = now + wait
            else:  # it runs (or was refused): its deadline is the one timer it may start
                deadline = now + (header.timeout_ms / 1000.0 if header.timeout_ms else self.settings.timeout)
                if deadline < self._next_timer:
                    self._next_timer = deadline
            return
        if kind is not Kind.CREDIT:  # a cancel or prewarm may start a timer: judge at once
            self._next_timer = now
        if extra:
            self._send_error(client, header.id, InvalidRequest(
                f"only a REQUEST may carry buffer frames, not {kind.name}"))
        elif kind is Kind.CREDIT:
            try:
                credit = decode_credit(frame)
            except BridgeError:
                return  # CREDIT is never answered; a bad one is simply not forwarded
            self._apply(self._decide(self.broker.client_credit, client, header.id, credit, now))
        elif kind is Kind.CANCEL:  # never answered itself; only the sender's own calls
            self._apply(self._decide(self.broker.cancel, client, header.id, now))
        elif kind is Kind.STATUS:
            if header.flags & FLAG_PREWARM:
                self._apply(self._decide(self.broker.prewarm, now))
            self._apply([ToClient(client, encode_result(header.id, self.status(now)))])
        elif kind is Kind.CONTROL:  # scale, reload, stacks (zbridge/control.py)
            self.control.on_message(client, header, frame, now)
        else:
            self._send_error(client, header.id, InvalidRequest(
                f"clients may send REQUEST, CREDIT, CANCEL, STATUS or CONTROL, not {kind.name}"))

    def _send_error(self, client: bytes, id: int, error: BridgeError) -> None:
        self._apply([ToClient(client, encode_error(id, error))])

    # --- daemons -----------------------------------------------------------------------

    def _on_backend(self, ident: bytes, now: float) -> None:
        backend = self.backend
        part = backend.recv(copy=False)
        frame = part.bytes if len(part) < SMALL else cast(bytes, part.buffer)  # as for clients
        extra: tuple[Any, ...] = ()
        if part.more:
            extra, ended = _read_buffers(backend)
            if not ended:
                dropped, _ = _discard_rest(backend)
                log.warning("dropping a %d-frame message from daemon %r", dropped + len(extra) + 2, ident)
                return
        try:
            header = read_header(frame)
            kind = header.kind
            if kind is _REPLY:
                actions = self._decide(self.broker.daemon_reply, ident, header, frame, now, extra)
                self._apply(actions)
                idle = self.settings.idle_timeout  # the daemon's idle timer starts now
                if len(actions) > 2:  # more than the answer and the next dispatch (a recycle)
                    self._next_timer = now
                elif idle > 0.0 and now + idle < self._next_timer:
                    self._next_timer = now + idle
            elif kind is Kind.PARTIAL:
                self._apply(self._decide(self.broker.daemon_partial, ident, header, frame, now, extra))
            elif extra:
                log.warning("dropping a %s with buffer frames from daemon %r", kind.name, ident)
            elif kind is Kind.READY:
                self._next_timer = now  # its heartbeat and idle timers start
                self._apply(self._decide(self.broker.daemon_ready, ident, decode_ready(frame), now))
            elif kind is Kind.DISCONNECT:
                self._next_timer = now
                self._apply(self._decide(self.broker.daemon_exited, ident, now, "daemon disconnected"))
        except BridgeError as exc:
            log.warning("dropping a malformed message from daemon %r: %s", ident, exc)

    def _on_heartbeat(self, ident: bytes, now: float) -> None:
        frame = self.heartbeat.recv()
        if self.heartbeat.getsockopt(_RCVMORE):
            _discard_rest(self.heartbeat)
            return
        try:
            if read_header(frame).kind is Kind.HEARTBEAT:
                beat = decode_heartbeat(frame)
                with self.guard:
                    self.broker.daemon_beat(ident, beat, now)
        except BridgeError as exc:
            log.warning("dropping a malformed heartbeat from %r: %s", ident, exc)

    def _beat(self) -> None:
        beat = encode_heartbeat()
        with self.guard:
            daemons = list(self.broker.daemons)
        for ident in daemons:
            self._send_beat(ident, beat)

    def _send_beat(self, ident: bytes, frame: bytes) -> None:
        try:  # not ROUTER_MANDATORY: a full or unknown peer just misses a beat
            self.heartbeat.send_multipart([ident, frame], _NOBLOCK)
        except zmq.ZMQError:
            pass

    def _on_event(self, now: float) -> None:
        frames = self.events.recv_multipart()
        if frames[0] == b"exit":
            self.control.daemon_exited(frames[1])
            code = int(frames[2]) if frames[2] else None
            self._apply(self._decide(self.broker.daemon_exited, frames[1], now, describe_exit(code), code,
                                     frames[3].decode(errors="replace")))
        elif frames[0] == b"stop":
            self.begin_stop(float(frames[1]), now)
        elif frames[0] == b"reply":
            self._apply([ToClient(frames[1], frames[2])])

    def begin_stop(self, drain_timeout: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._stop_at is None:
            self._apply(self._decide(self.broker.close))
            self._stop_at = now + drain_timeout
        else:  # a second stop request means now
            self._stop_at = now

    # --- actions -----------------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        """Carry out the broker's actions, after its lock. A failed send becomes a new broker
        event, taken after the whole list, so the broker is never re-entered while it is
        being obeyed."""
        while actions:
            for action in actions:
                match action:
                    case ToClient(client, frame, extra):
                        self._send(self.frontend, client, frame, "client", extra)
                    case ToDaemon(daemon, frame, extra):
                        self._send(self.backend, daemon, frame, "daemon", extra)
                    case Lease(job):
                        lend(self, job)
                    case Answered(job):
                        job.owner.wake(job)
                    case Spawn(daemon):
                        self._spawn(daemon)
                    case Kill(daemon, reason, hard):
                        self._kill(daemon, reason, hard)
                    case Interrupt(daemon, request_id):  # via the heartbeat thread: the main one is busy
                        self._send_beat(daemon, encode_cancel(request_id))
                    case Note(event, level, fields):
                        log_note(event, level, fields)
            actions = self._take_failures()

    def _wake_owners(self, actions: list[Action]) -> None:
        """Only the wake-ups of a list of actions (when nothing else can be carried out)."""
        for action in actions:
            if isinstance(action, Answered):
                action.job.owner.wake(action.job)

    def _send(self, sock: zmq.Socket[Any], ident: bytes, frame: bytes, role: str,
              extra: tuple[Any, ...] = ()) -> None:
        try:
            sock.send(ident, _SNDMORE | _NOBLOCK)
            if extra:  # buffer frames: the zmq.Frame objects as received, shared, not copied
                sock.send(frame, _SNDMORE | _NOBLOCK, copy=len(frame) < SMALL)
                last = len(extra) - 1
                for i, part in enumerate(extra):
                    sock.send(part, _NOBLOCK if i == last else _SNDMORE | _NOBLOCK, copy=False)
                return
            sock.send(frame, _NOBLOCK, copy=len(frame) < SMALL)
        except zmq.ZMQError as exc:
            self._failed.append((role, ident, frame, exc.errno == zmq.EHOSTUNREACH, extra))

    def _take_failures(self) -> list[Action]:
        actions, self._pending = self._pending, []
        if not self._failed:
            return actions
        failed, self._failed = self._failed, []
        now = time.monotonic()
        with self.guard:
            for role, ident, frame, gone, extra in failed:
                if role == "client":
                    actions += self.broker.client_unreachable(ident, frame, gone, now)
                elif role == "daemon":
                    actions += self.broker.daemon_unreachable(ident, frame, now, extra)
                else:  # a kill for a daemon that is not our process: forget it now
                    actions += self.broker.daemon_exited(ident, now, frame)
        for role, ident, _, gone, _ in failed:
            if role == "client":
                self._warn_once(ident, gone)
        return actions

    def _warn_once(self, client: bytes, gone: bool) -> None:
        if client in self._warned:
            return
        self._warned[client] = None
        if len(self._warned) > WARNED_PEERS:
            self._warned.popitem(last=False)
        # a client that exits with a reply on its way is ordinary; one that stops reading is not
        log_note("replies_dropped", logging.INFO if gone else logging.WARNING, {
            "peer": repr(client)[:80], "why": "gone" if gone else "not reading (its queue is full)",
            "counted_as": "dropped_replies"})

    def _kill(self, ident: bytes, reason: str, hard: bool) -> None:
        if not self.supervisor.kill(ident, hard):
            self._failed.append(("remote", ident, reason, True, ()))

    def _spawn(self, ident: bytes) -> None:
        try:
            pid, channel = self.supervisor.spawn(ident)
        except OSError as exc:
            self._failed.append(("remote", ident, f"cannot start daemon: {exc}", True, ()))
            return
        self._pending += self._decide(self.broker.daemon_spawned, ident, pid, channel)

    def let_go_in_child(self, devnull: int) -> None:
        """In a forked child (``zbridge/forks.py``): the daemons' lifelines and channels
        are pointed at /dev/null, and nothing is posted to a hub thread that is not here."""
        self._forked = True
        self.guard.reset()
        for fd in self.supervisor.fds():
            try:
                os.dup2(devnull, fd)
            except OSError:
                continue

    # --- the embedded direct route (zbridge/direct.py) ----------------------------------

    def post(self, actions: list[Action]) -> None:
        """From a calling thread: broker actions for this thread to carry out."""
        if not self._stopped.is_set() and not self._forked:
            self._posted.extend(actions)
            self._waker.wake()

    def adopt(self, job: Job) -> None:
        """From a calling thread: ``job`` was answered while its daemon still owes the
        reply; this thread reads it from the channel, so the daemon comes back warm."""
        if not self._stopped.is_set() and not self._forked:
            self._adopted.append(job)
            self._waker.wake()

    def _serve_owners(self, ready: dict[Any, int], now: float) -> None:
        """Actions posted by calling threads; channels they handed over; replies on those."""
        if self._waker.fd in ready:
            self._waker.clear()
            posted = []
            while self._posted:
                posted.append(self._posted.popleft())
            self._apply(posted)
            while self._adopted:
                job = self._adopted.popleft()
                fd = job.channel.fileno()
                if fd >= 0 and fd not in self._orphans:
                    self._orphans[fd] = job
                    self._poller.register(fd, select.POLLIN)
                    ready[fd] = _POLLIN  # its reply may be there already
        if self._orphans:
            for fd in [fd for fd in self._orphans if fd in ready]:
                self._on_orphan(fd, now)
            if now >= self._next_prune:
                self._next_prune = now + REAP_INTERVAL
                self._prune_orphans()

    def _serve_desk(self, ready: dict[Any, int], now: float) -> int:
        """Borrowers (local served clients, ``leasedesk.py``): new ones, and their messages.
        Returns how many of the ready fds were the desk's."""
        desk = self.desk
        assert desk is not None
        served = 0
        if desk.fileno() in ready or (desk.paused_until and now >= desk.paused_until):
            served += desk.fileno() in ready
            if desk.paused_until:  # its pause is over: poll the listener again
                self._poller.register(desk.fileno(), select.POLLIN)
                desk.paused_until = 0.0
            for fd in desk.accept(now):
                self._poller.register(fd, select.POLLIN)
                ready[fd] = _POLLIN  # its first message may be there already
            if desk.paused_until:  # out of room: the listener is not polled until then
                self.forget_fd(desk.fileno())
        for fd in [fd for fd in ready if fd in desk.borrowers]:
            desk.on_readable(fd, now)
            served += 1
        return served

    def forget_fd(self, fd: int) -> None:
        """Stop polling ``fd`` (a borrower that left)."""
        try:
            self._poller.unregister(fd)
        except (KeyError, ValueError):
            pass

    def _read_orphans(self, now: float) -> None:
        """Before judging time: late replies already waiting on adopted channels."""
        if self._orphans:
            for fd in list(self._orphans):
                self._on_orphan(fd, now)

    def _on_orphan(self, fd: int, now: float) -> None:
        """An adopted channel may be readable: its late reply (reported, so the daemon is
        free), or its end (the daemon is gone: the broker hears that from its exit)."""
        job = self._orphans[fd]
        try:
            frame, buffers = job.channel.recv(socket.MSG_DONTWAIT)
        except (BlockingIOError, TimeoutError):
            return
        except (EOFError, OSError):
            self._drop_orphan(fd)
            return
        self._drop_orphan(fd)  # before the daemon is free: then it is another caller's
        try:
            header = read_header(frame)
        except BridgeError:
            return
        if header.kind is Kind.REPLY:
            self._apply(self._decide(self.broker.daemon_reply, job.daemon or b"", header, frame, now,
                                     tuple(buffers)))
            self._next_timer = now  # the daemon is free: its idle timer starts

    def _prune_orphans(self) -> None:
        """Channels whose reply is no longer awaited (their daemon was killed or exited)."""
        with self.guard:
            gone = [fd for fd, job in self._orphans.items()
                    if not self.broker.awaits_reply(job.daemon or b"", job.client, job.id)]
        for fd in gone:
            self._drop_orphan(fd)

    def _drop_orphan(self, fd: int) -> None:
        self._orphans.pop(fd)
        try:
            self._poller.unregister(fd)
        except (KeyError, ValueError):
            pass

    def status(self, now: float | None = None) -> dict[str, Any]:
        with self.guard:
            status = self.broker.status(time.monotonic() if now is None else now)
        status["endpoint"] = self.frontend_endpoint
        status["hub_pid"] = os.getpid()
        status["protocol"] = VERSION
        status["capabilities"] = capabilities(self.settings.serializer == "pickle", self.desk is not None)
        status["max_message_size"] = self.settings.max_message_size
        if self.supervisor.template is not None:
            status["preload"] = self.supervisor.template.status()
        return status

    def publish_snapshot(self, now: float | None = None) -> dict[str, Any]:
        """A fresh copy of status() and the per-tool histograms, for another thread to read
        (the metrics exporter); it is replaced whole, never changed in place."""
        snapshot = self.status(now)
        with self.guard:
            snapshot["histograms"] = self.broker.tools.histograms()
        snapshot["loop_lag_s"], self.loop_lag = self.loop_lag, 0.0
        return snapshot

    # --- teardown ----------------------------------------------------------------------

    def _close_sockets(self) -> None:
        desk = getattr(self, "desk", None)
        if desk is not None:
            desk.close()
        guard = getattr(self, "fd_guard", None)
        if guard is not None:  # its listeners restored before the sockets go
            guard.stop()
        exporter = getattr(self, "_exporter", None)
        if exporter is not None:
            exporter.stop()
        for name in ("frontend", "backend", "events", "heartbeat"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(0)

    def _shutdown(self) -> None:
        with self._post_lock:
            self._stopped.set()
        if self._exporter is not None:
            self._exporter.stop()
        try:
            self.supervisor.stop_all()
        finally:
            self._close_sockets()
            if self.security is not None:
                self.security.stop()
            remove_private_dir(self.private_dir)
            if self._own_context:
                self.context.term()


def log_note(event: str, level: int, fields: dict[str, Any]) -> None:
    """One broker note as one record on ``zbridge.hub``, its fields as structured extras."""
    if log.isEnabledFor(level):
        log.log(level, "%s", note_text(event, fields), extra={"event": event, **fields})


def start_embedded(settings: Settings, tools: list[str]) -> tuple[Hub | None, threading.Thread | None, zmq.Context[Any], str]:
    """A hub in a background thread of this process, on a fresh context and a private
    inproc endpoint: what Bridge and AsyncBridge embed. No hub when the pool is disabled."""
    context = zmq.Context()
    endpoint = f"inproc://zbridge-{uuid.uuid4().hex}"
    if not settings.pool_enabled:
        return None, None, context, endpoint
    try:
        hub = Hub(settings, tools, frontend=endpoint, context=context, direct=settings.direct)
    except BaseException:
        context.term()
        raise
    thread = threading.Thread(target=hub.run, kwargs={"prewarm": settings.prewarm},
                              name="zbridge-hub", daemon=True)
    thread.start()
    return hub, thread, context, endpoint
