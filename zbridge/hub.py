"""The hub: the broker's sockets and poll loop, and the supervisor's processes.

Runs in a background thread of the caller (``Bridge``) or as the main thread of
``zbridge serve``. Only this thread touches the hub's sockets; other threads talk to it
through the inproc ``events`` socket (daemon exits, stop requests).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid

import zmq

from .broker import Action, Broker
from .config import Settings
from .endpoints import check_bindable, create_private_dir, ipc_endpoint, remove_private_dir
from .errors import BridgeError, InvalidRequest
from .protocol import (FLAG_PREWARM, Kind, decode_cancel_owner, decode_heartbeat, decode_ready, encode_cancel,
                       encode_error, encode_heartbeat, encode_result, read_header)
from .security import HubSecurity
from .supervisor import Supervisor

log = logging.getLogger("zbridge.hub")
REAP_INTERVAL = 0.5
BATCH = 64             # messages handled per socket per poll
COPY_THRESHOLD = 65536  # below this, copying is cheaper than zero-copy bookkeeping


def expose_tracebacks(settings: Settings, frontend: str) -> bool:
    if settings.expose_tracebacks == "auto":
        return not frontend.startswith("tcp://")  # local callers see tracebacks, remote ones not
    return settings.expose_tracebacks == "true"


_RCVMORE, _SNDMORE = int(zmq.RCVMORE), int(zmq.SNDMORE)


def _recv_routed(sock: zmq.Socket) -> list[bytes]:
    """[identity, frame, ...] from a ROUTER; the usual two-frame case without the list
    building of recv_multipart, which is a visible share of the hub's time per message."""
    frames = [sock.recv()]
    while sock.getsockopt(_RCVMORE):
        frames.append(sock.recv())
    return frames


def _send_routed(sock: zmq.Socket, ident: bytes, frame: bytes) -> None:
    sock.send(ident, _SNDMORE)
    sock.send(frame, copy=len(frame) < COPY_THRESHOLD)


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


class Hub:
    def __init__(self, settings: Settings, tools: list[str], *, frontend: str,
                 context: zmq.Context | None = None) -> None:
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
        self.security: HubSecurity | None = None
        try:
            self.security = HubSecurity(settings, self.context, self.private_dir, frontend)
            traceback_flag = ("--expose-tracebacks" if expose_tracebacks(settings, frontend)
                              else "--no-expose-tracebacks")
            self.supervisor = Supervisor(
                daemon_command(settings, self.backend_endpoint, self.heartbeat_endpoint, tools,
                               self.security.local_daemon_args + [traceback_flag]),
                self._notify_exit, stop_timeout=settings.stop_timeout)
            # daemons not spawned by us are admitted only where they can connect at all
            self.broker = Broker(settings, remote_ok=bool(settings.daemon_bind))
            self._bind()
        except BaseException:
            self._close_sockets()
            if self.security is not None:
                self.security.stop()
            remove_private_dir(self.private_dir)
            raise

    def _socket(self, kind: int) -> zmq.Socket:
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
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, max_size)
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
        sock = self.context.socket(zmq.PUSH)
        sock.linger = 1000
        try:
            sock.connect(self.events_endpoint)
            sock.send_multipart(list(frames))
        finally:
            sock.close()

    def _notify_exit(self, ident: bytes, cause: str) -> None:
        if not self._stopped.is_set():
            self._post(b"exit", ident, cause.encode(errors="replace"))

    def request_stop(self, drain_timeout: float = 10.0) -> None:
        """Ask the loop to drain (running calls may finish for drain_timeout) and stop."""
        if not self._stopped.is_set():
            self._post(b"stop", str(drain_timeout).encode())


    # --- the loop ----------------------------------------------------------------------

    def run(self, prewarm: bool = False, wake_fd: int | None = None, on_wake=None) -> None:
        """Serve until stopped; always leaves no daemon, socket or ipc file behind."""
        poller = zmq.Poller()
        for sock in (self.backend, self.frontend, self.events, self.heartbeat):
            poller.register(sock, zmq.POLLIN)
        if wake_fd is not None:
            poller.register(wake_fd, zmq.POLLIN)
        next_reap = next_beat = 0.0
        try:
            if prewarm:
                self._apply(self.broker.start(time.monotonic()))
            now = time.monotonic()
            while not self._done(now):
                # timers are checked only when one may be due: the hot path stays lean
                wait = self.broker.next_wakeup(now)
                wait = REAP_INTERVAL if wait is None else min(wait, REAP_INTERVAL)
                wait = max(0.0, min(wait, next_beat - now))
                due = now + wait
                ready = dict(poller.poll(wait * 1000.0))
                now = time.monotonic()
                if self.backend in ready:
                    self._drain(self.backend, self._on_backend, now)
                if self.frontend in ready:
                    self._drain(self.frontend, self._on_frontend, now)
                if self.events in ready:
                    self._on_event(now)
                if self.heartbeat in ready:
                    self._on_heartbeat(now)
                if wake_fd is not None and wake_fd in ready and on_wake is not None:
                    on_wake(self)
                if now >= due or not ready:
                    self._apply(self.broker.tick(now))
                if now >= next_reap:
                    self.supervisor.reap()
                    next_reap = now + REAP_INTERVAL
                if now >= next_beat:
                    self._beat()
                    next_beat = now + self.settings.heartbeat_interval
        finally:
            self._shutdown()

    @staticmethod
    def _drain(sock: zmq.Socket, handle, now: float) -> None:
        """Handle what is queued on a socket without a poll per message (bounded, so one
        busy socket cannot starve the others)."""
        for _ in range(BATCH):
            handle(now)
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return

    def _done(self, now: float) -> bool:
        if self._stop_at is None:
            return False
        if self.broker.running() and now < self._stop_at:
            return False
        self._apply(self.broker.abandon_running("bridge stopped before the call finished"))
        return True

    def _on_frontend(self, now: float) -> None:
        frames = _recv_routed(self.frontend)
        if len(frames) != 2:
            if len(frames) >= 1:
                self._send_client(frames[0], encode_error(0, InvalidRequest(
                    f"expected exactly one frame per message, got {len(frames) - 1}")))
            return
        client, frame = frames
        try:
            header = read_header(frame)
        except BridgeError as exc:
            self._send_client(client, encode_error(0, exc))
            return
        if header.kind is Kind.REQUEST:
            self._apply(self.broker.submit(client, header, frame, now))
        elif header.kind is Kind.CREDIT:
            self._apply(self.broker.client_credit(client, header, frame))
        elif header.kind is Kind.CANCEL:
            try:
                owner = decode_cancel_owner(frame) or client
            except BridgeError as exc:
                self._send_client(client, encode_error(header.id, exc))
                return
            self._apply(self.broker.cancel(owner, header.id, now))
        elif header.kind is Kind.STATUS:
            if header.flags & FLAG_PREWARM:
                self._apply(self.broker.prewarm(now))
            self._send_client(client, encode_result(header.id, self.status(now)))
        else:
            self._send_client(client, encode_error(header.id, InvalidRequest(
                f"clients may send REQUEST, CREDIT, CANCEL or STATUS, not {header.kind.name}")))

    def _on_backend(self, now: float) -> None:
        frames = _recv_routed(self.backend)
        if len(frames) != 2:
            log.warning("dropping a %d-frame message on the daemon socket", len(frames))
            return
        ident, frame = frames
        try:
            header = read_header(frame)
            if header.kind is Kind.REPLY:
                self._apply(self.broker.daemon_reply(ident, header, frame, now))
            elif header.kind is Kind.PARTIAL:
                self._apply(self.broker.daemon_partial(ident, header, frame))
            elif header.kind is Kind.READY:
                self._apply(self.broker.daemon_ready(ident, decode_ready(frame), now))
            elif header.kind is Kind.DISCONNECT:
                self._apply(self.broker.daemon_exited(ident, now, "daemon disconnected"))
        except BridgeError as exc:
            log.warning("dropping a malformed message from daemon %r: %s", ident, exc)

    def _on_heartbeat(self, now: float) -> None:
        frames = self.heartbeat.recv_multipart()
        if len(frames) != 2:
            return
        try:
            if read_header(frames[1]).kind is Kind.HEARTBEAT:
                self.broker.daemon_beat(frames[0], decode_heartbeat(frames[1]), now)
        except BridgeError as exc:
            log.warning("dropping a malformed heartbeat from %r: %s", frames[0], exc)

    def _beat(self) -> None:
        beat = encode_heartbeat()
        for ident in list(self.broker.daemons):
            self._send_beat(ident, beat)

    def _send_beat(self, ident: bytes, frame: bytes) -> None:
        try:
            self.heartbeat.send_multipart([ident, frame], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # not connected yet, or gone: its own silence will tell

    def _on_event(self, now: float) -> None:
        frames = self.events.recv_multipart()
        if frames[0] == b"exit":
            self._apply(self.broker.daemon_exited(frames[1], now, frames[2].decode()))
        elif frames[0] == b"stop":
            self.begin_stop(float(frames[1]), now)

    def begin_stop(self, drain_timeout: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._stop_at is None:
            self._apply(self.broker.close())
            self._stop_at = now + drain_timeout
        else:  # a second stop request means now
            self._stop_at = now

    # --- actions -----------------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            kind = action[0]
            if kind == "client":
                self._send_client(action[1], action[2])
            elif kind == "daemon":
                self._send_daemon(action[1], action[2])
            elif kind == "spawn":
                self._spawn(action[1])
            elif kind == "kill":
                self._kill(action[1], action[2], action[3])
            elif kind == "interrupt":  # via the heartbeat thread: the main one is busy
                self._send_beat(action[1], encode_cancel(action[2]))

    def _kill(self, ident: bytes, reason: str, hard: bool) -> None:
        self.broker.kill_requested(ident, reason)
        log.warning("killing daemon %s: %s", ident.decode(errors="replace"), reason)
        if not self.supervisor.kill(ident, hard):  # not our process: forget it now
            self._apply(self.broker.daemon_exited(ident, time.monotonic(), reason))

    def _send_client(self, client: bytes, frame: bytes) -> None:
        try:
            _send_routed(self.frontend, client, frame)
        except zmq.ZMQError as exc:  # the client went away; nobody is left to tell
            log.debug("dropping reply for vanished client %r: %s", client, exc)

    def _send_daemon(self, ident: bytes, frame: bytes) -> None:
        try:
            _send_routed(self.backend, ident, frame)
        except zmq.ZMQError:
            self._apply(self.broker.daemon_unreachable(ident, frame, time.monotonic()))

    def _spawn(self, ident: bytes) -> None:
        try:
            self.broker.daemon_spawned(ident, self.supervisor.spawn(ident))
        except OSError as exc:
            self._apply(self.broker.daemon_exited(ident, time.monotonic(), f"cannot start daemon: {exc}"))

    def status(self, now: float | None = None) -> dict:
        status = self.broker.status(time.monotonic() if now is None else now)
        status["endpoint"] = self.frontend_endpoint
        status["hub_pid"] = os.getpid()
        return status

    # --- teardown ----------------------------------------------------------------------

    def _close_sockets(self) -> None:
        for name in ("frontend", "backend", "events", "heartbeat"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(0)

    def _shutdown(self) -> None:
        self._stopped.set()
        try:
            self.supervisor.stop_all()
        finally:
            self._close_sockets()
            self.security.stop()
            remove_private_dir(self.private_dir)
            if self._own_context:
                self.context.term()


def start_embedded(settings: Settings, tools: list[str]) -> tuple[Hub | None, threading.Thread | None, zmq.Context, str]:
    """A hub in a background thread of this process, on a fresh context and a private
    inproc endpoint: what Bridge and AsyncBridge embed. No hub when the pool is disabled."""
    context = zmq.Context()
    endpoint = f"inproc://zbridge-{uuid.uuid4().hex}"
    if not settings.pool_enabled:
        return None, None, context, endpoint
    try:
        hub = Hub(settings, tools, frontend=endpoint, context=context)
    except BaseException:
        context.term()
        raise
    thread = threading.Thread(target=hub.run, kwargs={"prewarm": settings.prewarm},
                              name="zbridge-hub", daemon=True)
    thread.start()
    return hub, thread, context, endpoint
