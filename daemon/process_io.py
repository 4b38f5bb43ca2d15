"""Keeping tool output out of protocol streams, and the lifeline to the hub."""

from __future__ import annotations

import os
import signal
import sys

TYPE_CHECKING = False  # typing costs ~2.5 ms at start-up; annotations are strings anyway
if TYPE_CHECKING:
    import threading
    from typing import BinaryIO, Callable


def isolate_stdout() -> BinaryIO:
    """Move the real stdout to a private fd and point fd 1 (and sys.stdout) at stderr.

    After this, nothing a tool prints, from Python or from C, can reach the returned
    stream; it goes to the daemon's stderr, which the hub logs.
    """
    sys.stdout.flush()
    private = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(private, "wb")


def watch_lifeline(on_lost: Callable[[], None]) -> threading.Thread:
    """Call ``on_lost`` when stdin reaches EOF: the hub that holds its other end is gone."""
    import threading  # only the zmq worker watches a lifeline; the pipe daemon never does

    def watch() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        on_lost()

    thread = threading.Thread(target=watch, name="zbridge-lifeline", daemon=True)
    thread.start()
    return thread


def kill_own_group() -> None:
    """SIGKILL our process group, ourselves included, if we lead it.

    A hub spawns each daemon in a session of its own (pgid == pid), so the group is this
    daemon and whatever its tools started; their only link to the hub was us. Anything
    else that passes --lifeline without a new session shares its parent's group, which
    is not ours to kill.
    """
    pid = os.getpid()
    if os.getpgrp() == pid:
        os.killpg(pid, signal.SIGKILL)
