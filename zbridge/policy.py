"""What a client does after an error: raise it, retry the call, or use the pipe fallback.

Pure, and shared by every client path so the rules live in one place:
- PoolUnavailable means the call never ran, so the one-shot subprocess may serve it; not
  when the bridge is shutting down (new calls are refused), not when the tools failed
  to load (a one-shot subprocess would fail the same way, only slower), and not when the
  client cannot be used at all (``broken``: its hub thread died; ``forked``: a child's
  copy; ``reentrant``: a handler calling from inside a call): those are the caller's to
  see at once, not to hide behind a slow subprocess;
- WorkerLost and ConnectionLost mean it may have run: retried only when the caller marked
  it idempotent;
- everything else is the answer.
"""

from __future__ import annotations

from enum import Enum

from .errors import BridgeError, ConnectionLost, PoolUnavailable, WorkerLost


NO_FALLBACK = frozenset({"closing", "load_failed", "broken", "forked", "reentrant"})


class Step(str, Enum):
    RAISE = "raise"
    RETRY = "retry"
    FALLBACK = "fallback"


def after_error(error: BridgeError, *, attempt: int, idempotent: bool, retries: int,
                can_fallback: bool) -> Step:
    """``attempt`` counts retries already made (0 for the first try)."""
    if isinstance(error, PoolUnavailable):
        data = error.data if isinstance(error.data, dict) else {}
        hopeless = data.get("closing") or data.get("cause") in NO_FALLBACK
        return Step.FALLBACK if can_fallback and not hopeless else Step.RAISE
    if isinstance(error, (WorkerLost, ConnectionLost)) and idempotent and attempt < retries:
        return Step.RETRY
    return Step.RAISE
