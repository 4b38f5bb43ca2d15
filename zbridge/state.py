"""What the broker keeps about each call and each daemon. Pure records, no behaviour."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import Enum

from .errors import PoolUnavailable


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class DaemonState(str, Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STALE = "stale"        # still running a call whose caller already got its answer
    STOPPING = "stopping"  # asked to exit, or being killed


@dataclass(eq=False)
class Job:
    client: bytes
    id: int
    frame: bytes
    deadline: float
    accepted: float
    state: JobState = JobState.QUEUED
    started: float | None = None


@dataclass(eq=False)
class Daemon:
    ident: bytes
    spawned: float
    state: DaemonState = DaemonState.STARTING
    job: Job | None = None
    stale_id: int | None = None
    kill_at: float | None = None
    pid: int | None = None
    ready_at: float | None = None
    calls: int = 0
    tools: list = field(default_factory=list)
    kill_reason: str | None = None   # set when the hub kills it on purpose (not a failure)
    note: str | None = None          # why the hub gave up on a start
    last_beat: float | None = None
    idle_since: float | None = None
    rss: int | None = None
    call_limit: int | None = None
    retiring: str | None = None      # to be replaced: leaves once capacity allows


def _secret_ident(n: int) -> bytes:
    # unguessable, so no other local peer can claim a daemon's routing id before it connects
    return b"w%d-%s" % (n, secrets.token_hex(4).encode())


def SHUTTING_DOWN() -> PoolUnavailable:
    return PoolUnavailable("bridge is shutting down", {"closing": True})


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""
