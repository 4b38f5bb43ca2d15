"""The metrics endpoint's HTTP server: one thread, a few connections, nothing held open.

prometheus_client's own server starts a thread per connection and waits forever for a
request: another local user holding 1,000 idle connections used to exhaust the hub's file
descriptors. This one serves ``GET /metrics`` from one thread with ``selectors``:

* at most ``MAX_CONNECTIONS`` at once; beyond that, and whenever the hub's fd guard says
  there is no room, it stops accepting (the kernel queues at most ``BACKLOG`` more);
* a connection has ``REQUEST_TIMEOUT`` seconds to send its whole request head (at most
  ``MAX_REQUEST`` bytes) and ``RESPONSE_TIMEOUT`` to take the answer, then it is closed;
* with a token, a request must carry ``Authorization: Bearer <token>`` (compared in
  constant time), else 401;
* one response per connection (``Connection: close``).
"""

from __future__ import annotations

import hmac
import logging
import selectors
import socket
import threading
import time
from typing import Callable

log = logging.getLogger("zbridge.hub")

MAX_CONNECTIONS = 16
BACKLOG = 16
REQUEST_TIMEOUT = 5.0
RESPONSE_TIMEOUT = 10.0
MAX_REQUEST = 8192


class _Conn:
    __slots__ = ("sock", "deadline", "inbox", "outbox")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.deadline = now + REQUEST_TIMEOUT
        self.inbox = bytearray()
        self.outbox: memoryview | None = None


class ScrapeServer:
    """Serves ``render()`` (the exposition text) on ``listener`` until ``stop()``."""

    def __init__(self, listener: socket.socket, render: Callable[[], tuple[bytes, str]],
                 token: bytes | None = None, room: Callable[[], bool] | None = None,
                 accepted: Callable[[int], None] | None = None) -> None:
        self.listener, self.render, self.token = listener, render, token
        self.room = room or (lambda: True)
        self.accepted = accepted or (lambda fd: None)
        self.refused = 0  # connections not accepted for lack of room
        listener.setblocking(False)
        listener.listen(BACKLOG)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._conns: dict[int, _Conn] = {}
        self._listening = False
        self._thread = threading.Thread(target=self._run, name="zbridge-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._wake_w.send(b"x")
            self._thread.join(5)

    # --- the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                now = time.monotonic()
                self._listen(len(self._conns) < MAX_CONNECTIONS and self.room())
                waits = [c.deadline - now for c in self._conns.values()]
                timeout = max(0.0, min(waits)) if waits else (1.0 if not self._listening else None)
                for key, events in self._selector.select(timeout):
                    if key.fileobj is self._wake_r:
                        return
                    if key.fileobj is self.listener:
                        self._accept(time.monotonic())
                    else:
                        self._serve(key.data, events)
                self._expire(time.monotonic())
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            self._selector.close()
            self.listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _listen(self, on: bool) -> None:
        if on and not self._listening:
            self._selector.register(self.listener, selectors.EVENT_READ)
        elif not on and self._listening:
            self._selector.unregister(self.listener)
        self._listening = on

    def _accept(self, now: float) -> None:
        while len(self._conns) < MAX_CONNECTIONS:
            if not self.room():
                self.refused += 1
                return
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: try again later
                log.warning("metrics endpoint cannot accept: %s", exc)
                return
            sock.setblocking(False)
            self.accepted(sock.fileno())
            conn = self._conns[sock.fileno()] = _Conn(sock, now)
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        self._conns.pop(conn.sock.fileno(), None)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _serve(self, conn: _Conn, events: int) -> None:
        try:
            if conn.outbox is None and events & selectors.EVENT_READ:
                self._read(conn)
            elif conn.outbox is not None and events & selectors.EVENT_WRITE:
                sent = conn.sock.send(conn.outbox)
                conn.outbox = conn.outbox[sent:]
                if not conn.outbox:
                    self._close(conn)
        except OSError:
            self._close(conn)

    def _read(self, conn: _Conn) -> None:
        data = conn.sock.recv(4096)
        if not data:
            self._close(conn)
            return
        conn.inbox += data
        end = conn.inbox.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.inbox) > MAX_REQUEST:
                self._respond(conn, 431, b"request head too large\n")
            return
        self._respond(conn, *self._answer(bytes(conn.inbox[:end])))

    def _answer(self, head: bytes) -> tuple[int, bytes, str]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, b"bad request\n", "text/plain"
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method != "GET":
            return 405, b"only GET\n", "text/plain"
        if target not in ("/metrics", "/"):
            return 404, b"see /metrics\n", "text/plain"
        if self.token is not None and not self._authorized(lines[1:]):
            return 401, b"a bearer token is required\n", "text/plain"
        body, content_type = self.render()
        return 200, body, content_type

    def _authorized(self, headers: list[str]) -> bool:
        assert self.token is not None
        for line in headers:
            name, _, value = line.partition(":")
            if name.strip().lower() == "authorization":
                scheme, _, credentials = value.strip().partition(" ")
                return scheme.lower() == "bearer" and \
                    hmac.compare_digest(credentials.strip().encode("latin-1"), self.token)
        return False

    def _respond(self, conn: _Conn, status: int, body: bytes, content_type: str = "text/plain") -> None:
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
                  405: "Method Not Allowed", 431: "Request Header Fields Too Large"}[status]
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n")
        if status == 401:
            head += 'WWW-Authenticate: Bearer realm="zbridge"\r\n'
        conn.outbox = memoryview(head.encode("latin-1") + b"\r\n" + body)
        conn.deadline = time.monotonic() + RESPONSE_TIMEOUT
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
