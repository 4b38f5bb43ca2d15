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

With ``preload`` (a ``preload.Plan``), daemons are forked from a template process that
loaded the tools once (``template.py``); a forked daemon is held as a ``template.Forked``,
which the code below uses as it uses a ``Popen``: the same lifeline, stderr, kills and exit
report. When the template cannot fork (starting again, refused), ``spawn`` falls back to
the ordinary way here.
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
from .preload import Plan
from .procinfo import run_state
from .state import Process as ProcessState
from .state import describe_exit
from .forked import Forked
from .template import Template
from .wire import Channel

__all__ = ["Supervisor", "describe_exit"]

TAIL_LINES = 40

Notify = Callable[[bytes, "int | None", str], None]  # (daemon id, exit status, stderr tail)


@dataclass
class Process:
    ident: bytes
    popen: subprocess.Popen[bytes] | Forked
    channel: Channel | None = None
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    reported: bool = False


class Supervisor:
    def __init__(self, command: list[str], notify: Notify, *, stop_timeout: float = 5.0,
                 env: dict[str, str] | None = None, channels: int = 0,
                 preload: Plan | None = None) -> None:
        self.command = command
        self.notify = notify
        self.stop_timeout = stop_timeout
        self.env = env
        self.channels = channels  # 0: none; else the largest frame a channel carries
        self.procs: dict[bytes, Process] = {}
        self._lock = threading.Lock()
        self.template = None if preload is None else Template(
            command + ["--lifeline"] + daemon_args(), self._env, preload, self._spawn_forked)

    def spawn(self, ident: bytes) -> tuple[int | None, Channel | None]:
        """Start a daemon: its pid (None while it waits for the template to fork it), and
        its channel (if ``channels``)."""
        ours = theirs = None
        if self.channels:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            forked = self.template.spawn(ident, theirs) if self.template is not None else None
            child = forked or self._popen(ident, subprocess.PIPE, subprocess.PIPE,
                                          None if theirs is None else theirs.fileno())
        except BaseException:
            if ours is not None:
                ours.close()
            raise
        finally:
            if theirs is not None:
                theirs.close()
        channel = Channel(ours, self.channels) if ours is not None else None
        proc = Process(ident, child, channel)
        with self._lock:
            self.procs[ident] = proc
        threading.Thread(target=self._watch, args=(proc,), daemon=True,
                         name=f"zbridge-watch-{ident.decode()}").start()
        return child.pid, channel

    def _env(self) -> dict[str, str]:
        return dict(os.environ if self.env is None else self.env, PYTHONUNBUFFERED="1")

    def _popen(self, ident: bytes, stdin: int, stderr: int, channel: int | None) -> subprocess.Popen[bytes]:
        command = self.command + ["--identity", ident.decode(), "--lifeline"] + daemon_args()
        if channel is not None:
            command += ["--channel", str(channel)]
        return subprocess.Popen(
            command, stdin=stdin, stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=True, env=self._env(), pass_fds=() if channel is None else (channel,))

    def _spawn_forked(self, child: Forked) -> subprocess.Popen[bytes]:
        """A daemon the template was to fork, started the ordinary way with its ends."""
        return self._popen(child.ident, child.theirs[0], child.theirs[1], child.channel_fd)

    def _watch(self, proc: Process) -> None:
        """Forward stderr; at EOF the process is exiting: wait for it and report."""
        assert proc.popen.stderr is not None  # spawned with stderr=PIPE
        for raw in proc.popen.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            proc.tail.append(forward(proc.ident, proc.popen.pid or 0, line))
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
        if isinstance(proc.popen, Forked) and proc.popen.note:  # why it never ran: the template's words
            proc.tail.extend(proc.popen.note.splitlines())
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
        if proc.popen.pid is None:  # waiting for the template to fork it
            return ProcessState.RUNNING
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

    def reload_template(self) -> None:
        """A reload begins (``zbridge reload``): daemons started from now on must load the
        tools afresh. Every spawned daemon is a fresh process already; with ``preload``, the
        template is retired, and daemons spawned from now on are forked from a new one
        (``Template.reload``), so none spawned after this returns comes from the old code."""
        if self.template is not None:
            self.template.reload()

    def stop_all(self) -> None:
        """Close every lifeline (daemons exit by themselves), then TERM/KILL stragglers;
        the template last (it reports its daemons' exits)."""
        if self.template is not None:
            self.template.close()
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
        if self.template is not None:
            self.template.stop(self.stop_timeout)

    def fds(self) -> list[int]:
        """The file descriptors that keep daemons tied to this process (lifelines and
        channels), for a forked child to let go of (``zbridge/forks.py``)."""
        fds = [] if self.template is None else self.template.fds()
        for proc in list(self.procs.values()):
            for stream in (proc.popen.stdin, proc.popen.stderr, proc.channel):
                try:
                    if stream is not None:
                        fds.append(stream.fileno())
                except (OSError, ValueError):
                    continue
        return fds


def _signal_group(popen: subprocess.Popen[bytes] | Forked, sig: int) -> None:
    if isinstance(popen, Forked):
        popen.signal_group(sig)
        return
    try:
        os.killpg(popen.pid, sig)  # start_new_session made pid the group id
    except (ProcessLookupError, PermissionError):
        pass
