"""The shape of ``status()``: what a hub says about its pool, as typed dictionaries.

The same map travels as a STATUS reply (docs/PROTOCOL.md, "STATUS"); these types let a
type checker see ``bridge.status()["daemons"][0]["pid"]`` for what it is.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class DaemonStatus(TypedDict):
    id: str                      # short public name: "w3" spawned here, "r1" from another host
    pid: int | None
    state: str                   # starting, idle, busy, stale, stopping
    calls: int
    uptime_s: float | None
    current_call: int | None
    current_tool: str | None
    call_age_s: float | None
    tools: list[str]
    rss: int | None
    last_beat_age_s: float | None
    unresponsive: bool           # beats overdue, process running (a tool holding the GIL)
    retiring: str | None
    generation: NotRequired[int]  # reloads before it was spawned (older hubs: absent)
    routing_id: NotRequired[str]  # only where tracebacks are exposed (local callers)


class ExitStatus(TypedDict):
    id: str
    pid: int | None
    reason: str
    ago_s: float
    spawned_ago_s: float


class Quantiles(TypedDict):
    """Seconds, within 1.2 % (``zbridge.stats``); None before the first sample."""
    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None
    max: NotRequired[float | None]   # since issue 23 (older hubs: absent)
    count: NotRequired[int]          # samples: calls that ran (or waited), timeouts included


class ToolStatus(TypedDict):
    calls: int
    errors: dict[str, int]       # by JSON-RPC error code
    queue_s: Quantiles
    run_s: Quantiles


class ReloadStatus(TypedDict):
    """A reload in progress (``zbridge reload``)."""
    generation: int
    phase: str                   # checking (its first new daemon is starting), rolling
    replaced: int                # old daemons retired so far
    left: int                    # old daemons still running
    started_ago_s: float


class PreloadStatus(TypedDict):
    """The template daemons are forked from (``preload``)."""
    state: str                   # absent, starting, ready, refused
    pid: int | None
    refusal: str | None          # why it never forks (threads alive after start-up)
    failures: int                # templates in a row that failed or died soon after ready


class Status(TypedDict):
    workers: int
    queue_depth: int
    queue_bytes: int
    closing: bool
    failures: int
    last_start_error: str | None
    last_start_cause: str | None
    counters: dict[str, int]
    daemons: list[DaemonStatus]
    restarts: list[ExitStatus]
    exits: dict[str, int]
    tools: dict[str, ToolStatus]
    endpoint: str
    hub_pid: int
    protocol: int
    capabilities: list[str]      # what a client may ask for (docs/PROTOCOL.md §10)
    max_message_size: int
    generation: NotRequired[int]           # reloads asked for (older hubs: absent)
    reload: NotRequired[ReloadStatus | None]  # the reload in progress, if any
    pool_enabled: NotRequired[bool]  # False (and little else) when the pool is disabled
    preload: NotRequired[PreloadStatus]  # only with preload (since issue 21)


def disabled(workers: int) -> Status:
    """What status() says when the pool is disabled (every call runs in a one-shot pipe)."""
    return Status(workers=workers, queue_depth=0, queue_bytes=0, closing=False, failures=0,
                  last_start_error=None, last_start_cause=None, counters={}, daemons=[],
                  restarts=[], exits={}, tools={}, endpoint="", hub_pid=0, protocol=0,
                  capabilities=[], max_message_size=0, pool_enabled=False)
