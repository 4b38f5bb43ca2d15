"""The daemon's own ROUTER for an embedded hub's callers (``--direct``).

The hub's broker still decides which call runs here; only the request and its reply skip
the hub thread. The socket is bound in the hub's private 0700 directory, next to the
backend socket, and named in READY. A reply that cannot be delivered (the caller's
connection is gone) goes to the hub on the data socket instead, so the hub learns that
this daemon is free again.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import zmq

from zbridge.endpoints import ipc_endpoint, ipc_path
from zbridge.frames import recv_buffers, send_message

log = logging.getLogger("zbridge.daemon")
_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)


class DirectSocket:
    def __init__(self, context: zmq.Context[Any], backend: str, max_message: int) -> None:
        path = ipc_path(backend)
        if path is None:
            raise ValueError(f"--direct needs an ipc backend, not {backend}")
        self.endpoint = ipc_endpoint(os.path.dirname(path), f"d-{os.getpid()}")
        self.sock: zmq.Socket[Any] = context.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a gone caller fails at once
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message + 4096)
        old = os.umask(0o077)
        try:
            self.sock.bind(self.endpoint)
        except BaseException:
            self.sock.close(0)
            raise
        finally:
            os.umask(old)

    def recv(self) -> tuple[bytes, list[memoryview], bytes]:
        """The next request: its frame, its buffer frames, and the caller's routing id."""
        peer = self.sock.recv()
        frame = self.sock.recv() if self.sock.getsockopt(zmq.RCVMORE) else b""
        return frame, recv_buffers(self.sock), peer

    def reply(self, peer: bytes, frame: bytes, buffers: Sequence[Any],
              hub: zmq.Socket[Any]) -> None:
        """The reply to the caller; to the hub if the caller cannot take it."""
        try:
            self.sock.send(peer, _SNDMORE | _NOBLOCK)
        except zmq.ZMQError as exc:
            log.info("direct caller gone (%s): reply goes to the hub", exc.strerror)
            send_message(hub, frame, buffers)
            return
        send_message(self.sock, frame, buffers)

    def close(self) -> None:
        self.sock.close(0)
