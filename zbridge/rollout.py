"""Live changes to a running pool, the pure parts: which daemons leave first when the pool
shrinks, the record of a reload in progress, and how both read in STATUS.

Every transition stays a ``Broker`` method (``set_workers``, ``reload`` and ``_roll``);
these are the broker's vocabulary for them. A reload is a rolling replacement built on
the broker's retirements (a retiring daemon serves until the others cover ``wanted``,
then leaves once idle): one new daemon is started first, and only once it is READY are
the old ones retired, one at a time, each leaving after its running call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import ReloadFailed
from .state import Daemon, DaemonState

RELOAD_TIMEOUT = 600.0  # seconds a caller waits for a reload: old daemons leave after their calls
CONTROL_TIMEOUT = 10.0  # seconds a caller waits for the answer to scale or stacks

# Who leaves first when the pool shrinks: a daemon not serving yet costs nothing to let
# go, a stale one is finishing a call nobody waits for, an idle one goes at once, a busy
# one only after its call.
_LEAVE_ORDER = {DaemonState.STARTING: 0, DaemonState.STALE: 1, DaemonState.IDLE: 2,
                DaemonState.BUSY: 3, DaemonState.STOPPING: 4}


@dataclass(eq=False)
class Reload:
    """A reload in progress: daemons spawned before ``generation`` run the old code."""
    generation: int
    started: float
    probe: Daemon | None                  # the first new daemon, until it said READY
    waiters: list[tuple[bytes, int]] = field(default_factory=list)  # (client, request id)
    replaced: int = 0                     # old daemons retired so far


def spawned_here(daemon: Daemon) -> bool:
    """A daemon this hub spawned ("w3"), not one that connected from another host ("r1"):
    only those can be replaced or scaled (docs/PROTOCOL.md §14 names them so)."""
    return daemon.name.startswith("w")


def staying(daemons: Iterable[Daemon]) -> list[Daemon]:
    """Spawned daemons that are neither leaving nor asked to."""
    return [d for d in daemons if spawned_here(d) and d.state is not DaemonState.STOPPING
            and not d.retiring]


def leavers(daemons: Iterable[Daemon], count: int) -> list[Daemon]:
    """The ``count`` daemons to let go first (never a busy one while another would do;
    of the same state, the last spawned, so the ids an operator knows stay). ``daemons``
    in the order they were spawned."""
    if count <= 0:
        return []
    ranked = sorted(enumerate(daemons), key=lambda pair: (_LEAVE_ORDER[pair[1].state], -pair[0]))
    return [daemon for _, daemon in ranked[:count]]


def old(daemons: Iterable[Daemon], reload: Reload) -> list[Daemon]:
    """The spawned daemons a reload still has to replace."""
    return [d for d in daemons if spawned_here(d) and d.generation < reload.generation]


def failed(why: str | None, cause: str, tail: str) -> ReloadFailed:
    """The error of a reload whose first new daemon did not start."""
    data: dict[str, Any] = {"cause": cause}
    if tail:
        data["stderr"] = tail[-4000:]
    lines = [line.strip() for line in (why or "").splitlines() if line.strip()]
    return ReloadFailed(f"reload aborted, the old daemons keep serving: the new tools did not start: "
                        f"{'; '.join(lines) or 'the first new daemon exited before it was ready'}", data)


def result(reload: Reload, now: float) -> dict[str, Any]:
    """A finished reload's reply: the generation now running, how many daemons it replaced."""
    return {"generation": reload.generation, "replaced": reload.replaced,
            "took_s": round(now - reload.started, 3)}


def status(reload: Reload | None, daemons: Iterable[Daemon], now: float) -> dict[str, Any] | None:
    """STATUS ``reload``: None when none runs, else its phase and what is left."""
    if reload is None:
        return None
    return {"generation": reload.generation, "phase": "checking" if reload.probe else "rolling",
            "replaced": reload.replaced, "left": len(old(daemons, reload)),
            "started_ago_s": round(now - reload.started, 3)}


def find(daemons: Iterable[Daemon], key: str | int) -> Daemon | None:
    """The daemon STATUS shows as ``key`` ("w3", "r1"), or whose pid it is (an int, or
    its digits)."""
    pid = key if isinstance(key, int) else int(key) if key.isdigit() else None
    for daemon in daemons:
        if daemon.name == key or (pid is not None and daemon.pid == pid):
            return daemon
    return None
