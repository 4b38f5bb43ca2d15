"""The hub's routing state machine. Pure: no sockets, no processes, no clock of its own.

Every event (a request arrives, a daemon is ready, replies, exits; time passes) is a method
that returns the actions the hub must carry out:

    ("client", client_id, frame)   send a frame to a client
    ("daemon", daemon_id, frame)   send a frame to a daemon
    ("spawn", daemon_id)           start a daemon that will present this routing id
    ("kill", daemon_id, reason, hard)  terminate a daemon's process group (hard: SIGKILL at once)
    ("interrupt", daemon_id, request_id)  raise zbridge.Cancelled inside that call

Guarantees kept here: a request goes only to an idle daemon (least recently used first);
every accepted request is answered exactly once (result, or a hub-made error); a reply is
delivered only if it comes from the daemon holding that request id; an expired queued
request is never dispatched.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from typing import Any, Callable

from .backoff import restart_delay
from .config import Settings
from . import health
from .errors import BridgeError, CallTimeout, Overloaded, PoolUnavailable, WorkerLost
from .inflight import InFlight
from .protocol import FLAG_RETIRE, Header, encode_disconnect, encode_error
from .state import (SHUTTING_DOWN, Daemon, DaemonState, Job, JobState, _secret_ident,
                    first_line)

Action = tuple
HISTORY = 50  # exits remembered for status()


class Broker(InFlight):
    def __init__(self, settings: Settings, *, remote_ok: bool = False,
                 rng: random.Random | None = None,
                 new_ident: Callable[[int], bytes] | None = None) -> None:
        self.s = settings
        self.rng = rng or random.Random()
        self._new_ident = new_ident or _secret_ident
        self.daemons: dict[bytes, Daemon] = {}
        self.ready: deque[bytes] = deque()
        self.queue: deque[Job] = deque()
        self.queued = 0
        self.deadlines: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._names = itertools.count(1)
        self.wanted = settings.workers if settings.prewarm else 0
        self.failures = 0
        self.start_failures = 0
        self.last_start_error: str | None = None
        self.spawn_allowed_at = 0.0
        self.closing = False
        self.remote_ok = remote_ok
        self.counters = dict.fromkeys(
            ("accepted", "completed", "timeouts", "lost", "overloaded", "unavailable",
             "spawns", "start_failures", "crashes", "kills", "recycled", "cancelled"), 0)
        self.history: deque[dict] = deque(maxlen=HISTORY)

    # --- requests ----------------------------------------------------------------------

    def submit(self, client: bytes, header: Header, frame: bytes, now: float) -> list[Action]:
        if self.closing:
            return self._refuse(client, header.id, SHUTTING_DOWN())
        if self.queued >= self.s.max_queue:
            self.counters["overloaded"] += 1
            return [("client", client, encode_error(header.id, Overloaded(
                f"{self.queued} calls already waiting (max_queue={self.s.max_queue})")))]
        if self._unavailable(now):
            return self._refuse(client, header.id, self._unavailable_error())
        timeout = header.timeout_ms / 1000.0 if header.timeout_ms else self.s.timeout
        job = Job(client, header.id, frame, now + timeout, now)
        self.counters["accepted"] += 1
        self.queue.append(job)
        self.queued += 1
        heapq.heappush(self.deadlines, (job.deadline, next(self._seq), job))
        if len(self.deadlines) > 1024 + 4 * (self.queued + len(self.daemons)):
            # finished jobs stay in the heap until their deadline; drop them in bulk
            self.deadlines = [e for e in self.deadlines if e[2].state is not JobState.DONE]
            heapq.heapify(self.deadlines)
        actions = self._dispatch(now)
        if self.queued:  # nobody idle took it: maybe start another daemon
            self.wanted = max(self.wanted, min(self.s.workers, self._live() + self._demand()))
            actions += self._scale(now)
        return actions

    def _refuse(self, client: bytes, id: int, error: BridgeError) -> list[Action]:
        self.counters["unavailable"] += 1
        return [("client", client, encode_error(id, error))]

    def _unavailable(self, now: float) -> bool:
        return (self.start_failures >= self.s.start_retries and now < self.spawn_allowed_at
                and not any(d.state in (DaemonState.IDLE, DaemonState.BUSY) for d in self.daemons.values()))

    def _unavailable_error(self) -> PoolUnavailable:
        cause = self.last_start_error or "daemons failed to start"
        return PoolUnavailable(f"no daemon could start after {self.start_failures} attempts: "
                               f"{first_line(cause)}",
                               {"stderr": cause[-4000:]})

    def _demand(self) -> int:
        starting = sum(1 for d in self.daemons.values() if d.state is DaemonState.STARTING)
        return max(0, self.queued - starting)

    def _live(self) -> int:
        return sum(1 for d in self.daemons.values() if d.state is not DaemonState.STOPPING)

    def _retiring(self) -> int:
        return sum(1 for d in self.daemons.values()
                   if d.retiring and d.state is not DaemonState.STOPPING)

    def start(self, now: float) -> list[Action]:
        """Spawn what prewarm asks for."""
        return self._scale(now)

    def prewarm(self, now: float) -> list[Action]:
        """Start every daemon up to ``workers`` now, instead of on demand."""
        if not self.closing:
            self.wanted = max(self.wanted, self.s.workers)
        return self._scale(now)

    def _dispatch(self, now: float) -> list[Action]:
        actions: list[Action] = []
        while self.ready and self.queued:
            job = self.queue.popleft()
            if job.state is not JobState.QUEUED:
                continue  # expired while waiting; already answered
            self.queued -= 1
            daemon = self.daemons[self.ready.popleft()]
            job.state, job.started = JobState.RUNNING, now
            daemon.state, daemon.job = DaemonState.BUSY, job
            actions.append(("daemon", daemon.ident, job.frame))
        return actions

    def _scale(self, now: float) -> list[Action]:
        if self.closing or now < self.spawn_allowed_at:
            return []
        actions: list[Action] = []
        while self._live() - self._retiring() < self.wanted:
            ident = self._new_ident(next(self._names))
            self.daemons[ident] = Daemon(ident, now)
            self.counters["spawns"] += 1
            actions.append(("spawn", ident))
        return actions

    # --- daemon events -----------------------------------------------------------------

    def daemon_ready(self, ident: bytes, info: dict, now: float) -> list[Action]:
        daemon = self.daemons.get(ident)
        if daemon is None:
            if not self.remote_ok or self.closing:
                return [("daemon", ident, encode_disconnect("unknown daemon"))]
            daemon = self.daemons[ident] = Daemon(ident, now)
        if daemon.state is not DaemonState.STARTING:
            return []  # a second ready from the same daemon changes nothing
        daemon.state, daemon.ready_at = DaemonState.IDLE, now
        daemon.last_beat, daemon.idle_since = now, now
        daemon.call_limit = health.call_limit(self.s, self.rng)
        daemon.pid, daemon.tools = info.get("pid"), list(info.get("tools") or [])
        self.start_failures = 0
        self.last_start_error = None
        self.ready.append(ident)
        return self._finish_retirements() + self._dispatch(now)

    def daemon_beat(self, ident: bytes, info: dict, now: float) -> None:
        daemon = self.daemons.get(ident)
        if daemon is not None and daemon.ready_at is not None:
            daemon.last_beat = now
            rss = info.get("rss")
            daemon.rss = rss if isinstance(rss, int) else daemon.rss

    def daemon_reply(self, ident: bytes, header: Header, frame: bytes, now: float) -> list[Action]:
        daemon = self.daemons.get(ident)
        if daemon is None:
            return []
        if daemon.state is DaemonState.BUSY and daemon.job is not None and daemon.job.id == header.id:
            job = daemon.job
            job.state = JobState.DONE
            daemon.job = None
            daemon.calls += 1
            self.counters["completed"] += 1
            actions: list[Action] = [("client", job.client, frame)]
            return actions + self._after_call(daemon, header, now)
        if daemon.state is DaemonState.STALE and daemon.stale_id == header.id:
            daemon.calls += 1  # late reply: dropped, the daemon is free again
            return self._after_call(daemon, header, now)
        return []  # a reply for nothing this daemon holds: never delivered

    def _after_call(self, daemon: Daemon, header: Header, now: float) -> list[Action]:
        reason = health.recycle_reason(daemon, self.s, bool(header.flags & FLAG_RETIRE))
        self._make_idle(daemon, now)
        actions = self._retire(daemon, reason, now) if reason else []
        if daemon.retiring:  # it may have been waiting for this call to end
            actions += self._finish_retirements()
        return actions + self._dispatch(now)

    def _make_idle(self, daemon: Daemon, now: float) -> None:
        daemon.state, daemon.stale_id, daemon.kill_at = DaemonState.IDLE, None, None
        daemon.idle_since = now
        self.ready.append(daemon.ident)

    # --- replacing daemons -------------------------------------------------------------

    def _retire(self, daemon: Daemon, reason: str, now: float) -> list[Action]:
        """Replace a healthy daemon: it keeps serving until its replacement is ready."""
        if daemon.retiring or self.closing:
            return []
        daemon.retiring = reason
        self.counters["recycled"] += 1
        return self._finish_retirements() + self._scale(now)

    def _finish_retirements(self) -> list[Action]:
        """Let idle retiring daemons go once the others cover what is wanted."""
        active = sum(1 for d in self.daemons.values()
                     if d.state in (DaemonState.IDLE, DaemonState.BUSY) and not d.retiring)
        actions: list[Action] = []
        for daemon in list(self.daemons.values()):
            if daemon.retiring and daemon.state is DaemonState.IDLE and active >= self.wanted:
                actions += self._let_go(daemon, daemon.retiring)
        return actions

    def _let_go(self, daemon: Daemon, reason: str) -> list[Action]:
        """Ask an idle daemon to exit cleanly; its exit is not a failure."""
        if daemon.ident in self.ready:
            self.ready.remove(daemon.ident)
        daemon.state, daemon.kill_reason = DaemonState.STOPPING, reason
        return [("daemon", daemon.ident, encode_disconnect(reason))]

    def _lose(self, daemon: Daemon, reason: str) -> list[Action]:
        """Give up on a daemon now (silent or frozen): answer its call, kill it hard."""
        actions: list[Action] = []
        if daemon.job is not None and daemon.job.state is JobState.RUNNING:
            daemon.job.state = JobState.DONE
            self.counters["lost"] += 1
            actions.append(("client", daemon.job.client, encode_error(daemon.job.id, WorkerLost(
                f"daemon {daemon.ident.decode()} (pid {daemon.pid}) was lost during the call: {reason}"))))
        daemon.job = None
        self.kill_requested(daemon.ident, reason)
        return actions + [("kill", daemon.ident, reason, True)]

    def daemon_spawned(self, ident: bytes, pid: int) -> None:
        if ident in self.daemons:
            self.daemons[ident].pid = pid

    def daemon_exited(self, ident: bytes, now: float, cause: str = "") -> list[Action]:
        """The daemon's process is gone (or it became unreachable); ``cause`` says how."""
        daemon = self.daemons.pop(ident, None)
        if daemon is None:
            return []
        if ident in self.ready:
            self.ready.remove(ident)
        actions: list[Action] = []
        if daemon.job is not None and daemon.job.state is JobState.RUNNING:
            daemon.job.state = JobState.DONE
            self.counters["lost"] += 1
            reason = daemon.kill_reason or first_line(cause) or "exited"
            actions.append(("client", daemon.job.client, encode_error(daemon.job.id, WorkerLost(
                f"daemon {ident.decode()} (pid {daemon.pid}) was lost during the call: {reason}"))))
        self.history.append({"id": ident.decode(errors="replace"), "pid": daemon.pid, "at": now,
                             "spawned": daemon.spawned,
                             "reason": daemon.kill_reason or first_line(cause) or "exited"})
        if daemon.kill_reason is None and not self.closing:
            self._count_failure(daemon, now, cause)
        return actions + self._fail_queue_if_hopeless(now) + self._dispatch(now) + self._scale(now)

    def daemon_unreachable(self, ident: bytes, frame: bytes, now: float) -> list[Action]:
        """A send to the daemon failed: the job never left, so it can go back in front."""
        daemon = self.daemons.get(ident)
        if daemon is not None and daemon.job is not None and daemon.job.frame is frame:
            job, daemon.job = daemon.job, None
            job.state = JobState.QUEUED
            self.queue.appendleft(job)
            self.queued += 1
        return self.daemon_exited(ident, now, "unreachable")

    def _count_failure(self, daemon: Daemon, now: float, cause: str) -> None:
        if daemon.ready_at is None:
            self.start_failures += 1
            self.counters["start_failures"] += 1
            self.last_start_error = "\n".join(filter(None, [cause, daemon.note])) or "exited before ready"
            self.failures += 1
        else:
            self.counters["crashes"] += 1
            self.failures = 1 if now - daemon.ready_at >= self.s.stable_after else self.failures + 1
        delay = restart_delay(self.failures, self.s.backoff_base, self.s.backoff_cap, rng=self.rng)
        self.spawn_allowed_at = max(self.spawn_allowed_at, now + delay)

    def _fail_queue_if_hopeless(self, now: float) -> list[Action]:
        if not self._unavailable(now) or not self.queued:
            return []
        if self.start_failures >= self.s.start_retries:
            self.wanted = self._live()  # stop retrying until a new call asks again
        error = self._unavailable_error()
        actions = []
        while self.queue:
            job = self.queue.popleft()
            if job.state is JobState.QUEUED:
                job.state = JobState.DONE
                self.counters["unavailable"] += 1
                actions.append(("client", job.client, encode_error(job.id, error)))
        self.queued = 0
        return actions

    def kill_requested(self, ident: bytes, reason: str) -> None:
        daemon = self.daemons.get(ident)
        if daemon is not None:
            daemon.state, daemon.kill_reason = DaemonState.STOPPING, reason
            self.counters["kills"] += 1
            if ident in self.ready:
                self.ready.remove(ident)

    # --- time --------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, job = heapq.heappop(self.deadlines)
            actions += self._expire(job, now)
        for daemon in list(self.daemons.values()):
            silent = health.beat_overdue(daemon, now, self.s)
            if silent and daemon.state is not DaemonState.STOPPING:
                actions += self._lose(daemon, silent)
            elif daemon.kill_at is not None and now >= daemon.kill_at and daemon.state is DaemonState.STALE:
                reason = f"call {daemon.stale_id} ran past its deadline + {self.s.kill_grace}s grace"
                self.kill_requested(daemon.ident, reason)
                actions.append(("kill", daemon.ident, reason, False))
            elif daemon.state is DaemonState.IDLE and health.idle_expired(daemon, now, self.s):
                actions += self._on_idle(daemon, now)
            elif daemon.state is DaemonState.STARTING and now - daemon.spawned > self.s.start_timeout:
                daemon.note = f"not ready after start_timeout={self.s.start_timeout}s"
                daemon.state = DaemonState.STOPPING
                actions.append(("kill", daemon.ident, daemon.note, False))
        return actions + self._finish_retirements() + self._scale(now)

    def _on_idle(self, daemon: Daemon, now: float) -> list[Action]:
        daemon.idle_since = None  # act once per idle stretch
        if health.IdleAction(self.s.idle_action) is health.IdleAction.RESTART:
            return self._retire(daemon, f"idle for {self.s.idle_timeout}s (idle_action=restart)", now)
        if self._live() > self.s.min_workers:
            self.wanted = max(self.s.min_workers, min(self.wanted, self._live() - 1))
            return self._let_go(daemon, f"idle for {self.s.idle_timeout}s (idle_action=stop)")
        return []

    def _expire(self, job: Job, now: float) -> list[Action]:
        if job.state is JobState.DONE:
            return []
        waited = now - job.accepted
        self.counters["timeouts"] += 1
        if job.state is JobState.QUEUED:
            job.state = JobState.DONE
            self.queued -= 1
            return [("client", job.client, encode_error(job.id, CallTimeout(
                f"call timed out after {waited:.3f}s waiting for a free daemon")))]
        job.state = JobState.DONE
        for daemon in self.daemons.values():
            if daemon.job is job:
                daemon.job, daemon.stale_id = None, job.id
                daemon.state, daemon.kill_at = DaemonState.STALE, now + self.s.kill_grace
        return [("client", job.client, encode_error(job.id, CallTimeout(
            f"call timed out after {waited:.3f}s")))]

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until tick() has something to do, or None."""
        soonest = self.deadlines[0][0] if self.deadlines else math.inf
        for d in self.daemons.values():
            if d.kill_at is not None:
                soonest = min(soonest, d.kill_at)
            elif d.state is DaemonState.STARTING:
                soonest = min(soonest, d.spawned + self.s.start_timeout)
            if d.last_beat is not None and d.state is not DaemonState.STOPPING:
                soonest = min(soonest, d.last_beat + health.silence_limit(self.s) + 0.001)
            if d.idle_since is not None and d.state is DaemonState.IDLE and self.s.idle_timeout > 0:
                soonest = min(soonest, d.idle_since + self.s.idle_timeout)
        if self.wanted and self._live() < self.wanted:
            soonest = min(soonest, self.spawn_allowed_at)
        return None if soonest == math.inf else max(0.0, soonest - now)

    # --- shutdown and status -----------------------------------------------------------

    def close(self) -> list[Action]:
        """Refuse new calls and answer queued ones; running calls may still finish."""
        self.closing = True
        self.wanted = 0
        actions = []
        while self.queue:
            job = self.queue.popleft()
            if job.state is JobState.QUEUED:
                job.state = JobState.DONE
                actions.append(("client", job.client, encode_error(job.id, SHUTTING_DOWN())))
        self.queued = 0
        return actions

    def abandon_running(self, reason: str) -> list[Action]:
        """Answer every still-running call (used when the drain time is up)."""
        actions = []
        for daemon in self.daemons.values():
            if daemon.job is not None and daemon.job.state is JobState.RUNNING:
                daemon.job.state = JobState.DONE
                actions.append(("client", daemon.job.client, encode_error(daemon.job.id, WorkerLost(reason))))
                daemon.job = None
        return actions

    def running(self) -> int:
        return sum(1 for d in self.daemons.values() if d.job is not None)

    def status(self, now: float) -> dict[str, Any]:
        return {
            "workers": self.s.workers,
            "queue_depth": self.queued,
            "closing": self.closing,
            "failures": self.failures,
            "last_start_error": self.last_start_error,
            "counters": dict(self.counters),
            "daemons": [self._daemon_status(d, now) for d in self.daemons.values()],
            "restarts": [{"id": h["id"], "pid": h["pid"], "reason": h["reason"],
                          "ago_s": round(now - h["at"], 3),
                          "spawned_ago_s": round(now - h["spawned"], 3)} for h in self.history],
        }

    @staticmethod
    def _daemon_status(d: Daemon, now: float) -> dict[str, Any]:
        return {
            "id": d.ident.decode(errors="replace"),
            "pid": d.pid,
            "state": d.state.value,
            "calls": d.calls,
            "uptime_s": round(now - d.ready_at, 3) if d.ready_at else None,
            "current_call": d.job.id if d.job else d.stale_id,
            "call_age_s": round(now - d.job.started, 3) if d.job and d.job.started else None,
            "tools": d.tools,
            "rss": d.rss,
            "last_beat_age_s": round(now - d.last_beat, 3) if d.last_beat is not None else None,
            "retiring": d.retiring,
        }
