"""The daemon's link to its hub: what hub silence means, and when to try again.

Silence is judged by the heartbeat thread and acted on by the serving loop, so the two
share one ``HubLink`` per connection attempt.
"""

from __future__ import annotations

import threading
from enum import Enum

from zbridge.backoff import restart_delay

RECONNECT_BASE = 0.5   # first pause after a lost link, doubling per failed attempt
RECONNECT_CAP = 10.0   # long enough not to hammer a hub that is down, short enough to notice it back


class OnSilence(str, Enum):
    IGNORE = "ignore"        # spawned by a local hub: the stdin lifeline is authoritative
    EXIT = "exit"            # --exit-on-hub-loss: leave, a service manager may restart us
    RECONNECT = "reconnect"  # on another host: keep trying, re-register on our own


class HubLink:
    """One connection attempt: lost once the hub has been silent too long (plus
    ``patience`` before its first word), and whether the hub was heard at all (an
    attempt that heard it resets the backoff)."""

    def __init__(self, patience: float = 0.0) -> None:
        self.patience = patience
        self.lost = threading.Event()
        self.heard = threading.Event()
        self.why = ""
        self.streaming: int | None = None  # the request id of a stream being sent, if any

    def mark_lost(self, why: str) -> None:
        self.why = why
        self.lost.set()


def reconnect_delay(failures: int) -> float:
    """Extra seconds attempt number ``failures + 1`` waits for the hub before its sockets
    are made anew; jittered so daemons that lost the same hub do not retry in step."""
    return restart_delay(failures, RECONNECT_BASE, RECONNECT_CAP)
