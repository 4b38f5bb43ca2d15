"""Where a stuck daemon is stuck: its threads' Python stacks, by ``faulthandler``.

A daemon the hub spawns gets ``--stacks-dir`` (the hub's private 0700 directory). At
start-up, before its tools load, it opens ``stacks-<pid>.txt`` there (append-only, mode
0600) and registers ``faulthandler`` on ``SIGNAL`` for all threads, writing to that file.
The file gets its final name only once the handler is in place, so the hub never sends the
signal to a daemon for which it would still be fatal (SIGUSR2 ends a process by default).

``zbridge stacks w3`` asks the hub, which empties the file, sends the signal and returns
what was written: faulthandler writes from its C signal handler, without the GIL, so a
daemon stuck in C code or in a tool holding the GIL is dumped too. Only daemons on the
hub's own host: a remote daemon's files and process are out of reach.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import time
from typing import IO

SIGNAL = signal.SIGUSR2  # SIGUSR1 interrupts calls (daemon/activity.py)
SETTLE = 0.05     # a dump is whole once the file has stopped growing for this long
WAIT = 2.0        # seconds a daemon gets to write its stacks
_armed: tuple[int, IO[str]] | None = None  # (pid, file): this process's registration


def path_for(directory: str, pid: int) -> str:
    return os.path.join(directory, f"stacks-{pid}.txt")


def arm(directory: str | None) -> None:
    """In a daemon, at start-up: dump every thread's stack to this process's file on
    SIGNAL. Once per process (again in a process forked from one that armed)."""
    global _armed
    pid = os.getpid()
    if not directory or (_armed is not None and _armed[0] == pid):
        return
    final = path_for(directory, pid)
    staging = final + ".new"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    out = os.fdopen(fd, "a")  # O_APPEND: after the hub empties it, writes start at 0 again
    faulthandler.register(SIGNAL, file=out, all_threads=True, chain=False)
    os.replace(staging, final)
    _armed = (pid, out)


def armed(directory: str, pid: int) -> bool:
    """Whether daemon ``pid`` has its handler in place (its file exists)."""
    return os.path.exists(path_for(directory, pid))


def request(directory: str, pid: int) -> None:
    """Empty the daemon's file and signal it to dump (quick: the hub thread may call it)."""
    os.truncate(path_for(directory, pid), 0)
    os.kill(pid, SIGNAL)


def collect(directory: str, pid: int, wait: float = WAIT) -> str:
    """The dump ``request`` asked for, once the file stops growing; "" if nothing came
    within ``wait`` seconds. Blocks: run it off the hub thread."""
    path = path_for(directory, pid)
    deadline = time.monotonic() + wait
    size, since = 0, time.monotonic()
    while time.monotonic() < deadline:
        try:
            now_size = os.stat(path).st_size
        except FileNotFoundError:
            return ""  # the daemon exited meanwhile
        if now_size != size:
            size, since = now_size, time.monotonic()
        elif size and time.monotonic() - since >= SETTLE:
            break
        time.sleep(0.01)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def forget(directory: str, pid: int) -> None:
    """Remove an exited daemon's file (a forked daemon's staging file too)."""
    for path in (path_for(directory, pid), path_for(directory, pid) + ".new"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
