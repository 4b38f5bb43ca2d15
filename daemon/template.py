"""``zbridge-daemon --template FD``: load the tools once, then fork daemons on request.

The supervisor starts a template (``preload``) with the command line a daemon would get,
plus ``--template FD``: its end of a ``SOCK_SEQPACKET`` control socket. The template loads
the tools, runs the start-up hooks and freezes its heap (``loading.load``), as a daemon
does, then says READY and serves nothing but FORK requests (``zbridge/preload.py``). Each
carries the new daemon's routing id and the descriptors it must own (its lifeline, its
stderr pipe and, with an embedded hub, its channel). The child leads a session of its own,
puts them on fd 0, 1-2 and its channel, and serves exactly as a spawned daemon that just
loaded its tools would (``main.serve_loaded``); the template closes its copies, reaps the
child when it ends and reports its exit status.

The template is single-threaded on purpose: after ``fork()`` only the forking thread
exists in the child, so a lock another thread held (a library's thread pool, a logging
handler's) would stay locked forever. Its one own thread, the lifeline reader, only ever
waits in ``read()``. Any other Python thread alive at a FORK makes it refuse, naming them.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import socket
import sys
import threading
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, NoReturn

from zbridge import preload
from zbridge.protocol import EXIT_LOAD_FAILED

from .loading import load, report_load_failure
from .process_io import watch_lifeline

if TYPE_CHECKING:
    from zbridge.tools import Registry

    from .worker import WorkerOptions

log = logging.getLogger("zbridge.daemon")


def run(tools: tuple[str, ...], options: WorkerOptions, control_fd: int, structured: bool) -> NoReturn:
    """Load, say READY, fork on request until the supervisor or the hub is gone."""
    from .main import lifeline_lost
    control = socket.socket(fileno=control_fd)
    control.set_inheritable(False)
    # the hub's death ends a long start-up too, as for a daemon
    lifeline = watch_lifeline(functools.partial(lifeline_lost, options.endpoint))
    try:
        registry = load(tools)
    except BaseException as exc:  # noqa: BLE001 - the supervisor reads this from our stderr
        report_load_failure(exc, structured)
        os._exit(EXIT_LOAD_FAILED)
    Template(registry, options, control, lifeline).serve()


def unsafe_threads(ours: threading.Thread) -> list[str]:
    """Names of the Python threads alive besides the main one and our lifeline reader."""
    main = threading.main_thread()
    return [t.name for t in threading.enumerate() if t is not main and t is not ours and t.is_alive()]


class Template:
    def __init__(self, registry: Registry, options: WorkerOptions, control: socket.socket,
                 lifeline: threading.Thread) -> None:
        self.registry, self.options, self.control, self.lifeline = registry, options, control, lifeline
        self.children: dict[int, tuple[str, int]] = {}  # pidfd: (routing id, pid)
        self.poller = select.poll()
        self.poller.register(control, select.POLLIN)

    def refusal(self) -> str | None:
        threads = unsafe_threads(self.lifeline)
        return preload.threads_reason(threads) if threads else None

    def serve(self) -> NoReturn:
        refusal = self.refusal()
        self._send(preload.ready(os.getpid(), refusal))
        if refusal is not None:  # the supervisor spawns daemons the ordinary way from now on
            os._exit(0)
        while True:
            for fd, _ in self.poller.poll():
                if fd == self.control.fileno():
                    self._request()
                else:
                    self._reap(fd)

    def _send(self, data: bytes) -> None:
        try:
            self.control.send(data)
        except OSError:  # the supervisor is gone: so is our reason to be
            os._exit(0)

    def _request(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.control, preload.MAX_PACKET, preload.FDS_PER_FORK)
        except OSError:
            data, fds = b"", []
        if not data:  # the supervisor closed the control socket: we are not needed any more
            os._exit(0)
        try:
            message = preload.decode(data)
            ident, channel = str(message["ident"]), bool(message["channel"])
            if message.get("op") != "fork" or len(fds) != 2 + channel:
                raise ValueError(f"not a fork request: {data[:200]!r} with {len(fds)} fds")
        except (ValueError, KeyError) as exc:
            log.warning("template: ignoring control message: %s", exc)
            _close(fds)
            return
        refusal = self.refusal()
        if refusal is not None:
            _close(fds)
            self._send(preload.refused(ident, refusal))
            return
        pid = self._fork(ident, fds, channel)
        _close(fds)  # the child's now: our copies would keep its stderr open after it ends
        pidfd = os.pidfd_open(pid)  # readable once the child has ended
        self.children[pidfd] = (ident, pid)
        self.poller.register(pidfd, select.POLLIN)
        self._send(preload.forked(ident, pid))

    def _fork(self, ident: str, fds: list[int], channel: bool) -> int:
        sys.stderr.flush()  # sys.stdout is sys.stderr (isolate_stdout): nothing buffered is copied
        with warnings.catch_warnings():  # 3.12 warns about our lifeline thread, safe as said above
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            try:
                self._become_daemon(ident, fds, channel)
            finally:
                os._exit(1)  # never back into the template's loop
        return pid

    def _become_daemon(self, ident: str, fds: list[int], channel: bool) -> NoReturn:
        """In the child: our own session, descriptors and routing id; then serve."""
        from .main import lifeline_lost, serve_loaded
        os.setsid()  # our own process group, so kills by the supervisor reach only us
        self.control.close()
        _close(list(self.children))
        lifeline, stderr = fds[0], fds[1]
        os.dup2(lifeline, 0)
        os.dup2(stderr, 2)
        os.dup2(2, 1)  # what tools print goes to our stderr, as isolate_stdout arranged
        _close([lifeline, stderr])
        watch_lifeline(functools.partial(lifeline_lost, self.options.endpoint))
        serve_loaded(self.registry, replace(self.options, identity=ident.encode(),
                                            channel=fds[2] if channel else None))
        # told to go (DISCONNECT). No atexit handlers: they belong to the template, whose
        # state (a temporary directory, a lock file) every daemon forked from it shares
        sys.stderr.flush()
        os._exit(0)

    def _reap(self, pidfd: int) -> None:
        ident, pid = self.children.pop(pidfd)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        self._send(preload.exited(ident, pid, os.waitstatus_to_exitcode(status)))


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
