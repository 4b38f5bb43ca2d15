"""What the broker keeps about each call and each daemon. Pure records, no behaviour."""

from __future__ import annotations

import secrets
import signal
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import PoolUnavailable
from .stats import ToolStats

# why daemons end, as a small fixed set (restarts_total{reason}); "stopped" is shutdown;
# "scaled" and "reloaded": let go by `zbridge scale` and `zbridge reload`
EXIT_KINDS = ("crashed", "start_failed", "killed", "recycled", "idle", "lost", "scaled", "reloaded")


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


class Process(str, Enum):
    """What the operating system says about a local daemon's process."""
    RUNNING = "running"  # running or sleeping: alive, even if its heartbeat thread is starved
    FROZEN = "frozen"    # stopped (SIGSTOP, a debugger): it will not answer
    GONE = "gone"        # exited or a zombie


@dataclass(eq=False, slots=True)
class Job:
    client: bytes
    id: int
    frame: bytes
    deadline: float
    accepted: float
    stream: bool = False
    state: JobState = JobState.QUEUED
    started: float | None = None
    daemon: bytes | None = None      # who runs it, once dispatched
    delivered: int = 0               # streams: items forwarded to the caller
    credited: int = 0                # streams: credit forwarded to the daemon
    touched: float = 0.0             # streams: last item, credit or probe
    tool: str | None = None          # the body's "method", peeked at by the hub
    stats: ToolStats | None = None   # that tool's numbers (kept here: no lookup per reply)
    extra: tuple[Any, ...] = ()      # the request's buffer frames (opaque), until dispatched
    extra_size: int = 0              # their bytes, counted in ``size``
    owner: Any = None                # a caller in this process waiting on the job itself
                                     # (``zbridge/direct.py``: its ``wake()``), or None for a zmq client
    answer: tuple[bytes, tuple[Any, ...]] | None = None  # an owner's answer: reply frame, buffers
    channel: Any = None              # an owner's lease: the channel of the daemon running it
    sent: bool = False               # the leased request is on that channel
    owner_sends: bool = False        # its owner sends it (else the thread that lent it does)

    @property
    def key(self) -> tuple[bytes, int]:
        return self.client, self.id

    @property
    def size(self) -> int:
        return len(self.frame) + self.extra_size


@dataclass(eq=False)
class Daemon:
    ident: bytes
    spawned: float
    name: str = ""                   # what status shows ("w3", "r1"); the routing id stays private
    state: DaemonState = DaemonState.STARTING
    job: Job | None = None
    stale_id: int | None = None
    kill_at: float | None = None
    pid: int | None = None
    ready_at: float | None = None
    calls: int = 0
    tools: list[Any] = field(default_factory=list)
    kill_reason: str | None = None   # set when the hub kills it on purpose (not a failure)
    note: str | None = None          # why the hub gave up on a start
    last_beat: float | None = None
    vouched_at: float | None = None  # beats overdue, but the OS showed the process running
    idle_since: float | None = None
    rss: int | None = None
    call_limit: int | None = None
    retiring: str | None = None      # to be replaced: leaves once capacity allows
    retire_kind: str = "recycled"    # its exit kind once it leaves (scaled, reloaded: rollout.py)
    generation: int = 0              # the pool's reload count when it was spawned (rollout.py)
    exit_kind: str | None = None     # why it is going, one of EXIT_KINDS, when the hub decided
    channel: Any = None              # its exclusive channel (``wire.Channel``), if spawned with one
    interrupt_at: float | None = None  # when to ask its stale call to stop again (interrupt)


def _secret_ident(n: int) -> bytes:
    # unguessable, so no other local peer can claim a daemon's routing id before it connects
    return b"w%d-%s" % (n, secrets.token_hex(4).encode())


def SHUTTING_DOWN() -> PoolUnavailable:
    return PoolUnavailable("bridge is shutting down", {"closing": True, "cause": "closing"})


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def last_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def describe_exit(returncode: int | None) -> str:
    if returncode is None:  # a forked daemon that outlived its template (its parent)
        return "exit status unknown"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"
