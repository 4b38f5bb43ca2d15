"""The hub's open files: new connections are refused before the process runs out of them.

libzmq aborts the whole process when ``accept()`` on an ipc listener fails with EMFILE
(``src/ipc_listener.cpp``: ``errno_assert``), and a tcp listener at EMFILE spins in its I/O
thread; either way one peer holding connections open (an admitted client's DEALERs,
another user's idle HTTP connections to the metrics port) used to take the hub down.
So:

* ``zbridge serve`` raises its soft ``RLIMIT_NOFILE`` to the hard limit at start
  (``raise_limit``; an embedded hub leaves its host's limit alone);
* ``Headroom`` (pure) keeps a reserve of descriptors for what the hub itself needs (its
  daemons' pipes and connections, metrics scrapes, the connections a listener may still
  accept before a pause takes effect) and says when to stop accepting (``pause_at``) and
  when to start again (``resume_at``);
* ``FdGuard``: a thread reading libzmq monitor events of the hub's sockets. An accepted
  connection's event carries its fd, and the kernel numbers fds lowest-free first, so an
  fd at ``pause_at`` means at least that many are open: the guard then stops every
  listener taking new connections and logs it once (an ipc socket file is moved aside, so
  a connect fails at once with ENOENT; a tcp listener gets a socket filter that drops new
  connection attempts, which their senders retry). Connections already made are
  untouched: the hub keeps serving them. When enough have closed (counted in
  ``/proc/self/fd``), the listeners are restored. The metrics endpoint asks ``room()``
  before it accepts.

Linux only (``/proc``, socket filters); elsewhere the guard watches nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("zbridge.hub")

BACKLOG = 16            # pending connections a listener keeps (libzmq's default is 100)
BURST = 32              # connections a listener may accept between an event and the pause
PER_DAEMON = 7          # the hub's fds per daemon: pipes, channel, backend and heartbeat connections
METRICS_CONNECTIONS = 16  # the metrics endpoint's own cap (zbridge/scrape.py)
SPARE = 24              # logging, /proc reads, sockets made for events
CHECK_INTERVAL = 1.0    # while paused: how often to count open fds again
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED


def raise_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a no-op where it is already there or
    cannot be raised); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_fds() -> int | None:
    """File descriptors open in this process, or None where /proc cannot say."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # listdir's own
    except OSError:
        return None


@dataclass(frozen=True)
class Headroom:
    """When a hub with ``limit`` descriptors stops and restarts accepting. Pure."""
    limit: int
    reserve: int

    @classmethod
    def for_hub(cls, limit: int, workers: int) -> Headroom:
        """The reserve a hub with ``workers`` daemons needs, at most half its limit (a
        limit that low is warned about: clients get half of it)."""
        need = BACKLOG + BURST + PER_DAEMON * (workers + 2) + METRICS_CONNECTIONS + SPARE
        return cls(limit, min(need, limit // 2))

    @property
    def cramped(self) -> bool:
        """The limit leaves clients less room than the hub's own reserve."""
        return self.reserve == self.limit // 2

    @property
    def pause_at(self) -> int:
        """An accepted fd numbered this high (or more) pauses every listener."""
        return max(1, self.limit - self.reserve)

    @property
    def resume_at(self) -> int:
        """Listeners resume once fewer fds than this are open (a gap against flapping)."""
        return max(1, self.pause_at - BURST)


class Listener(Protocol):
    def pause(self) -> None: ...
    def resume(self) -> None: ...


class IpcListener:
    """An ipc endpoint: paused by moving its socket file aside (the listening socket stays
    bound to the inode, so moving it back restores it as it was)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.aside = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.paused")

    def pause(self) -> None:
        os.replace(self.path, self.aside)

    def resume(self) -> None:
        os.link(self.aside, self.path)  # fails if someone took the path meanwhile: stay paused
        os.unlink(self.aside)


_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # classic BPF: "ret #0", keep nothing
_SO_ATTACH_FILTER, _SO_DETACH_FILTER = 26, 27


class TcpListener:
    """A tcp endpoint: paused by a socket filter that drops what reaches the listener (new
    connection attempts), removed to resume."""

    def __init__(self, fd: int, inode: str) -> None:
        self.fd, self.inode = fd, inode
        self._program = (ctypes.c_ubyte * len(_DROP_ALL)).from_buffer_copy(_DROP_ALL)

    def pause(self) -> None:
        fprog = struct.pack("HL", 1, ctypes.addressof(self._program))
        self._setsockopt(_SO_ATTACH_FILTER, fprog)

    def resume(self) -> None:
        self._setsockopt(_SO_DETACH_FILTER, 0)

    def _setsockopt(self, option: int, value: Any) -> None:
        if _socket_inode(self.fd) != self.inode:  # libzmq closed it: nothing to do
            return
        with socket.socket(fileno=os.dup(self.fd)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, option, value)


def _socket_inode(fd: int) -> str | None:
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return link[8:-1] if link.startswith("socket:[") else None


def _socket_fds() -> dict[str, int]:
    """Socket inode -> fd, for every socket this process has open."""
    out = {}
    try:
        for name in os.listdir("/proc/self/fd"):
            inode = _socket_inode(int(name))
            if inode is not None:
                out[inode] = int(name)
    except OSError:
        pass
    return out


def _tcp_listeners(port: int, ours: dict[str, int]) -> list[int]:
    fds = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port \
                            and cols[9] in ours:
                        fds.append(ours[cols[9]])
        except (OSError, IndexError, ValueError, StopIteration):
            continue
    return fds


def find_listeners(endpoints: list[str]) -> list[tuple[Listener, int | None]]:
    """The listeners behind the hub's bound endpoints (``ipc://``, ``tcp://``; the port as
    bound, after a wildcard was resolved), each with its listening fd when found."""
    ours = _socket_fds()
    found: list[tuple[Listener, int | None]] = []
    for endpoint in endpoints:
        if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
            path = endpoint[len("ipc://"):]
            found.append((IpcListener(path), _unix_listener(path, ours)))
        elif endpoint.startswith("tcp://"):
            port = endpoint.rsplit(":", 1)[1]
            if port.isdigit():
                for fd in _tcp_listeners(int(port), ours):
                    inode = _socket_inode(fd)
                    if inode is not None:
                        found.append((TcpListener(fd, inode), fd))
    return found


def _unix_listener(path: str, ours: dict[str, int]) -> int | None:
    try:
        with open("/proc/net/unix") as f:
            next(f)
            for line in f:
                cols = line.split()
                if len(cols) >= 8 and cols[7] == path and cols[6] in ours:
                    return ours[cols[6]]
    except (OSError, StopIteration):
        pass
    return None


def _set_backlog(fd: int) -> None:
    """A smaller accept queue: fewer connections still to accept once a pause starts."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.listen(BACKLOG)
    except OSError:
        pass


class FdGuard:
    """Pauses the hub's listeners near its fd limit (see the module docstring). Create it
    in the thread that owns ``sockets`` (it attaches their monitors), after they are bound."""

    def __init__(self, context: zmq.Context[Any], sockets: list[zmq.Socket[Any]],
                 endpoints: list[str], headroom: Headroom) -> None:
        self.context, self.headroom = context, headroom
        self.listeners: list[Listener] = []
        for listener, fd in find_listeners(endpoints):
            self.listeners.append(listener)
            if fd is not None:
                _set_backlog(fd)
        self.paused = False
        self.pauses = 0             # times the listeners were paused
        self.peak_fd = 0            # highest accepted fd seen
        self._monitors = [sock.get_monitor_socket(_EVENTS) for sock in sockets]
        self._wake = f"inproc://zbridge-fdguard-{uuid.uuid4().hex}"
        self._inbox = context.socket(zmq.PULL)
        self._inbox.bind(self._wake)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="zbridge-fdguard", daemon=True)
        self._thread.start()

    def room(self) -> bool:
        """Whether a new connection may be accepted now (the metrics endpoint asks)."""
        if self.paused:
            return False
        count = open_fds()
        return count is None or count < self.headroom.pause_at

    def accepted(self, fd: int) -> None:
        """A connection was accepted as ``fd`` (a monitor event, or the metrics endpoint)."""
        self.peak_fd = max(self.peak_fd, fd)
        if fd >= self.headroom.pause_at and not self.paused:
            self._pause(fd)

    def _pause(self, fd: int) -> None:
        with self._lock:
            if self.paused:
                return
            for listener in self.listeners:
                try:
                    listener.pause()
                except OSError as exc:
                    log.error("cannot stop accepting on %s: %s", listener, exc)
            self.paused = True
            self.pauses += 1
        log.warning("refusing new connections: the hub has %s of its %d file descriptors open "
                    "(a connection just got fd %d); those already made keep being served; new "
                    "ones are accepted again below %d (raise `ulimit -n`, or find who holds "
                    "connections open)", open_fds(), self.headroom.limit, fd, self.headroom.resume_at,
                    extra={"event": "connections_refused", "fd_limit": self.headroom.limit})

    def _maybe_resume(self) -> None:
        count = open_fds()
        if count is None or count >= self.headroom.resume_at:
            return
        with self._lock:
            try:
                for listener in self.listeners:
                    listener.resume()
            except OSError as exc:
                log.error("cannot accept connections again: %s", exc)
                return
            self.paused = False
        log.info("accepting new connections again (%d file descriptors open)", count,
                 extra={"event": "connections_accepted_again"})

    def _run(self) -> None:
        poller = zmq.Poller()
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        poller.register(self._inbox, zmq.POLLIN)
        next_check = 0.0
        try:
            while True:
                timeout = int(CHECK_INTERVAL * 1000) if self.paused else None
                ready = dict(poller.poll(timeout))
                if self._inbox in ready:
                    return
                for monitor in self._monitors:
                    if monitor in ready:
                        self._on_event(monitor)
                if self.paused and time.monotonic() >= next_check:
                    next_check = time.monotonic() + CHECK_INTERVAL / 10
                    self._maybe_resume()
        finally:
            for monitor in self._monitors:
                monitor.close(0)
            self._inbox.close(0)

    def _on_event(self, monitor: zmq.Socket[Any]) -> None:
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.accepted(int(event["value"]))

    def stop(self) -> None:
        """Restore paused listeners and end the thread; before the sockets close."""
        if self._thread.is_alive():
            sock = self.context.socket(zmq.PUSH)
            sock.linger = 1000
            try:
                sock.connect(self._wake)
                sock.send(b"")
            finally:
                sock.close()
            self._thread.join(5)
        with self._lock:
            if self.paused:
                for listener in self.listeners:
                    try:
                        listener.resume()
                    except OSError:
                        pass
                self.paused = False


class _Hub(Protocol):
    context: zmq.Context[Any]
    frontend: zmq.Socket[Any]
    backend: zmq.Socket[Any]
    heartbeat: zmq.Socket[Any]
    frontend_endpoint: str
    settings: Any


def guard_hub(hub: _Hub) -> FdGuard | None:
    """A guard for a hub whose sockets are bound (called in the thread that made them);
    None when nothing can connect from outside the process (an inproc frontend, no
    ``daemon_bind``) or /proc is missing."""
    sockets = [] if hub.frontend_endpoint.startswith("inproc://") else [hub.frontend]
    if hub.settings.daemon_bind:
        sockets += [hub.backend, hub.heartbeat]
    if not sockets or open_fds() is None:
        return None
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    # each socket's last bind is its outside endpoint, with a wildcard port resolved
    endpoints = [sock.getsockopt_string(zmq.LAST_ENDPOINT) for sock in sockets]
    headroom = Headroom.for_hub(limit, hub.settings.workers)
    if headroom.cramped:
        log.warning("only %d file descriptors for a hub with %d workers: new connections are "
                    "refused beyond %d (raise `ulimit -n`)", limit, hub.settings.workers,
                    headroom.pause_at)
    return FdGuard(hub.context, sockets, endpoints, headroom)
