"""Preloaded daemons (``preload``): what the supervisor and its template process say to
each other, and when the supervisor forks, defers or spawns. Pure: no sockets, no processes.

A *template* is a daemon process that loaded the tools and ran the start-up hooks once,
then froze its heap (``gc.freeze()``) and never serves a call: it forks daemons on request,
so their read-only memory (a model's weights) is shared copy-on-write and a replacement
serves in milliseconds (``daemon/template.py``; the supervisor's side: ``template.py``).

**Control messages** travel on a ``SOCK_SEQPACKET`` socketpair made at the template's
spawn, one JSON object per packet (at most ``MAX_PACKET`` bytes); the file descriptors a
forked daemon must own ride with its FORK as ``SCM_RIGHTS`` (``socket.send_fds``):

* template -> supervisor ``{"event": "ready", "pid", "refusal"}``: the tools loaded;
  ``refusal`` (None, or why: the threads alive besides the main one) says it will not fork;
* supervisor -> template ``{"op": "fork", "ident", "channel"}`` with the fds
  ``[lifeline, stderr]`` (+ ``channel`` when the daemon has one);
* template -> supervisor ``{"event": "forked", "ident", "pid"}``, or
  ``{"event": "refused", "ident", "reason"}`` (threads started since);
* template -> supervisor ``{"event": "exit", "ident", "pid", "status"}``: a forked daemon
  ended (the template is its parent and reaps it); ``status`` as ``Popen.returncode``.

**The plan** (``Plan``): how a spawn is served, and when a template is (re)built.

* A ready template forks every daemon (recycles and idle restarts too: they spawn here).
* The first template's start-up is the pool's start-up: daemons asked for meanwhile are
  *deferred* (forked once it is ready; if its start fails, each of them fails with its
  exit status and stderr, so the broker reports the start failure as for any daemon).
* A template that dies after it was ready is rebuilt at once, then after a capped, jittered
  backoff when that keeps happening; daemons are spawned the ordinary way meanwhile.
  A rebuild that fails is tried again only when a daemon is next asked for (never in a
  loop of its own: the broker paces spawns).
* A template with threads alive (a library's thread pool: forking would copy their locks
  but not the threads) is *refused* for good: one clear error naming the threads, and
  every daemon is spawned the ordinary way.
* A reload (new tools code) retires the template: it forks no more and leaves once the
  daemons forked from it have; the next one is built from the new code as a first one.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from .backoff import restart_delay

if TYPE_CHECKING:
    from .config import Settings

MAX_PACKET = 4096     # a control message's largest size in bytes
MAX_REASON = 1000     # characters of a refusal's reason kept in a message
FDS_PER_FORK = 3      # lifeline, stderr, channel


# --- control messages ------------------------------------------------------------------


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_PACKET:
        raise ValueError(f"control message of {len(data)} bytes, over {MAX_PACKET}")
    return data


def decode(data: bytes) -> dict[str, Any]:
    """A control message; ValueError for anything that is not one JSON object."""
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError(f"control message is not an object: {data[:80]!r}")
    return message


def ready(pid: int, refusal: str | None) -> bytes:
    return encode({"event": "ready", "pid": pid, "refusal": None if refusal is None else refusal[:MAX_REASON]})


def fork(ident: str, channel: bool) -> bytes:
    return encode({"op": "fork", "ident": ident, "channel": channel})


def forked(ident: str, pid: int) -> bytes:
    return encode({"event": "forked", "ident": ident, "pid": pid})


def refused(ident: str, reason: str) -> bytes:
    return encode({"event": "refused", "ident": ident, "reason": reason[:MAX_REASON]})


def exited(ident: str, pid: int, status: int) -> bytes:
    return encode({"event": "exit", "ident": ident, "pid": pid, "status": status})


def threads_reason(names: list[str]) -> str:
    """Why a template with threads alive does not fork, naming them."""
    shown = ", ".join(repr(name) for name in names[:10]) + (", ..." if len(names) > 10 else "")
    return (f"{len(names)} thread(s) alive after start-up ({shown}): a forked daemon would "
            f"inherit their locks in whatever state they were, without the threads; daemons "
            f"start the ordinary way instead. Start such threads lazily, in the first call, "
            f"not in a @zbridge.startup hook or at import")


# --- the plan ----------------------------------------------------------------------------


class TemplateState(str, Enum):
    ABSENT = "absent"        # none running (never started, or gone)
    STARTING = "starting"    # loading the tools
    READY = "ready"          # forks on request
    REFUSED = "refused"      # unsafe to fork from: never used again


class How(str, Enum):
    FORK = "fork"            # ask the ready template now
    DEFER = "defer"          # fork once the starting template is ready
    SPAWN = "spawn"          # the ordinary way


@dataclass
class Plan:
    """The template's life as the supervisor sees it, and how each spawn is served."""
    backoff_base: float = 0.1
    backoff_cap: float = 30.0
    stable_after: float = 10.0
    start_timeout: float = 120.0   # a template not ready by then is killed (as a daemon would be)
    rng: random.Random = field(default_factory=random.Random)
    state: TemplateState = TemplateState.ABSENT
    ever_ready: bool = False       # some template was ready: starting again is a rebuild
    failures: int = 0              # templates in a row that failed or died soon after ready
    start_allowed_at: float = 0.0  # no rebuild before this (backoff)
    ready_at: float | None = None
    refusal: str | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> Plan | None:
        """The plan of a pool with ``preload`` on, else None (every daemon is spawned)."""
        if not settings.preload:
            return None
        return cls(settings.backoff_base, settings.backoff_cap, settings.stable_after,
                   settings.start_timeout)

    def spawn(self, now: float) -> tuple[How, bool]:
        """How to serve a daemon asked for now, and whether to start a template first."""
        if self.state is TemplateState.REFUSED:
            return How.SPAWN, False
        if self.state is TemplateState.READY:
            return How.FORK, False
        start = False
        if self.state is TemplateState.ABSENT and (not self.ever_ready or now >= self.start_allowed_at):
            self.state, start = TemplateState.STARTING, True
        # the first template's start-up is the pool's: wait for it. A rebuild is not: the
        # pool is short of a daemon, so it starts now, the ordinary way
        if self.state is TemplateState.STARTING and not self.ever_ready:
            return How.DEFER, start
        return How.SPAWN, start

    def ready(self, now: float) -> None:
        if self.state is TemplateState.STARTING:
            self.state, self.ever_ready, self.ready_at = TemplateState.READY, True, now

    def refuse(self, reason: str) -> None:
        self.state, self.refusal = TemplateState.REFUSED, reason

    def ended(self, now: float) -> float | None:
        """The template process is gone: seconds until it is rebuilt, or None (not now:
        refused, or it failed to start, so the next spawn decides)."""
        if self.state is TemplateState.REFUSED:
            return None
        was_ready, self.state = self.state is TemplateState.READY, TemplateState.ABSENT
        lived = was_ready and self.ready_at is not None and now - self.ready_at >= self.stable_after
        self.failures = 1 if lived else self.failures + 1
        self.ready_at = None
        delay = restart_delay(self.failures - 1 if was_ready else self.failures,
                              self.backoff_base, self.backoff_cap, rng=self.rng)
        self.start_allowed_at = now + delay
        return delay if was_ready else None

    def reload(self) -> None:
        """New tools code (``zbridge reload``): the next template is a first one again (its
        daemons wait for it, and fail as it fails), refused or not before."""
        self.state, self.ever_ready, self.failures = TemplateState.ABSENT, False, 0
        self.start_allowed_at, self.ready_at, self.refusal = 0.0, None, None

    def rebuild_due(self, now: float) -> bool:
        """An eager rebuild's timer fired: start one unless something else did meanwhile."""
        if self.state is not TemplateState.ABSENT or now < self.start_allowed_at:
            return False
        self.state = TemplateState.STARTING
        return True
