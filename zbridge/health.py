"""When a ready daemon must go: silence, idleness, call count, memory. Pure decisions.

Liveness is judged by heartbeats (a separate socket answered by a thread, so a long call
still beats). A tool holding the GIL in one long C call starves that thread, so silence
alone does not condemn a local daemon: the broker then asks the operating system, and a
process that is running or sleeping is busy, not dead (``vouched_at``). A hung *call* is
judged by its deadline in the broker, never here.
"""

from __future__ import annotations

import random
from enum import Enum
from typing import Protocol

from .config import Settings


class IdleAction(str, Enum):
    RESTART = "restart"  # replace it in the background so the next call is still warm
    STOP = "stop"        # let it go (down to min_workers); a later call starts one lazily
    NONE = "none"


class DaemonView(Protocol):
    ready_at: float | None
    last_beat: float | None
    vouched_at: float | None
    idle_since: float | None
    calls: int
    call_limit: int | None
    rss: int | None


def silence_limit(s: Settings) -> float:
    return s.heartbeat_interval * s.heartbeat_misses


def silence_deadline(d: DaemonView, s: Settings) -> float | None:
    """When the daemon's silence is next judged; None before it is ready."""
    if d.ready_at is None or d.last_beat is None:
        return None
    deadline = d.last_beat + silence_limit(s)
    if d.vouched_at is not None:  # seen running: look again after one interval
        deadline = max(deadline, d.vouched_at + s.heartbeat_interval)
    return deadline


def beat_overdue(d: DaemonView, now: float, s: Settings) -> str | None:
    """Why the daemon may be dead or frozen, or None while it beats."""
    deadline = silence_deadline(d, s)
    if deadline is None or now <= deadline:
        return None
    silent = now - (d.last_beat or 0.0)
    return f"no heartbeat for {silent:.1f}s (interval {s.heartbeat_interval}s x {s.heartbeat_misses} misses)"


def idle_expired(d: DaemonView, now: float, s: Settings) -> bool:
    return (s.idle_timeout > 0 and d.idle_since is not None
            and now - d.idle_since >= s.idle_timeout and IdleAction(s.idle_action) is not IdleAction.NONE)


def recycle_reason(d: DaemonView, s: Settings, retire_flag: bool = False) -> str | None:
    """Why a daemon should be replaced after a call, or None."""
    if retire_flag or (s.max_rss_mb and d.rss and d.rss > s.max_rss_mb * 1024 * 1024):
        return f"RSS over max_rss_mb={s.max_rss_mb}"
    if d.call_limit and d.calls >= d.call_limit:
        return f"served {d.calls} calls (max_calls={s.max_calls} + jitter)"
    return None


def call_limit(s: Settings, rng: random.Random) -> int | None:
    """max_calls plus up to 10 % jitter, so daemons started together do not recycle together."""
    if not s.max_calls:
        return None
    return s.max_calls + rng.randint(0, max(0, s.max_calls // 10))
