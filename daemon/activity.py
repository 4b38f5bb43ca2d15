"""What the daemon is doing, shared by the serving loop and the heartbeat thread, and how a
cancel reaches a running tool.

A cancel for request N arrives on the heartbeat thread. If N is still the running request,
it marks it and signals the process (SIGUSR1); the handler runs in the main thread, between
two bytecodes of the tool or as an EINTR out of a blocking call such as ``time.sleep``, and
raises ``zbridge.Interrupted`` there only if N is *still* running. ``end()`` clears the mark
first, so a cancel can never reach a later call.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from zbridge.errors import Interrupted
from zbridge.procinfo import rss_bytes

CANCEL_SIGNAL = signal.SIGUSR1


@dataclass
class Activity:
    request_id: int | None = None
    busy_since: float | None = None
    calls: int = 0
    cancel_id: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self, request_id: int) -> None:
        with self.lock:
            self.request_id, self.busy_since = request_id, time.time()

    def end(self) -> None:
        with self.lock:
            self.cancel_id = None  # first: from here on the handler raises nothing
            self.request_id, self.busy_since = None, None
            self.calls += 1

    def request_cancel(self, request_id: int) -> bool:
        """Heartbeat thread: interrupt ``request_id`` if it is the one running."""
        with self.lock:
            if self.request_id != request_id:
                return False  # not begun yet, or over: the hub asks again while it waits
            self.cancel_id = request_id
        os.kill(os.getpid(), CANCEL_SIGNAL)
        return True

    def take_cancel(self) -> bool:
        """Main thread (signal handler): is the running call the cancelled one?"""
        if self.cancel_id is not None and self.cancel_id == self.request_id:
            self.cancel_id = None
            return True
        return False

    def snapshot(self) -> dict[str, Any]:
        busy = self.request_id is not None
        return {"pid": os.getpid(), "state": "busy" if busy else "idle", "request": self.request_id,
                "busy_since": self.busy_since, "calls": self.calls, "rss": rss_bytes()}


def install_cancel_handler(activity: Activity) -> None:
    def on_cancel(signum: int, frame: object) -> None:
        if activity.take_cancel():
            raise Interrupted("cancelled by the caller")
    signal.signal(CANCEL_SIGNAL, on_cancel)


def finish(activity: Activity) -> None:
    """end(), even if a cancel's signal lands while it runs."""
    while True:
        try:
            activity.end()
            return
        except Interrupted:
            continue
