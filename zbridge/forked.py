"""A daemon forked from the template (``preload``), as the supervisor holds it: the part of
``subprocess.Popen`` it uses (pid, lifeline, stderr, wait, poll, returncode), so to the
supervisor, the hub and the broker it is a daemon like any other.

Our ends of its lifeline and stderr pipes are made here; its ends (``theirs``) go to the
template with the FORK and are closed here once it forked, or go to an ordinary spawn
when the template cannot fork after all (``popen``). The template is the forked daemon's
parent: it reports the exit status (``finish``). A daemon whose template died before it
lives on with init as its parent: it is watched through a ``pidfd`` and its exit status
is unknown (``orphan``).
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
import time
from typing import IO, Callable


class Forked:
    """A daemon forked from the template, or waiting to be (see the module's docstring)."""

    def __init__(self, ident: bytes, channel: socket.socket | None, cancel: Callable[[Forked, int], None]) -> None:
        lifeline_r, lifeline_w = os.pipe()
        err_r, err_w = os.pipe()
        self.ident = ident
        self.stdin: IO[bytes] | None = os.fdopen(lifeline_w, "wb")
        self.stderr: IO[bytes] | None = os.fdopen(err_r, "rb")
        # the daemon's ends: lifeline, stderr, channel (one of ours, dup'd: the caller closes its own)
        self.theirs = [lifeline_r, err_w] + ([os.dup(channel.fileno())] if channel is not None else [])
        self.popen: subprocess.Popen[bytes] | None = None  # spawned the ordinary way after all
        self.note = ""                  # why it ended without ever running, for its stderr tail
        self.kill_signal: int | None = None  # asked for before the fork was answered
        self._pid: int | None = None
        self._returncode: int | None = None
        self._started = threading.Event()   # forked, spawned or failed: it has a fate
        self._done = threading.Event()      # ended, its status known (or known to be unknown)
        self._cancel = cancel

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else self._pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen is not None else self._returncode

    @property
    def channel_fd(self) -> int | None:
        return self.theirs[2] if len(self.theirs) > 2 else None

    def release(self) -> None:
        """Close our copies of the daemon's ends (it owns them now, or never will)."""
        fds, self.theirs = self.theirs, []
        for fd in fds:
            os.close(fd)

    def forked(self, pid: int) -> None:
        self._pid = pid
        self.release()
        self._started.set()
        if self.kill_signal is not None:
            self.signal_group(self.kill_signal)

    def spawned(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.release()
        self._started.set()

    def finish(self, returncode: int | None, note: str = "") -> None:
        """It ended (``returncode`` None: how is unknown), or will never start."""
        if self._done.is_set():
            return
        self._returncode, self.note = returncode, note
        self.release()
        self._done.set()
        self._started.set()

    def orphan(self) -> None:
        """Its template (its parent) is gone: learn of its end from a pidfd instead."""
        pid = self._pid
        if pid is None or self._done.is_set():
            return
        threading.Thread(target=self._watch_orphan, args=(pid,), daemon=True,
                         name=f"zbridge-orphan-{pid}").start()

    def _watch_orphan(self, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = None
        if pidfd is not None:
            try:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                poller.poll()
            finally:
                os.close(pidfd)
        self.finish(None, "forked from a template that ended before it")

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._started.wait(left()):
            raise subprocess.TimeoutExpired(f"forked daemon {self.ident!r}", timeout or 0.0)
        if self.popen is not None:
            return self.popen.wait(left())
        if not self._done.wait(left()):
            raise subprocess.TimeoutExpired(f"forked daemon {self.ident!r}", timeout or 0.0)
        return self._returncode

    def poll(self) -> int | None:
        if self.popen is not None:
            return self.popen.poll()
        return self._returncode if self._done.is_set() else None

    def signal_group(self, sig: int) -> None:
        """Signal its process group (it leads one), or cancel it if it is not forked yet."""
        pid = self.pid
        if pid is None:
            self._cancel(self, sig)
            return
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
