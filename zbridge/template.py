"""The supervisor's template process (``preload``): start it, fork daemons through it,
watch it, rebuild it. The messages and the decisions are ``preload.py`` (pure); the
template process itself is ``daemon/template.py``.

A forked daemon is held as a ``forked.Forked``, which looks like a ``Popen`` to the
supervisor; its descriptors go to the template with the FORK (``SCM_RIGHTS``), or to an
ordinary spawn when the template cannot fork after all.

Threads: the template's stderr is forwarded by one thread (tagged ``template``), its
control socket read by another, which also turns the template's end into its consequences
(daemons waiting for it fail as it failed; a template that was ready is rebuilt). Every
decision is taken under ``lock``; ``spawn`` waits for a fork's answer outside it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from . import preload
from .daemonlog import forward
from .forked import Forked
from .logs import note_text
from .preload import How, Plan, TemplateState
from .state import describe_exit
from .statusmap import PreloadStatus

log = logging.getLogger("zbridge.hub")

FORK_TIMEOUT = 5.0    # seconds a ready template may take to answer a FORK before it counts as stuck
TAIL_LINES = 40
IDENT = b"template"   # how the template's stderr lines are tagged


def _note(level: int, event: str, **fields: object) -> None:
    if log.isEnabledFor(level):
        log.log(level, "%s", note_text(event, fields), extra={"event": event, **fields})


@dataclass
class _Generation:
    """One template process, and the daemons it was asked for."""
    proc: subprocess.Popen[bytes]
    control: socket.socket
    started: float
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    stderr_done: threading.Event = field(default_factory=threading.Event)
    timer: threading.Timer | None = None
    pending: list[Forked] = field(default_factory=list)             # until it is ready
    asked: dict[bytes, Forked] = field(default_factory=dict)        # FORK sent, no answer yet
    children: dict[bytes, Forked] = field(default_factory=dict)     # forked, not ended yet
    abandoned: bool = False   # being killed: its end is no news, and nothing more is asked of it
    retired: bool = False     # old code (a reload): forks no more, leaves after its daemons

    def idle(self) -> bool:
        return not (self.pending or self.asked or self.children)


class Template:
    """Templates, one at a time, and the daemons forked from them (see the module docstring).

    ``command``: the daemon command line without routing id or channel; ``spawn``: start
    a ``Forked`` the ordinary way (``Popen`` with its ends), when the template cannot."""

    def __init__(self, command: list[str], env: Callable[[], dict[str, str]], plan: Plan,
                 spawn: Callable[[Forked], subprocess.Popen[bytes]]) -> None:
        self.command, self.env, self.plan, self._spawn = command, env, plan, spawn
        self.lock = threading.Lock()
        self.current: _Generation | None = None      # the one forks are asked of
        self.generations: list[_Generation] = []    # every one still alive (reporting exits)
        self.stopping = False
        self._rebuild: threading.Timer | None = None

    # --- the supervisor's calls ---------------------------------------------------------

    def spawn(self, ident: bytes, channel: socket.socket | None) -> Forked | None:
        """A daemon forked from the template (or deferred until it is ready), or None: spawn
        it the ordinary way. Blocks only while a ready template forks."""
        with self.lock:
            if self.stopping:
                return None
            how, start = self.plan.spawn(time.monotonic())
            if start and not self._start():
                return None
            gen = self.current
            if how is How.SPAWN or gen is None:
                return None
            child = Forked(ident, channel, self.cancel)
            if how is How.DEFER:
                gen.pending.append(child)
                return child
            self._ask(gen, child)
        if not child._started.wait(FORK_TIMEOUT):
            with self.lock:
                self._abandon(gen, f"no answer to a fork within {FORK_TIMEOUT}s")
        return child

    def cancel(self, child: Forked, sig: int) -> None:
        """A kill for a daemon not forked yet: a deferred one never will be."""
        with self.lock:
            for gen in self.generations:
                if child in gen.pending:
                    gen.pending.remove(child)
                    child.finish(-sig, "stopped before its template was ready")
                    if gen.idle() and (gen.retired or self.plan.state is TemplateState.STARTING):
                        # the broker gave up on the start (start_timeout): it was the template's
                        self._abandon(gen, "no daemon waits for it any more")
                elif gen.asked.get(child.ident) is child:
                    child.kill_signal = sig  # sent as soon as its pid is known

    def reload(self) -> None:
        """The tools' code changed: daemons spawned from now on come from a new template
        (waiting for it, as for the first); the current one forks what it was already
        asked for, reports its daemons' exits, and leaves once they have."""
        with self.lock:
            self.plan.reload()
            gen, self.current = self.current, None
            if gen is not None and not gen.abandoned:
                gen.retired = True
                _note(logging.INFO, "template_retire", pid=gen.proc.pid, reason="reload")
                self._leave_if_done(gen)

    def _leave_if_done(self, gen: _Generation) -> None:
        """A retired template with no daemon left to fork or report: its lifeline closes."""
        if gen.retired and gen.idle() and gen.proc.stdin is not None:
            with contextlib.suppress(OSError):
                gen.proc.stdin.close()

    def close(self) -> None:
        """The pool is stopping: no more forks, deferred daemons never start. Templates
        stay until ``stop``, to report their daemons' exits."""
        with self.lock:
            self.stopping = True
            if self._rebuild is not None:
                self._rebuild.cancel()
            for gen in self.generations:
                for child in gen.pending:
                    child.finish(-signal.SIGTERM, "stopped before its template was ready")
                gen.pending.clear()

    def stop(self, timeout: float) -> None:
        """Close the templates' lifelines (they exit), KILL one that lingers."""
        self.close()
        with self.lock:
            gens = list(self.generations)
        deadline = time.monotonic() + timeout
        for gen in gens:
            with contextlib.suppress(OSError):
                if gen.proc.stdin is not None:
                    gen.proc.stdin.close()
        for gen in gens:
            try:
                gen.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(gen.proc.pid, signal.SIGKILL)
                gen.proc.wait()

    def fds(self) -> list[int]:
        """The templates' lifelines and control sockets, for a forked child of the hub's
        process to let go of (``zbridge/forks.py``)."""
        found = []
        for gen in list(self.generations):
            for stream in (gen.proc.stdin, gen.proc.stderr, gen.control):
                try:
                    if stream is not None and stream.fileno() >= 0:
                        found.append(stream.fileno())
                except (OSError, ValueError):
                    continue
        return found

    def status(self) -> PreloadStatus:
        gen = self.current
        return PreloadStatus(state=self.plan.state.value, pid=gen.proc.pid if gen is not None else None,
                             refusal=self.plan.refusal, failures=self.plan.failures)

    # --- one template's life --------------------------------------------------------------

    def _start(self) -> bool:
        """Start a template process (under the lock); False if it could not be."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                self.command + ["--template", str(theirs.fileno())], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                env=self.env(), pass_fds=(theirs.fileno(),))
        except OSError as exc:
            ours.close()
            _note(logging.WARNING, "template_failed", reason=f"cannot start the template: {exc}")
            self.plan.ended(time.monotonic())
            return False
        finally:
            theirs.close()
        gen = self.current = _Generation(proc, ours, time.monotonic())
        self.generations.append(gen)
        if self.plan.ever_ready:  # a rebuild: no daemon waits for it, so it needs a judge of its own
            gen.timer = threading.Timer(self.plan.start_timeout, self._start_timed_out, args=(gen,))
            gen.timer.daemon = True
            gen.timer.start()
        threading.Thread(target=self._forward, args=(gen,), daemon=True,
                         name="zbridge-template-stderr").start()
        threading.Thread(target=self._read, args=(gen,), daemon=True, name="zbridge-template").start()
        _note(logging.INFO, "template_spawn", pid=proc.pid)
        return True

    def _start_timed_out(self, gen: _Generation) -> None:
        with self.lock:
            if self.current is gen and self.plan.state is TemplateState.STARTING:
                self._abandon(gen, f"not ready after start_timeout={self.plan.start_timeout}s")

    def _abandon(self, gen: _Generation, reason: str) -> None:
        """Kill a template that failed us (under the lock); the next spawn does not wait
        for it, and its end is not news."""
        if gen.abandoned:
            return
        gen.abandoned = True
        _note(logging.WARNING, "template_kill", pid=gen.proc.pid, reason=reason)
        if self.current is gen:
            self.current = None
            self._after_end(self.plan.ended(time.monotonic()))
        _kill_group(gen.proc.pid, signal.SIGKILL)

    def _forward(self, gen: _Generation) -> None:
        assert gen.proc.stderr is not None  # started with stderr=PIPE
        try:
            for raw in gen.proc.stderr:
                gen.tail.append(forward(IDENT, gen.proc.pid, raw.decode(errors="replace").rstrip("\n")))
        finally:
            gen.stderr_done.set()

    def _read(self, gen: _Generation) -> None:
        """The template's messages, until it is gone; then what that means."""
        try:
            while True:
                data = gen.control.recv(preload.MAX_PACKET)
                if not data:
                    break
                try:
                    message = preload.decode(data)
                except ValueError as exc:
                    log.warning("template: ignoring control message: %s", exc)
                    continue
                with self.lock:
                    self._on_message(gen, message)
        except OSError:
            pass
        finally:
            self._ended(gen)

    def _on_message(self, gen: _Generation, message: dict[str, object]) -> None:
        event, ident = message.get("event"), str(message.get("ident", "")).encode()
        if event == "ready" and not gen.abandoned:
            if gen.timer is not None:
                gen.timer.cancel()
            refusal = message.get("refusal")
            if refusal:
                self._refuse(gen, str(refusal))
                return
            if not gen.retired:
                self.plan.ready(time.monotonic())
            _note(logging.INFO, "template_ready", pid=gen.proc.pid,
                  startup_s=round(time.monotonic() - gen.started, 6))
            waiting, gen.pending = gen.pending, []
            for child in waiting:
                self._ask(gen, child)
        elif event == "forked" and ident in gen.asked:
            child = gen.asked.pop(ident)
            gen.children[ident] = child
            child.forked(int(str(message["pid"])))
        elif event == "refused" and ident in gen.asked:
            self._refuse(gen, str(message.get("reason")))
        elif event == "exit" and ident in gen.children:
            gen.children.pop(ident).finish(int(str(message["status"])))
            self._leave_if_done(gen)

    def _ask(self, gen: _Generation, child: Forked) -> None:
        """Send a FORK (under the lock). If the template is gone, its end fails the child."""
        gen.asked[child.ident] = child
        try:  # never blocks: a full socket means a stuck template, and the FORK's wait says so
            socket.send_fds(gen.control, [preload.fork(child.ident.decode(), child.channel_fd is not None)],
                            child.theirs, socket.MSG_DONTWAIT)
        except OSError:
            pass  # the template is gone (the reader sees its end) or stuck (spawn's wait)

    def _refuse(self, gen: _Generation, reason: str) -> None:
        """Never fork from a template again (logged once); who waited is spawned now."""
        if self.current is gen and self.plan.state is not TemplateState.REFUSED:
            self.plan.refuse(reason)
            _note(logging.WARNING, "preload_refused", pid=gen.proc.pid, reason=reason)
        waiting = gen.pending + list(gen.asked.values())
        gen.pending, gen.asked = [], {}
        for child in waiting:
            try:
                child.spawned(self._spawn(child))
            except OSError as exc:
                child.finish(1, f"cannot start daemon: {exc}")

    def _ended(self, gen: _Generation) -> None:
        gen.stderr_done.wait(1.0)  # its last words: why it failed to start
        code = gen.proc.wait()
        gen.control.close()
        if gen.timer is not None:
            gen.timer.cancel()
        with self.lock:
            self.generations.remove(gen)
            # a template that never got ready failed to start: so did every daemon waiting for it
            for child in gen.pending:
                child.finish(code, "\n".join(gen.tail))
            for child in gen.asked.values():
                child.finish(code, f"its template (pid {gen.proc.pid}) ended before it forked it")
            for child in gen.children.values():
                child.orphan()
            gen.pending, gen.asked, gen.children = [], {}, {}
            if gen.abandoned or self.current is not gen:
                return
            self.current = None
            was = self.plan.state
            delay = self.plan.ended(time.monotonic())
            if not self.stopping:
                _note(logging.INFO if was is TemplateState.REFUSED else logging.WARNING, "template_exit",
                      pid=gen.proc.pid, reason=describe_exit(code),
                      rebuild_in_s=None if delay is None else round(delay, 3))
            self._after_end(delay)

    def _after_end(self, delay: float | None) -> None:
        """Rebuild in ``delay`` seconds (under the lock), unless None or stopping."""
        if delay is None or self.stopping:
            return
        self._rebuild = threading.Timer(delay, self._rebuild_due)
        self._rebuild.daemon = True
        self._rebuild.start()

    def _rebuild_due(self) -> None:
        with self.lock:
            if not self.stopping and self.plan.rebuild_due(time.monotonic()):
                self._start()


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session made pid the group id
    except (ProcessLookupError, PermissionError):
        pass
