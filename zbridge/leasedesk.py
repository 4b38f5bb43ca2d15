"""The lease desk: a served hub's local clients borrow daemons too (issue 21).

A local client of ``zbridge serve`` (an ipc frontend) connects to a Unix stream socket
beside it (``<frontend path>.lease``, in the same private 0700 directory) and sends its
REQUEST there, as length-prefixed frames (``wire.Channel``). The broker judges it as it
judges a caller in the hub's own process (``direct.py``): the job's owner is this
connection (``Borrower``), whose ``wake`` tells the client what the broker decided:

* a LEASE (kind 10, the request's id; body ``{"daemon": name, "send": bool}``) with the
  daemon's channel attached (SCM_RIGHTS): the hub already wrote the request on it (unless
  ``send``: a large request the client writes itself); the client reads the reply there;
* an ANSWER: a REPLY frame the broker made (refused, expired in the queue, the daemon
  lost, cancelled).

After reading its reply, the client reports it (a REPLY frame: the reply's header and the
start of its body, enough for the per-tool numbers), which frees the daemon. A client
that gives up (its deadline: CANCEL with flag ``FLAG_EXPIRED``; a cancel: CANCEL) stops
reading first; the hub then reads the late reply on its own end of the channel
(``Hub.adopt``). A client that vanishes ends its connection: its queued calls are dropped
and the channels of its running ones adopted. The hub stays the one judge; a client only
ever holds a channel for the call it was lent it for (it closes its copy after).
"""

from __future__ import annotations

import array
import itertools
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from .actions import Action
from .broker import new_job
from .errors import BridgeError, InvalidRequest
from .protocol import (Kind, encode_error, encode_lease, read_header, refusal)
from .state import Job
from .wire import Channel

if TYPE_CHECKING:
    from .hub import Hub

log = logging.getLogger("zbridge.hub")
FLAG_EXPIRED = 0x01  # on a CANCEL from a borrower: its deadline passed (CallTimeout), not a cancel
PREFIX = b"\x00lease-"  # borrowers' client ids in the broker: no zmq peer can have one
PAUSE = 1.0  # seconds the desk stops accepting after running out of file descriptors


def desk_path(frontend: str) -> str | None:
    """Where a hub serving ``frontend`` takes borrowers: beside its ipc socket; None for
    other transports (tcp clients may be on another host: they keep the hub's route)."""
    return f"{frontend[len('ipc://'):]}.lease" if frontend.startswith("ipc://") else None


class Borrower:
    """One client connection: the owner of the jobs it submits."""

    def __init__(self, desk: LeaseDesk, sock: socket.socket, ident: bytes, max_size: int) -> None:
        self.desk = desk
        self.channel = Channel(sock, max_size)
        self.ident = ident
        self.reporting = 0  # the request id whose reply this client is reporting now

    def wake(self, job: Job) -> None:
        """What the broker decided for ``job``: its answer, or its lease (with the channel)."""
        if job.answer is not None:
            if job.id != self.reporting:  # (a reported reply is the client's already)
                self._send(job.answer[0], ())
            return
        if job.channel is None or job.daemon is None:
            return
        daemon = self.desk.hub.broker.daemons.get(job.daemon)
        lease = encode_lease(job.id, daemon.name if daemon is not None else "", not job.sent)
        self._send(lease, (), fd=job.channel.fileno())

    def _send(self, frame: bytes, buffers: Any, fd: int | None = None) -> None:
        try:
            if fd is None:
                self.channel.send(frame, buffers)
            else:
                prefix = len(frame).to_bytes(4, "big")
                self.channel.sock.sendmsg([prefix + frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                              array.array("i", [fd]))])
        except OSError:
            pass  # the client is gone: its connection's end is noticed by the hub's poll

    def close(self) -> None:
        self.channel.close()


class LeaseDesk:
    """The listener and the borrowers' connections, served by the hub thread's poll."""

    def __init__(self, hub: Hub, path: str) -> None:
        self.hub = hub
        self.path = path
        self.max_size = hub.settings.max_message_size + 4096
        self.borrowers: dict[int, Borrower] = {}  # fd: its borrower
        self.paused_until = 0.0
        self._numbers = itertools.count(1)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            if os.path.exists(path):
                os.unlink(path)  # a dead hub's (the frontend bind checked that no hub serves it)
            self.listener.bind(path)
            self.listener.listen(128)
            self.listener.setblocking(False)
        except BaseException:
            self.listener.close()
            raise
        finally:
            os.umask(old)

    def fileno(self) -> int:
        return self.listener.fileno()

    # --- the hub's poll ----------------------------------------------------------------

    def accept(self, now: float) -> list[int]:
        """New borrowers' fds, for the hub to poll. Near the hub's file limit (its fd guard
        says so) nothing is accepted for a moment: ``paused_until``."""
        fds: list[int] = []
        guard = self.hub.fd_guard
        while True:
            if guard is not None and not guard.room():
                self.paused_until = now + PAUSE
                return fds
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return fds
            except OSError as exc:  # out of file descriptors: stop for a moment, say so once
                self.paused_until = now + PAUSE
                log.warning("lease desk: not accepting for %.1fs: %s", PAUSE, exc)
                return fds
            if guard is not None:
                guard.accepted(sock.fileno())
            ident = PREFIX + str(next(self._numbers)).encode()
            borrower = Borrower(self, sock, ident, self.max_size)
            self.borrowers[sock.fileno()] = borrower
            fds.append(sock.fileno())

    def on_readable(self, fd: int, now: float) -> None:
        """A borrower's messages (one read may hold several), or its end."""
        borrower = self.borrowers[fd]
        while True:
            try:
                frame, buffers = borrower.channel.recv(socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except (EOFError, OSError):
                self._gone(fd, now)
                return
            self._on_message(borrower, frame, buffers, now)
            if not borrower.channel.pending():
                return

    def _on_message(self, borrower: Borrower, frame: bytes, buffers: list[Any], now: float) -> None:
        try:
            header = read_header(frame)
        except BridgeError as exc:
            borrower._send(refusal(frame, exc), ())
            return
        if header.kind is Kind.REQUEST:
            job = new_job(borrower.ident, header, frame, now, self.hub.settings.timeout,
                          tuple(buffers), borrower)
            self._carry_out(self.hub._decide(self.hub.broker.accept, job, header, now))
        elif header.kind is Kind.REPLY:
            self._report(borrower, header, frame, now)
        elif header.kind is Kind.CANCEL:
            self._give_up(borrower, header.id, bool(header.flags & FLAG_EXPIRED), now)
        else:
            borrower._send(encode_error(header.id, InvalidRequest(
                f"a borrower may send REQUEST, REPLY (its report) or CANCEL, not {header.kind.name}")), ())

    def _job(self, borrower: Borrower, request_id: int) -> Job | None:
        return self.hub.broker.jobs.get((borrower.ident, request_id))

    def _report(self, borrower: Borrower, header: Any, frame: bytes, now: float) -> None:
        """The client read its reply: the daemon is free (the reply stays the client's)."""
        job = self._job(borrower, header.id)
        if job is None or job.daemon is None:
            return
        borrower.reporting = header.id
        try:
            self._carry_out(self.hub._decide(self.hub.broker.daemon_reply, job.daemon, header, frame, now))
        finally:
            borrower.reporting = 0

    def _give_up(self, borrower: Borrower, request_id: int, expired: bool, now: float) -> None:
        """The client stopped waiting (its deadline, or a cancel): the broker's verdict,
        and a channel whose reply is still due read here."""
        job = self._job(borrower, request_id)
        if job is None:
            return
        broker = self.hub.broker
        if expired:
            self._carry_out(self.hub._decide(broker.expire_call, job, now))
        else:
            self._carry_out(self.hub._decide(broker.cancel, borrower.ident, request_id, now))
        if job.channel is not None:
            self.hub.adopt(job)

    def _gone(self, fd: int, now: float) -> None:
        """The client's connection ended: its queued calls go, its lent channels are read
        here (so their daemons come back warm)."""
        borrower = self.borrowers.pop(fd)
        self.hub.forget_fd(fd)
        broker = self.hub.broker
        with self.hub.guard:
            running = [job for job in broker.jobs.values()
                       if job.client == borrower.ident and job.channel is not None]
            actions = broker.client_gone(borrower.ident, now)
        self._carry_out(actions)
        for job in running:
            self.hub.adopt(job)
        borrower.close()

    def _carry_out(self, actions: list[Action]) -> None:
        self.hub._apply(actions)

    def close(self) -> None:
        for borrower in self.borrowers.values():
            borrower.close()
        self.borrowers.clear()
        self.listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
