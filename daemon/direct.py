"""The daemon's own sockets for an embedded hub's callers (``--direct``).

The hub's broker still decides which call runs here; only the request and its reply skip
the hub thread. Two listeners, both in the hub's private 0700 directory next to the
backend socket and named in READY: a Unix stream socket (``unix``: blocking callers; a
request and its reply as length-prefixed frames, ``zbridge.framing``, with no zmq I/O
thread on either side) and a zmq ROUTER (``direct``: the asyncio twin). A reply that
cannot be delivered (the caller's connection is gone) goes to the hub on the data socket
instead, so the hub learns that this daemon is free again.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
from typing import Any, Sequence

import zmq

from zbridge import framing
from zbridge.endpoints import ipc_endpoint, ipc_path
from zbridge.frames import recv_buffers, send_message

log = logging.getLogger("zbridge.daemon")
_NOBLOCK, _SNDMORE, _POLLIN = int(zmq.NOBLOCK), int(zmq.SNDMORE), int(zmq.POLLIN)
CONN_TIMEOUT = 5  # seconds a caller may take to send the rest of a message, or to take a reply
_TIMEVAL = struct.pack("ll", CONN_TIMEOUT, 0)
Peer = bytes | socket.socket  # a zmq routing id, or a Unix connection
Message = tuple[bytes, list[Any], Peer]
Poller = select.poll


class DirectSocket:
    def __init__(self, context: zmq.Context[Any], backend: str, max_message: int) -> None:
        path = ipc_path(backend)
        if path is None:
            raise ValueError(f"--direct needs an ipc backend, not {backend}")
        self.max_message = max_message
        directory = os.path.dirname(path)
        self.endpoint = ipc_endpoint(directory, f"d-{os.getpid()}")
        self.unix_path = os.path.join(directory, f"u-{os.getpid()}.sock")
        self.conns: dict[int, socket.socket] = {}
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock: zmq.Socket[Any] = context.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a gone caller fails at once
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message + 4096)
        old = os.umask(0o077)
        try:
            self.sock.bind(self.endpoint)
            self.listener.bind(self.unix_path)
            self.listener.listen(128)
            self.listener.setblocking(False)
        except BaseException:
            self.close()
            raise
        finally:
            os.umask(old)

    def take(self, ready: set[int], poller: Poller) -> Message | None:
        """A request on a Unix connection that ``poller`` found readable (``ready``: its
        fds), if any; new connections are accepted and registered."""
        if self.listener.fileno() in ready:
            self._accept(poller)
        for fd in [fd for fd in self.conns if fd in ready]:
            message = self._read(self.conns[fd], poller)
            if message is not None:
                return message
        return None

    def _accept(self, poller: Poller) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            # the kernel's timeouts, not Python's (which would poll() before every recv)
            for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
                conn.setsockopt(socket.SOL_SOCKET, option, _TIMEVAL)
            self.conns[conn.fileno()] = conn
            poller.register(conn.fileno(), select.POLLIN)

    def _read(self, conn: socket.socket, poller: Poller) -> Message | None:
        try:
            message = framing.read_message(framing.SocketReader(conn), self.max_message + 4096)
        except (OSError, ValueError, EOFError) as exc:
            log.warning("dropping a direct caller's connection: %s", exc)
            message = None
        if message is None:  # the caller closed it (its thread ended, or it gave up a call)
            self._drop(conn, poller)
            return None
        frame, buffers = message
        return frame, list(buffers), conn

    def _drop(self, conn: socket.socket, poller: Poller | None) -> None:
        fd = conn.fileno()
        if self.conns.pop(fd, None) is not None and poller is not None:
            poller.unregister(fd)
        conn.close()

    def recv(self) -> tuple[bytes, list[memoryview], bytes]:
        """The next request: its frame, its buffer frames, and the caller's routing id."""
        peer = self.sock.recv()
        frame = self.sock.recv() if self.sock.getsockopt(zmq.RCVMORE) else b""
        return frame, recv_buffers(self.sock), peer

    def reply(self, peer: Peer, frame: bytes, buffers: Sequence[Any],
              hub: zmq.Socket[Any], poller: Poller) -> bool:
        """The reply to the caller; to the hub if the caller cannot take it (then True)."""
        if isinstance(peer, socket.socket):
            if framing.message_size(frame, buffers) > framing.STREAM_MAX:
                send_message(hub, frame, buffers)  # large: through the hub, zero-copy; the
                return True                        # caller gets it as the broker's answer
            try:
                framing.send_message(peer, frame, buffers)
                return False
            except OSError as exc:
                log.info("direct caller gone (%s): reply goes to the hub", exc)
                self._drop(peer, poller)
        else:
            try:
                self.sock.send(peer, _SNDMORE | _NOBLOCK)
                send_message(self.sock, frame, buffers)
                return False
            except zmq.ZMQError as exc:
                log.info("direct caller gone (%s): reply goes to the hub", exc.strerror)
        send_message(hub, frame, buffers)
        return True

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._drop(conn, None)
        self.listener.close()
        self.sock.close(0)
