"""Daemon processes: spawn, watch, kill, stop. The broker decides; this carries it out.

Each daemon runs in its own session (so signals reach its whole process group and a
terminal's Ctrl-C does not), holds a stdin pipe whose EOF tells it the hub is gone, and
writes its stderr (and its tools' stdout) to a pipe that a thread forwards line by line to
the ``zbridge.daemon`` logger as records tagged with the daemon (``zbridge/daemonlog.py``),
keeping the last lines to explain a failed start. With ``channels``, each daemon also gets
its own end of a ``socketpair`` (``--channel FD``): the exclusive channel on which callers
in this process lend it requests (``zbridge/direct.py``). When a daemon exits, its channel
is shut down here too, so a caller waiting on it wakes at once even if a process the tool
forked still holds the daemon's end.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .daemonlog import daemon_args, forward
from .procinfo import run_state
from .state import Process as ProcessState
from .state import describe_exit
from .wire import Channel

__all__ = ["Supervisor", "describe_exit"]

TAIL_LINES = 40

Notify = Callable[[bytes, "int | None", str], None]  # (daemon id, exit status, stderr tail)


@dataclass
class Process:
    ident: bytes
    popen: subprocess.Popen[bytes]
    channel: Channel | None = None
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    reported: bool = False


class Supervisor:
    def __init__(self, command: list[str], notify: Notify, *, stop_timeout: float = 5.0,
                 env: dict[str, str] | None = None, channels: int = 0) -> None:
        self.command = command
        self.notify = notify
        self.stop_timeout = stop_timeout
        self.env = env
        self.channels = channels  # 0: none; else the largest frame a channel carries
        self.procs: dict[bytes, Process] = {}
        self._lock = threading.Lock()

    def spawn(self, ident: bytes) -> tuple[int, Channel | None]:
        """Start a daemon: its pid, and its channel (if ``channels``)."""
        env = dict(os.environ if self.env is None else self.env, PYTHONUNBUFFERED="1")
        command = self.command + ["--identity", ident.decode(), "--lifeline"] + daemon_args()
        ours = theirs = None
        if self.channels:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            command += ["--channel", str(theirs.fileno())]
        try:
            popen = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True, env=env, pass_fds=(theirs.fileno(),) if theirs else ())
        except BaseException:
            if ours is not None:
                ours.close()
            raise
        finally:
            if theirs is not None:
                theirs.close()
        channel = Channel(ours, self.channels) if ours is not None else None
        proc = Process(ident, popen, channel)
        with self._lock:
            self.procs[ident] = proc
        threading.Thread(target=self._watch, args=(proc,), daemon=True,
                         name=f"zbridge-watch-{ident.decode()}").start()
        return popen.pid, channel

    def _watch(self, proc: Process) -> None:
        """Forward stderr; at EOF the process is exiting: wait for it and report."""
        pid = proc.popen.pid
        assert proc.popen.stderr is not None  # spawned with stderr=PIPE
        for raw in proc.popen.stderr:
            proc.tail.append(forward(proc.ident, pid, raw.decode(errors="replace").rstrip("\n")))
        proc.popen.wait()
        self._report(proc)

    def _report(self, proc: Process) -> None:
        with self._lock:
            if proc.reported:
                return
            proc.reported = True
            self.procs.pop(proc.ident, None)
        if proc.channel is not None:
            try:  # wakes a caller blocked on it; the socket closes with its last user
                proc.channel.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.notify(proc.ident, proc.popen.returncode, "\n".join(proc.tail))

    def reap(self) -> None:
        """Backstop for exits the stderr thread cannot see (a grandchild holds the pipe)."""
        with self._lock:
            procs = list(self.procs.values())
        for proc in procs:
            if proc.popen.poll() is not None:
                self._report(proc)

    def process_state(self, ident: bytes) -> ProcessState | None:
        """What the OS says about a daemon we spawned; None for one we did not."""
        proc = self.procs.get(ident)
        if proc is None:
            return None
        state = run_state(proc.popen.pid)
        if state is None or state in "ZX":
            return ProcessState.GONE
        return ProcessState.FROZEN if state in "Tt" else ProcessState.RUNNING

    def kill(self, ident: bytes, hard: bool = False) -> bool:
        """TERM the daemon's process group, KILL it after stop_timeout (at once if hard:
        a frozen process never handles TERM); never blocks. False if it is not ours."""
        proc = self.procs.get(ident)
        if proc is None:
            return False
        threading.Thread(target=self._terminate, args=(proc, 0.0 if hard else None),
                         daemon=True).start()
        return True

    def _terminate(self, proc: Process, grace: float | None = None) -> None:
        if grace != 0.0:
            _signal_group(proc.popen, signal.SIGTERM)
            try:
                proc.popen.wait(self.stop_timeout if grace is None else grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc.popen, signal.SIGKILL)  # also reaps grandchildren left in the group
        proc.popen.wait()

    def stop_all(self) -> None:
        """Close every lifeline (daemons exit by themselves), then TERM/KILL stragglers."""
        with self._lock:
            procs = list(self.procs.values())
        for proc in procs:
            try:
                if proc.popen.stdin is not None:
                    proc.popen.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + self.stop_timeout
        for proc in procs:
            try:
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._terminate(proc, grace=1.0)
            _signal_group(proc.popen, signal.SIGKILL)  # grandchildren that outlived the daemon

    def reload_template(self) -> None:
        """A reload begins (``zbridge reload``): daemons started from now on must load the
        tools afresh. Nothing to do here, where every daemon is a fresh process; a
        supervisor that forks daemons from a preloaded template rebuilds the template, so
        that no daemon spawned after this returns comes from the old one."""

    def fds(self) -> list[int]:
        """The file descriptors that keep daemons tied to this process (lifelines and
        channels), for a forked child to let go of (``zbridge/forks.py``)."""
        fds = []
        for proc in list(self.procs.values()):
            for stream in (proc.popen.stdin, proc.popen.stderr, proc.channel):
                try:
                    if stream is not None:
                        fds.append(stream.fileno())
                except (OSError, ValueError):
                    continue
        return fds


def _signal_group(popen: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)  # start_new_session made pid the group id
    except (ProcessLookupError, PermissionError):
        pass
