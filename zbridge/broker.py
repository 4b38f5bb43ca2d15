"""The hub's routing state machine. Pure: no sockets, no processes, no clock of its own.

Every event (a request arrives, a daemon is ready, replies, exits; time passes) is a method
that returns the actions its caller must carry out, typed in ``zbridge/actions.py``:
``ToClient``, ``ToDaemon``, ``Lease``, ``Answered``, ``Spawn``, ``Kill``, ``Interrupt``, and
``Note`` (a lifecycle event for the hub's log). It also keeps the per-tool numbers
(``zbridge/stats.py``). Every state transition of the pool is a method of this one class.

Two kinds of callers. A zmq client (the served route) is answered with ``ToClient``. An
*owner* (a caller in this process, ``zbridge/direct.py``) submits a ``Job`` that names it:
it is answered by setting ``job.answer`` (``Answered``), a daemon with a channel is lent to
it (``Lease``), and it judges its own deadline (``expire_call``); the hub's tick only
backstops it, ``OWNER_GRACE`` later, in case its thread is gone.

Guarantees kept here: a request goes only to an idle daemon (least recently used first);
every accepted request is answered exactly once (``_answer`` is the only way a call gets
its reply, and it refuses a second); a reply is delivered only if it comes from the daemon
holding that request id; an expired queued request is never dispatched.

One file for one state machine: its parts (routing, daemons' lives, streams, cancels,
time) change the same records, so they are kept together rather than split into mixins.
"""

from __future__ import annotations

import heapq
import itertools
import math
from logging import INFO, WARNING
import random
from collections import deque
from dataclasses import replace
from typing import Any, Callable

from . import health, rollout
from .actions import Action, Answered, Interrupt, Kill, Lease, Note, Spawn, ToClient, ToDaemon
from .backoff import restart_delay
from .config import Settings
from .errors import (
    BridgeError,
    CallTimeout,
    Cancelled,
    InvalidParams,
    InvalidRequest,
    Overloaded,
    PoolUnavailable,
    WorkerLost,
)
from .pickling import foreign_error as pickle_refused
from .pickling import foreign_pickle
from .pickling import remote_error as pickle_refused_remote
from .protocol import (EXIT_LOAD_FAILED, FLAG_PICKLE, FLAG_RETIRE, FLAG_STREAM, HEADER_SIZE, REQUEST_FLAGS,
                       Header, Kind, encode_cancel, encode_credit, encode_disconnect, encode_error,
                       encode_heartbeat, encode_result, peek_error_code, peek_method, read_header, too_large,
                       without_flags)
from .state import (EXIT_KINDS, SHUTTING_DOWN, Daemon, DaemonState, Job, JobState, Process, _secret_ident,
                    first_line, last_line)
from .stats import ToolTable

Probe = Callable[[bytes], "Process | None"]
HISTORY = 50  # exits remembered for status()
# An owner judges its own deadline; the tick does, this much later, only if it did not (its
# thread is gone or stalled): generous, so a stall never turns a reply that came in time
# into a CallTimeout, yet a daemon an owner can no longer release is freed in the end.
OWNER_GRACE = 5.0
PROBE = encode_heartbeat()
# the states the hot path compares against, bound once (a module global beats an enum lookup)
_QUEUED, _RUNNING, _DONE = JobState.QUEUED, JobState.RUNNING, JobState.DONE
_IDLE, _BUSY, _STALE, _STARTING, _STOPPING = (DaemonState.IDLE, DaemonState.BUSY, DaemonState.STALE,
                                              DaemonState.STARTING, DaemonState.STOPPING)


class Broker:
    def __init__(self, settings: Settings, *, remote_ok: bool = False,
                 rng: random.Random | None = None,
                 new_ident: Callable[[int], bytes] | None = None,
                 probe: Probe | None = None, expose_errors: bool = True) -> None:
        self.s = settings
        self.rng = rng or random.Random()
        self._new_ident = new_ident or _secret_ident
        self.probe = probe                # asks the OS about a local daemon; None for remote ones
        self.expose_errors = expose_errors  # stderr tails and routing ids only to local callers
        self.broken: str | None = None      # why the pool can serve nothing any more
        self.daemons: dict[bytes, Daemon] = {}
        self.ready: deque[bytes] = deque()
        self.queue: deque[Job] = deque()
        self.jobs: dict[tuple[bytes, int], Job] = {}  # queued and running, by (client, id)
        self.queued = 0
        self.queued_bytes = 0
        self.deadlines: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._names = itertools.count(1)
        self._remote_names = itertools.count(1)
        self.wanted = settings.workers if settings.prewarm else 0
        self.failures = 0
        self.start_failures = 0
        self.start_cause = "start_failed"
        self.last_start_error: str | None = None
        self.last_start_tail = ""
        self.spawn_allowed_at = 0.0
        self.closing = False
        self.remote_ok = remote_ok
        self.counters = dict.fromkeys(
            ("accepted", "completed", "timeouts", "lost", "overloaded", "unavailable",
             "spawns", "start_failures", "crashes", "kills", "recycled", "cancelled",
             "abandoned", "dropped_replies"), 0)
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.tools = ToolTable()
        self.exits = dict.fromkeys(EXIT_KINDS, 0)  # daemon exits by kind, shutdown aside
        self.generation = 0                          # reloads asked for (rollout.py)
        self.reloading: rollout.Reload | None = None

    # --- answering calls: the only ways a job ends -------------------------------------

    def _answer(self, job: Job, frame: bytes, code: int | None = None,
                extra: tuple[Any, ...] = ()) -> Action:
        """The call's one reply (``code``: its error code, None for a result; ``extra``:
        its buffer frames). Asserting here makes "exactly once" hold by construction."""
        assert job.state is not _DONE, f"call {job.id} would be answered twice"
        if frame[4] & FLAG_PICKLE and foreign_pickle(job.frame, frame):  # never to a caller that did not ask
            frame, code, extra = encode_error(job.id, pickle_refused()), -32603, ()
        self._end(job)
        if job.stats is not None:
            job.stats.answered(code)
        if job.owner is not None:
            job.answer = (frame, extra)
            return Answered(job)
        return ToClient(job.client, frame, extra)

    def _answer_error(self, job: Job, error: BridgeError) -> Action:
        return self._answer(job, encode_error(job.id, error), error.code)

    def _end(self, job: Job) -> None:
        """Finish a job without a reply (its caller is gone) or before replying."""
        if job.state is JobState.QUEUED:
            self.queued -= 1
            self.queued_bytes -= job.size
        job.state = JobState.DONE
        self.jobs.pop(job.key, None)

    def _queued_jobs(self) -> list[Job]:
        return [job for job in self.queue if job.state is JobState.QUEUED]

    # --- requests ----------------------------------------------------------------------

    def submit(self, client: bytes, header: Header, frame: bytes, now: float,
               extra: tuple[Any, ...] = ()) -> list[Action]:
        """A zmq client's request; ``extra``: its buffer frames (opaque, with a length)."""
        return self.accept(new_job(client, header, frame, now, self.s.timeout, extra), header, now)

    def accept(self, job: Job, header: Header, now: float) -> list[Action]:
        """A new job (``new_job``): queued, started on an idle daemon, or refused (answered
        at once). An owner's job is judged by its owner, the tick only backstops it."""
        job.stats = self.tools.get(job.tool)
        refusal = self._refusal(job, header, now)
        if refusal is not None:
            job.state = _DONE
            job.stats.answered(refusal.code)
            frame = encode_error(job.id, refusal)
            if job.owner is None:
                return [ToClient(job.client, frame)]
            job.answer = (frame, ())
            return [Answered(job)]
        self.counters["accepted"] += 1
        self.jobs[job.key] = job
        deadlines = self.deadlines
        judged = job.deadline if job.owner is None else job.deadline + OWNER_GRACE
        heapq.heappush(deadlines, (judged, next(self._seq), job))
        if len(deadlines) > 1024 + 4 * (self.queued + len(self.daemons)):
            # finished jobs stay in the heap until their deadline; drop them in bulk
            self.deadlines = [e for e in deadlines if e[2].state is not _DONE]
            heapq.heapify(self.deadlines)
        if self.ready and not self.queued:  # an idle daemon takes it at once: no queue
            if self.queue:
                self.queue.clear()  # only calls answered while they waited are left in it
            return [self._start(job, self.ready.popleft(), now)]
        self.queue.append(job)
        self.queued += 1
        self.queued_bytes += job.size
        actions = self._dispatch(now)
        if self.queued:  # nobody idle took it: maybe start another daemon
            if self.wanted < self.s.workers:  # (else the pool is already wanted whole)
                self.wanted = max(self.wanted, min(self.s.workers, self._live() + self._demand()))
            if len(self.daemons) < self.wanted:  # (a cheap test first: the pool is busy, not short)
                actions += self._scale(now)
            if self.start_failures or self.spawn_allowed_at > now or not self.daemons:
                actions += self._fail_hopeless(now)
        return actions

    def _refusal(self, job: Job, header: Header, now: float) -> BridgeError | None:
        """Why a new job cannot be accepted, or None; refusals that say the pool cannot
        serve count as ``unavailable``."""
        if self.ready and not self.queued and not self.closing and self.broken is None:
            # an idle daemon takes it: nothing else to judge
            return self._invalid(job.client, header) or self._too_large(job)
        if self.broken is not None:
            error: BridgeError | None = PoolUnavailable(
                f"the pool is broken: {self.broken}", {"cause": "broken"})
        elif self.closing:
            error = SHUTTING_DOWN()
        elif (error := self._invalid(job.client, header) or self._too_large(job)
                       or self._overloaded(job.size)) is not None:
            return error
        elif self._unavailable(now):
            error = self._unavailable_error()
        if error is not None:
            self.counters["unavailable"] += 1
        return error

    def _invalid(self, client: bytes, header: Header) -> BridgeError | None:
        if header.id == 0:
            return InvalidRequest("request ids start at 1 (0 is kept for errors about unparsable messages)")
        if (client, header.id) in self.jobs:
            return InvalidRequest(f"request id {header.id} is already in flight on this connection")
        if header.flags & ~REQUEST_FLAGS:
            return InvalidRequest(f"undefined request flag bits set: {header.flags & ~REQUEST_FLAGS:#04x}")
        if self.remote_ok and header.flags & FLAG_PICKLE:  # its daemon may be on another host
            return pickle_refused_remote()
        return None

    def _too_large(self, job: Job) -> BridgeError | None:
        """The whole message (body and buffer frames), as every receiver judges it."""
        size = job.size - HEADER_SIZE
        if size > self.s.max_message_size:
            return too_large(size, self.s.max_message_size, len(job.extra))
        return None

    def _overloaded(self, size: int) -> Overloaded | None:
        if self.ready and not self.queued:
            return None  # an idle daemon takes it at once: nothing will wait
        if self.queued >= self.s.max_queue:
            why = f"{self.queued} calls already waiting (max_queue={self.s.max_queue})"
        elif self.queued and self.queued_bytes + size > self.s.max_queue_bytes:
            why = (f"{self.queued_bytes} bytes of calls already waiting "
                   f"(max_queue_bytes={self.s.max_queue_bytes})")
        else:
            return None
        self.counters["overloaded"] += 1
        return Overloaded(why)

    def _unavailable(self, now: float) -> bool:
        return (self.start_failures >= self.s.start_retries and now < self.spawn_allowed_at
                and not any(d.state in (DaemonState.IDLE, DaemonState.BUSY) for d in self.daemons.values()))

    def _unavailable_error(self, why: str | None = None) -> PoolUnavailable:
        cause = self.last_start_error or "daemons failed to start"
        why = why or f"no daemon could start after {self.start_failures} attempts"
        data: dict[str, Any] = {"cause": self.start_cause}
        if self.last_start_tail:
            data["stderr"] = self.last_start_tail[-4000:]
        return PoolUnavailable(f"{why}: {first_line(cause)}", data)

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
            if job.state is not _QUEUED:
                continue  # expired or cancelled while waiting; already answered
            self.queued -= 1
            self.queued_bytes -= job.size
            actions.append(self._start(job, self.ready.popleft(), now))
        return actions

    def _start(self, job: Job, ident: bytes, now: float) -> Action:
        """Hand a job (no longer queued) to the idle daemon ``ident``."""
        daemon = self.daemons[ident]
        job.state, job.started, job.daemon, job.touched = _RUNNING, now, ident, now
        if job.stats is not None:
            job.stats.queue.add(now - job.accepted)
        daemon.state, daemon.job = _BUSY, job
        if job.owner is not None and daemon.channel is not None:
            job.channel = daemon.channel
            return Lease(job)  # its sender drops the buffers once sent
        # the buffers go with the action: a job holding them would keep a large request
        # alive in the hub until its reply (a failed send hands them back)
        action = ToDaemon(ident, job.frame, job.extra, job.client)
        job.extra = ()
        return action

    def _scale(self, now: float) -> list[Action]:
        if self.closing or now < self.spawn_allowed_at:
            return []
        actions: list[Action] = []
        while self._live() - self._retiring() < self.wanted:
            actions += self._spawn(now)[1]
        return actions

    def _spawn(self, now: float) -> tuple[Daemon, list[Action]]:
        n = next(self._names)
        ident = self._new_ident(n)
        daemon = self.daemons[ident] = Daemon(ident, now, name=f"w{n}", generation=self.generation)
        self.counters["spawns"] += 1
        return daemon, [Spawn(ident), Note("daemon_spawn", INFO, {"daemon": f"w{n}"})]

    # --- daemon events -----------------------------------------------------------------

    def daemon_ready(self, ident: bytes, info: dict[str, Any], now: float) -> list[Action]:
        daemon = self.daemons.get(ident)
        if daemon is None:
            if not self.remote_ok or self.closing:
                return [ToDaemon(ident, encode_disconnect("unknown daemon")),
                        Note("peer_refused", WARNING, {"peer": ident[:64].decode(errors="replace"),
                                                       "pid": info.get("pid"),
                                                       "reason": "unknown daemon said READY"})]
            daemon = self.daemons[ident] = Daemon(ident, now, name=f"r{next(self._remote_names)}")
        if daemon.state is not DaemonState.STARTING:
            return self._ready_again(daemon, now)
        daemon.state, daemon.ready_at = DaemonState.IDLE, now
        daemon.last_beat, daemon.idle_since = now, now
        daemon.call_limit = health.call_limit(self.s, self.rng)
        daemon.pid, daemon.tools = info.get("pid"), list(info.get("tools") or [])
        self.tools.serve(daemon.tools)  # per-tool numbers only for names a daemon serves
        self.start_failures = 0
        self.last_start_error, self.last_start_tail = None, ""
        self.ready.append(ident)
        note = Note("daemon_ready", INFO, {"daemon": daemon.name, "pid": daemon.pid,
                                           "startup_s": round(now - daemon.spawned, 6),
                                           "tools": len(daemon.tools)})
        return [note] + self._finish_retirements() + self._dispatch(now) + self._roll(now)

    def _ready_again(self, daemon: Daemon, now: float) -> list[Action]:
        """A daemon that says READY again has reconnected (a remote one after a network
        loss, which this hub may not have noticed): whatever it held is gone with the old
        connection, so that call is lost and the daemon is free."""
        if daemon.state not in (DaemonState.BUSY, DaemonState.STALE):
            return []
        actions = self._lose_call(daemon, "it reconnected to the hub during the call")
        self._make_idle(daemon, now)
        return actions + self._dispatch(now)

    def daemon_beat(self, ident: bytes, info: dict[str, Any], now: float) -> None:
        daemon = self.daemons.get(ident)
        if daemon is not None and daemon.ready_at is not None:
            daemon.last_beat, daemon.vouched_at = now, None
            rss = info.get("rss")
            daemon.rss = rss if isinstance(rss, int) else daemon.rss

    def daemon_reply(self, ident: bytes, header: Header, frame: bytes, now: float,
                     extra: tuple[Any, ...] = ()) -> list[Action]:
        daemon = self.daemons.get(ident)
        if daemon is None:
            return []
        job = daemon.job
        if daemon.state is _BUSY and job is not None and job.id == header.id:
            daemon.job = None
            daemon.calls += 1
            self.counters["completed"] += 1
            if header.flags & FLAG_RETIRE:  # between the daemon and the hub only
                frame = without_flags(frame, FLAG_RETIRE)
            if job.stats is not None and job.started is not None:
                job.stats.run.add(now - job.started)
            answer = self._answer(job, frame, peek_error_code(frame), extra)
            after = self._after_call(daemon, header, now)
            if not after:
                return [answer]
            after.insert(0, answer)
            return after
        if daemon.state is _STALE and daemon.stale_id == header.id:
            daemon.calls += 1  # late reply: dropped, the daemon is free again
            return self._after_call(daemon, header, now)
        return []  # a reply for nothing this daemon holds: never delivered

    def _after_call(self, daemon: Daemon, header: Header, now: float) -> list[Action]:
        reason = health.recycle_reason(daemon, self.s, bool(header.flags & FLAG_RETIRE))
        self._make_idle(daemon, now)
        actions: list[Action] = []
        if reason:
            actions += self._retire(daemon, reason, now)
        if daemon.retiring:  # it may have been waiting for this call to end
            actions += self._finish_retirements()
        if self.queued:
            actions += self._dispatch(now)
        return actions

    def _make_idle(self, daemon: Daemon, now: float) -> None:
        daemon.state, daemon.stale_id, daemon.kill_at = DaemonState.IDLE, None, None
        daemon.interrupt_at = None
        daemon.idle_since = now
        self.ready.append(daemon.ident)

    # --- replacing daemons -------------------------------------------------------------

    def _retire(self, daemon: Daemon, reason: str, now: float, kind: str = "recycled") -> list[Action]:
        """Replace a healthy daemon (``kind``: its exit kind; recycled, or scaled and
        reloaded for ``set_workers`` and ``reload``): it keeps serving until the others
        cover what is wanted (its replacement is ready), then leaves once idle."""
        if daemon.retiring or self.closing:
            return []
        daemon.retiring, daemon.retire_kind = reason, kind
        if kind == "recycled":
            self.counters["recycled"] += 1
        note = Note("daemon_recycle" if kind == "recycled" else "daemon_retire", INFO,
                    {"daemon": daemon.name, "pid": daemon.pid, "reason": reason, "calls": daemon.calls})
        return [note] + self._finish_retirements() + self._scale(now)

    def _finish_retirements(self) -> list[Action]:
        """Let idle retiring daemons go once the others cover what is wanted."""
        active = sum(1 for d in self.daemons.values()
                     if d.state in (DaemonState.IDLE, DaemonState.BUSY) and not d.retiring)
        actions: list[Action] = []
        for daemon in list(self.daemons.values()):
            if daemon.retiring and daemon.state is DaemonState.IDLE and active >= self.wanted:
                actions += self._let_go(daemon, daemon.retiring, daemon.retire_kind)
        return actions

    def _let_go(self, daemon: Daemon, reason: str, kind: str) -> list[Action]:
        """Ask an idle daemon to exit cleanly; its exit is not a failure."""
        if daemon.ident in self.ready:
            self.ready.remove(daemon.ident)
        daemon.state, daemon.kill_reason, daemon.exit_kind = DaemonState.STOPPING, reason, kind
        return [ToDaemon(daemon.ident, encode_disconnect(reason))]

    def _lose(self, daemon: Daemon, reason: str) -> list[Action]:
        """Give up on a daemon now (silent, frozen, unreachable): answer its call, kill it hard."""
        actions = self._lose_call(daemon, reason)
        return actions + self._kill(daemon, reason, True, "lost")

    def _kill(self, daemon: Daemon, reason: str, hard: bool, kind: str) -> list[Action]:
        """Kill a daemon on purpose (``kind``: killed or lost), logged with why."""
        self.kill_requested(daemon.ident, reason, kind)
        return [Note("daemon_kill", WARNING, {"daemon": daemon.name, "pid": daemon.pid, "reason": reason,
                                              "kind": kind, "hard": hard}),
                Kill(daemon.ident, reason, hard)]

    def _lose_call(self, daemon: Daemon, reason: str) -> list[Action]:
        """WorkerLost for the call the daemon holds, if its caller still waits."""
        job, daemon.job = daemon.job, None
        if job is None or job.state is not JobState.RUNNING:
            return []
        self.counters["lost"] += 1
        return [self._answer_error(job, WorkerLost(
            f"daemon {daemon.name} (pid {daemon.pid}) was lost during the call: {reason}"))]

    def daemon_spawned(self, ident: bytes, pid: int | None, channel: Any = None) -> list[Action]:
        """The daemon's process started (``channel``: its own, if it has one; ``pid`` None:
        it waits for its template to fork it, and READY will say)."""
        daemon = self.daemons.get(ident)
        if daemon is None:
            return []
        daemon.pid, daemon.channel = pid, channel
        return [Note("daemon_started", INFO, {"daemon": daemon.name, "pid": pid})]

    def daemon_exited(self, ident: bytes, now: float, cause: str = "", code: int | None = None,
                      tail: str = "") -> list[Action]:
        """The daemon's process is gone (or it became unreachable). ``cause`` says how
        ("exited with code 3"), ``tail`` is the end of its stderr (kept from remote callers)."""
        daemon = self.daemons.pop(ident, None)
        if daemon is None:
            return []
        if ident in self.ready:
            self.ready.remove(ident)
        detail = self._exit_detail(cause, code, tail)
        held_call = daemon.job is not None or daemon.stale_id is not None
        reason = daemon.kill_reason or detail or "exited"
        job = daemon.job
        note = self._exit_note(daemon, reason, code, now, job)
        actions = self._lose_call(daemon, reason)
        self.history.append({"id": daemon.name, "pid": daemon.pid, "at": now,
                             "spawned": daemon.spawned, "reason": reason})
        if daemon.kill_reason is None and not self.closing:
            actions += self._count_failure(daemon, now, detail, code, tail, held_call)
        return [note] + actions + self._fail_hopeless(now) + self._dispatch(now) + self._scale(now) + \
            self._roll(now)

    def _exit_note(self, daemon: Daemon, reason: str, code: int | None, now: float,
                   job: Job | None) -> Note:
        if daemon.exit_kind:
            kind = daemon.exit_kind
        elif self.closing and daemon.kill_reason is None:
            kind = "stopped"
        else:
            kind = "start_failed" if daemon.ready_at is None else "crashed"
        if kind in self.exits:
            self.exits[kind] += 1
        fields = {"daemon": daemon.name, "pid": daemon.pid, "reason": kind, "detail": reason,
                  "exit_code": code if code is None or code >= 0 else None,
                  "signal": -code if code is not None and code < 0 else None,
                  "uptime_s": round(now - daemon.ready_at, 6) if daemon.ready_at is not None else None,
                  "calls": daemon.calls}
        if job is not None and job.state is JobState.RUNNING:
            fields["request_id"], fields["tool"] = job.id, job.tool
        planned = kind in ("recycled", "idle", "stopped", "scaled", "reloaded")
        return Note("daemon_exit", INFO if planned else WARNING, fields)

    def _exit_detail(self, cause: str, code: int | None, tail: str) -> str:
        """How a daemon ended, as callers may read it: its last stderr line only where
        tracebacks are exposed, or when it is the exception that stopped the tools loading."""
        last = last_line(tail)
        if last and (self.expose_errors or code == EXIT_LOAD_FAILED):
            return f"{last} ({cause})" if cause else last
        return cause

    def daemon_unreachable(self, ident: bytes, frame: bytes, now: float,
                           extra: tuple[Any, ...] = ()) -> list[Action]:
        """A send to the daemon failed (gone, or not reading): a job that never left goes
        back in front of the queue (with its buffer frames, ``extra``), and the daemon is
        given up."""
        daemon = self.daemons.get(ident)
        if daemon is None:
            return []
        job = daemon.job
        if job is not None and job.frame is frame and job.state is JobState.RUNNING:
            daemon.job = None
            self._requeue(job, extra)
        return self._lose(daemon, "unreachable (its socket refused a message)") + self._dispatch(now)

    def _requeue(self, job: Job, extra: tuple[Any, ...]) -> None:
        """A dispatched job that never left goes back in front of the queue (an owner's
        lease, if it had one, is void: it gets a new one)."""
        job.state, job.daemon, job.extra = JobState.QUEUED, None, extra
        job.channel, job.sent, job.owner_sends = None, False, False
        self.queue.appendleft(job)
        self.queued += 1
        self.queued_bytes += job.size

    def _count_failure(self, daemon: Daemon, now: float, detail: str, code: int | None,
                       tail: str, held_call: bool) -> list[Action]:
        """Back off only for daemons that fail to start or die before serving: one that
        started fine and then died in a call is replaced at once (the call is to blame)."""
        if daemon.ready_at is None:
            self.start_failures += 1
            self.counters["start_failures"] += 1
            self.start_cause = "load_failed" if code == EXIT_LOAD_FAILED else "start_failed"
            self.last_start_error = "\n".join(filter(None, [detail, daemon.note])) or "exited before ready"
            self.last_start_tail = tail if self.expose_errors else ""
            self.failures += 1
        elif held_call or daemon.calls:
            self.counters["crashes"] += 1
            self.failures = 0
        else:
            self.counters["crashes"] += 1
            self.failures = 1 if now - daemon.ready_at >= self.s.stable_after else self.failures + 1
        delay = restart_delay(self.failures, self.s.backoff_base, self.s.backoff_cap, rng=self.rng)
        self.spawn_allowed_at = max(self.spawn_allowed_at, now + delay)
        if not delay:
            return []
        return [Note("restart_delay", WARNING, {"daemon": daemon.name, "delay_s": round(delay, 3),
                                                "failures": self.failures})]

    def _fail_hopeless(self, now: float) -> list[Action]:
        """Queued calls no daemon can serve get PoolUnavailable now, not CallTimeout later:
        starts keep failing, or no daemon is left and none may start before their deadline."""
        if not self.queued:
            return []
        if self._unavailable(now):
            if self.start_failures >= self.s.start_retries:
                self.wanted = self._live()  # stop retrying until a new call asks again
            hopeless, error = self._queued_jobs(), self._unavailable_error()
        elif self._live() or self.spawn_allowed_at <= now:
            return []
        else:
            hopeless = [job for job in self._queued_jobs() if job.deadline < self.spawn_allowed_at]
            error = self._unavailable_error(
                f"no daemon can start before the call's deadline (next start in "
                f"{self.spawn_allowed_at - now:.1f}s after {self.failures} failures)")
        self.counters["unavailable"] += len(hopeless)
        return [self._answer_error(job, error) for job in hopeless]

    def kill_requested(self, ident: bytes, reason: str, kind: str = "killed") -> None:
        daemon = self.daemons.get(ident)
        if daemon is not None and daemon.state is not DaemonState.STOPPING:
            daemon.state, daemon.kill_reason, daemon.exit_kind = DaemonState.STOPPING, reason, kind
            self.counters["kills"] += 1
            if ident in self.ready:
                self.ready.remove(ident)

    # --- calls in flight: streams, credit, cancels, callers that stop reading or vanish ---

    def _holder(self, job: Job) -> Daemon | None:
        """The daemon running ``job``, if it still does."""
        daemon = self.daemons.get(job.daemon) if job.daemon else None
        return daemon if daemon is not None and daemon.job is job else None

    def _make_stale(self, daemon: Daemon, job: Job, kill_at: float) -> list[Action]:
        """The caller has its answer but the daemon still runs the call: its reply will be
        dropped, and it is killed at ``kill_at`` if it has not answered by then. A stream is
        told to stop (on the data socket, which the daemon reads between items and while it
        waits for credit), so an abandoned stream costs no warm daemon."""
        daemon.job, daemon.stale_id, daemon.interrupt_at = None, job.id, None
        daemon.state, daemon.kill_at = DaemonState.STALE, kill_at
        return [ToDaemon(daemon.ident, encode_cancel(job.id))] if job.stream else []

    # --- streams -----------------------------------------------------------------------

    def daemon_partial(self, ident: bytes, header: Header, frame: bytes, now: float,
                       extra: tuple[Any, ...] = ()) -> list[Action]:
        """One streamed item: to the caller if this daemon holds that stream, else dropped."""
        daemon = self.daemons.get(ident)
        job = daemon.job if daemon is not None else None
        if daemon is None or job is None or job.id != header.id or not job.stream \
                or daemon.state is not DaemonState.BUSY \
                or (frame[4] & FLAG_PICKLE and foreign_pickle(job.frame, frame)):  # not to a caller that did not ask
            return []
        job.delivered += 1
        job.touched = now
        return [ToClient(job.client, frame, extra)]

    def client_credit(self, client: bytes, id: int, n: int, now: float) -> list[Action]:
        """A consumer's credit, to the daemon running its stream; never more than the items
        it was given, so no peer can make the hub flood a daemon with credit."""
        job = self.jobs.get((client, id))
        daemon = self._holder(job) if job is not None and job.stream else None
        if job is None or daemon is None:
            return []
        n = min(n, job.delivered - job.credited)
        if n <= 0:
            return []
        job.credited += n
        job.touched = now
        return [ToDaemon(daemon.ident, encode_credit(id, n))]

    def probe_quiet_streams(self, now: float) -> list[Action]:
        """A stream waiting on its consumer hears nothing if the consumer vanished (a ROUTER
        is not told): send it a HEARTBEAT now and then, which clients ignore and which fails
        at once (EHOSTUNREACH) for a peer that is gone, so its stream is stopped."""
        actions: list[Action] = []
        for daemon in self.daemons.values():
            job = daemon.job
            if job is not None and job.stream and now - job.touched >= self.s.heartbeat_interval:
                job.touched = now
                actions.append(ToClient(job.client, PROBE))
        return actions

    def interrupt_stale(self, daemon: Daemon, now: float) -> list[Action]:
        """Ask a stale daemon to stop its call, and again every heartbeat interval: the
        first ask may arrive before the call began (it waited in the daemon's queue), and
        the daemon ignores a cancel for a call it is not running. Safe to repeat: nothing
        new is sent to a stale daemon until it answers, so the only call it can be running
        is that one."""
        if daemon.state is not DaemonState.STALE or daemon.stale_id is None:
            return []
        daemon.interrupt_at = now + self.s.heartbeat_interval
        return [Interrupt(daemon.ident, daemon.stale_id)]

    # --- callers that stop reading or vanish ---------------------------------------------

    def client_unreachable(self, client: bytes, frame: bytes, gone: bool, now: float) -> list[Action]:
        """A frame for ``client`` could not be sent: its pipe is full (it stopped reading)
        or it is gone. It loses that frame; a stream that lost an item cannot go on."""
        header = read_header(frame)
        if gone:
            self.counters["dropped_replies"] += header.kind is not Kind.HEARTBEAT
            return self.client_gone(client, now)
        if header.kind is Kind.HEARTBEAT:
            return []  # a probe of a slow but present peer: nothing lost
        self.counters["dropped_replies"] += 1
        job = self.jobs.get((client, header.id)) if header.kind is Kind.PARTIAL else None
        return self._abandon(job, now) if job is not None else []

    def client_gone(self, client: bytes, now: float) -> list[Action]:
        """Nobody is left to answer: queued calls never run, streams stop; running plain
        calls finish and their replies are dropped."""
        actions: list[Action] = []
        for job in [j for j in self.jobs.values() if j.client == client]:
            if job.state is JobState.QUEUED or job.stream:
                actions += self._abandon(job, now)
        return actions

    def _abandon(self, job: Job, now: float) -> list[Action]:
        self.counters["abandoned"] += 1
        daemon = self._holder(job)
        self._end(job)
        return self._make_stale(daemon, job, now + self.s.kill_grace) if daemon is not None else []

    # --- cancellation ------------------------------------------------------------------

    def cancel(self, client: bytes, id: int, now: float) -> list[Action]:
        """Cancel a call: a queued one never runs; a running one follows cancel_mode.
        Finished or unknown calls are left alone, so a cancel never touches a later call."""
        job = self.jobs.get((client, id))
        if job is None:
            return []
        self.counters["cancelled"] += 1
        note = Note("call_cancelled", INFO, {"tool": job.tool, "request_id": id, "state": job.state.value,
                                             "mode": self.s.cancel_mode})
        if job.state is JobState.QUEUED:
            return [note, self._answer_error(job, Cancelled("cancelled before it ran"))]
        return [note] + self._cancel_running(job, now)

    def _cancel_running(self, job: Job, now: float) -> list[Action]:
        mode = self.s.cancel_mode
        daemon = self._holder(job)
        actions: list[Action] = [self._answer_error(job, Cancelled(
            f"cancelled while running (cancel_mode={mode})"))]
        if daemon is None:
            return actions
        if mode == "kill":
            daemon.job = None
            return actions + self._kill(daemon, f"call {job.id} was cancelled (cancel_mode=kill)", False, "killed")
        if mode == "interrupt":  # a tool that ignores the interrupt is killed after kill_grace
            actions += self._make_stale(daemon, job, now + self.s.kill_grace)
            return actions + self.interrupt_stale(daemon, now)
        return actions + self._make_stale(daemon, job, job.deadline + self.s.kill_grace)

    # --- time --------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, job = heapq.heappop(self.deadlines)
            actions += self._expire(job, now)
        for daemon in list(self.daemons.values()):
            if daemon.state is DaemonState.STOPPING:
                continue
            silent = health.beat_overdue(daemon, now, self.s)
            if silent:
                actions += self._judge_silence(daemon, silent, now)
            elif daemon.interrupt_at is not None and now >= daemon.interrupt_at and \
                    daemon.state is DaemonState.STALE and (daemon.kill_at is None or now < daemon.kill_at):
                actions += self.interrupt_stale(daemon, now)
            elif daemon.kill_at is not None and now >= daemon.kill_at and daemon.state is DaemonState.STALE:
                reason = f"call {daemon.stale_id} ran past its deadline + {self.s.kill_grace}s grace"
                actions += self._kill(daemon, reason, False, "killed")
            elif daemon.state is DaemonState.IDLE and health.idle_expired(daemon, now, self.s):
                actions += self._on_idle(daemon, now)
            elif daemon.state is DaemonState.STARTING and now - daemon.spawned > self.s.start_timeout:
                daemon.note = f"not ready after start_timeout={self.s.start_timeout}s"
                daemon.state = DaemonState.STOPPING
                actions.append(Note("daemon_kill", WARNING, {"daemon": daemon.name, "pid": daemon.pid,
                                                             "reason": daemon.note, "kind": "start_failed",
                                                             "hard": False}))
                actions.append(Kill(daemon.ident, daemon.note, False))
        return actions + self.probe_quiet_streams(now) + self._fail_hopeless(now) + \
            self._finish_retirements() + self._scale(now) + self._roll(now)

    def _judge_silence(self, daemon: Daemon, silent: str, now: float) -> list[Action]:
        """A silent daemon whose process runs is busy (a tool holding the GIL starves the
        heartbeat thread): it keeps its call until the deadline. Frozen or unknown: lost."""
        verdict = self.probe(daemon.ident) if self.probe is not None else None
        if verdict is Process.RUNNING:
            daemon.vouched_at = now
            return []
        if verdict is Process.FROZEN:
            silent += "; its process is stopped"
        return self._lose(daemon, silent)

    def _on_idle(self, daemon: Daemon, now: float) -> list[Action]:
        daemon.idle_since = None  # act once per idle stretch
        if health.IdleAction(self.s.idle_action) is health.IdleAction.RESTART:
            return self._retire(daemon, f"idle for {self.s.idle_timeout}s (idle_action=restart)", now)
        if self._live() > self.s.min_workers:
            self.wanted = max(self.s.min_workers, min(self.wanted, self._live() - 1))
            return self._let_go(daemon, f"idle for {self.s.idle_timeout}s (idle_action=stop)", "idle")
        return []

    def _expire(self, job: Job, now: float) -> list[Action]:
        if job.state is JobState.DONE:
            return []
        waited = now - job.accepted
        self.counters["timeouts"] += 1
        if job.stats is not None:  # a timeout counts in the latencies too, at the time it took
            if job.state is JobState.QUEUED:
                job.stats.queue.add(waited)
            elif job.started is not None:
                job.stats.run.add(now - job.started)
        if job.state is JobState.QUEUED:
            return [self._answer_error(job, CallTimeout(
                f"call timed out after {waited:.3f}s waiting for a free daemon"))]
        daemon = self.daemons.get(job.daemon) if job.daemon else None
        actions = [self._answer_error(job, CallTimeout(f"call timed out after {waited:.3f}s"))]
        if daemon is not None and daemon.job is job:
            actions.append(Note("call_hung", WARNING, {
                "daemon": daemon.name, "pid": daemon.pid, "tool": job.tool, "request_id": job.id,
                "ran_s": round(now - job.started, 6) if job.started is not None else None,
                "kill_in_s": self.s.kill_grace}))
            actions += self._make_stale(daemon, job, now + self.s.kill_grace)
        return actions

    def awaits_reply(self, ident: bytes, client: bytes, id: int) -> bool:
        """Whether daemon ``ident`` may still send a reply to ``client``'s call ``id``."""
        daemon = self.daemons.get(ident)
        if daemon is None or daemon.state is DaemonState.STOPPING:
            return False
        if daemon.state is DaemonState.STALE:
            return daemon.stale_id == id
        return daemon.job is not None and daemon.job.key == (client, id)

    def expire_call(self, job: Job, now: float) -> list[Action]:
        """An owner's deadline passed: judge its job now (nothing if already answered)."""
        return self._expire(job, now)

    def channel_lost(self, job: Job, now: float) -> list[Action]:
        """The owner of ``job`` found its daemon's channel closed or broken, and the hub has
        not reported the daemon's exit in time (``direct.EXIT_WAIT``): the daemon is lost."""
        daemon = self.daemons.get(job.daemon) if job.daemon else None
        if daemon is None or daemon.state is DaemonState.STOPPING:
            return []
        return self._lose(daemon, "its channel closed")

    def abandon(self, job: Job, reason: str) -> list[Action]:
        """The pool is broken (the hub thread died): ``job`` gets WorkerLost if still open."""
        if job.state is not JobState.RUNNING:
            return []
        self.counters["lost"] += 1
        return [self._answer_error(job, WorkerLost(f"the call's daemon is gone: {reason}"))]

    def break_(self, reason: str) -> list[Action]:
        """The hub thread died of ``reason``: nothing can be spawned, judged or supervised
        any more. Queued calls get PoolUnavailable now, and so does every later one;
        running calls finish on their channels or are answered when their daemon stops."""
        self.broken = reason
        self.wanted = 0
        error = PoolUnavailable(f"the pool is broken: {reason}", {"cause": "broken"})
        actions = [self._answer_error(job, error) for job in self._queued_jobs()]
        self.queue.clear()
        return actions

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until tick() has something to do, or None. A daemon being stopped has no
        timer (tick() skips it), nor has an idle one when idle_action is none."""
        soonest = self.deadlines[0][0] if self.deadlines else math.inf
        s = self.s
        idle_timeout = s.idle_timeout if s.idle_action != health.IdleAction.NONE.value else 0.0
        for d in self.daemons.values():
            state = d.state
            if state is _STOPPING:
                continue
            if d.kill_at is not None:
                soonest = min(soonest, d.kill_at)
            elif state is _STARTING:
                soonest = min(soonest, d.spawned + s.start_timeout)
            silence = health.silence_deadline(d, s)
            if silence is not None:
                soonest = min(soonest, silence + 0.001)
            if idle_timeout > 0 and d.idle_since is not None and state is _IDLE:
                soonest = min(soonest, d.idle_since + idle_timeout)
        if self.wanted and self._live() < self.wanted:
            soonest = min(soonest, self.spawn_allowed_at)
        return None if soonest == math.inf else max(0.0, soonest - now)

    # --- live control: scale and reload (zbridge/rollout.py) ------------------------------

    def set_workers(self, n: int, now: float) -> list[Action]:
        """``zbridge scale N``: the pool keeps ``n`` daemons from now on. Up: the new ones
        start now. Down: the extras retire (those not serving yet first, then stale, idle,
        busy ones): an idle one leaves at once, a busy one after its running call, never
        during it. InvalidParams for a size the pool cannot have."""
        if n < 1 and not self.remote_ok:
            raise InvalidParams("workers must be at least 1 (0 only for a hub whose daemons "
                                "connect from other hosts: daemon_bind)")
        refusal = self._not_serving()
        if refusal is not None:
            raise refusal
        was = self.s.workers
        self.s = replace(self.s, workers=n, min_workers=min(self.s.min_workers, n))
        self.wanted = n
        probe = self.reloading.probe if self.reloading is not None else None
        kept = [d for d in rollout.staying(self.daemons.values()) if d is not probe]
        for daemon in self.daemons.values():  # growing again: keep those an earlier scale let go
            if len(kept) < n and daemon.retiring and daemon.retire_kind == "scaled" \
                    and daemon.state is not _STOPPING:
                daemon.retiring, daemon.retire_kind = None, "recycled"
                kept.append(daemon)
        actions: list[Action] = [Note("pool_scaled", INFO, {"workers": n, "was": was})]
        for daemon in rollout.leavers(kept, len(kept) - n):
            actions += self._retire(daemon, f"the pool was scaled to {n} workers", now, "scaled")
        return actions + self._finish_retirements() + self._scale(now)

    def reload(self, client: bytes, id: int, now: float) -> list[Action]:
        """``zbridge reload``: replace every spawned daemon by one that loads the tools
        afresh. One new daemon starts first; only once it is READY do the old ones retire,
        one at a time, each after its running call (``_roll``). If it cannot start, the
        reload is aborted and the old daemons serve on. ``client`` gets one REPLY (call
        ``id``) when all old daemons are gone, or the error. A reload asked for during
        another starts over from a new daemon, and answers both callers."""
        refusal = self._not_serving()
        if refusal is not None:
            return [ToClient(client, encode_error(id, refusal))]
        self.generation += 1
        reload = self.reloading or rollout.Reload(self.generation, now, None)
        reload.generation = self.generation
        reload.waiters.append((client, id))
        self.reloading = reload
        self.wanted = max(self.wanted, len(rollout.staying(self.daemons.values())))  # keep its size
        reload.probe, actions = self._spawn(now)  # beyond wanted: the old ones serve meanwhile
        return [Note("reload_start", INFO, {"generation": self.generation,
                                            "daemons": len(rollout.old(self.daemons.values(), reload))})] + actions

    def _roll(self, now: float) -> list[Action]:
        """Move a reload on (after a READY, an exit, a tick): abort it if its first new
        daemon died before READY; else retire the next old daemon once the previous one is
        gone; answer it when none is left."""
        reload = self.reloading
        if reload is None:
            return []
        probe = reload.probe
        if probe is not None:
            if self.daemons.get(probe.ident) is not probe:  # it exited before READY
                return self._end_reload(now, rollout.failed(
                    self.last_start_error or self._exit_reason(probe), self.start_cause, self.last_start_tail))
            if probe.ready_at is None:
                return []  # still starting (or being killed after start_timeout: its exit decides)
            reload.probe = None
        old = rollout.old(self.daemons.values(), reload)
        if not old:
            return self._end_reload(now)
        if any(d.retiring or d.state is _STOPPING for d in old):
            return []  # one at a time: the one leaving goes first
        reload.replaced += 1
        return self._retire(rollout.leavers(old, 1)[0], f"reload to generation {reload.generation}",
                            now, "reloaded")

    def _exit_reason(self, daemon: Daemon) -> str | None:
        return next((h["reason"] for h in reversed(self.history) if h["id"] == daemon.name), None)

    def _not_serving(self) -> BridgeError | None:
        """Why the pool takes no control now (closing, broken), or None."""
        if self.closing:
            return SHUTTING_DOWN()
        if self.broken is not None:
            return PoolUnavailable(f"the pool is broken: {self.broken}", {"cause": "broken"})
        return None

    def _end_reload(self, now: float, error: BridgeError | None = None) -> list[Action]:
        """Answer every caller of the reload in progress (if any) and forget it."""
        reload, self.reloading = self.reloading, None
        if reload is None:
            return []
        if error is None:
            body = rollout.result(reload, now)
            actions: list[Action] = [Note("reload_done", INFO, body)]
            return actions + [ToClient(client, encode_result(id, body)) for client, id in reload.waiters]
        actions = [Note("reload_failed", WARNING, {"generation": reload.generation, "error": error.message})]
        return actions + [ToClient(client, encode_error(id, error)) for client, id in reload.waiters]

    # --- shutdown and status -----------------------------------------------------------

    def close(self) -> list[Action]:
        """Refuse new calls and answer queued ones; running calls may still finish."""
        self.closing = True
        self.wanted = 0
        actions = [self._answer_error(job, SHUTTING_DOWN()) for job in self._queued_jobs()]
        self.queue.clear()
        return actions + self._end_reload(0.0, SHUTTING_DOWN())

    def abandon_running(self, reason: str) -> list[Action]:
        """Answer every still-running call (used when the drain time is up)."""
        actions = []
        for daemon in self.daemons.values():
            job = daemon.job
            if job is not None and job.state is JobState.RUNNING:
                actions.append(self._answer_error(job, WorkerLost(reason)))
            daemon.job = None
        return actions

    def running(self) -> int:
        return sum(1 for d in self.daemons.values() if d.job is not None)

    def status(self, now: float) -> dict[str, Any]:
        return {
            "workers": self.s.workers,
            "queue_depth": self.queued,
            "queue_bytes": self.queued_bytes,
            "closing": self.closing,
            "failures": self.failures,
            "last_start_error": self.last_start_error,
            "last_start_cause": self.start_cause if self.last_start_error else None,
            "counters": dict(self.counters),
            "daemons": [self._daemon_status(d, now) for d in self.daemons.values()],
            "restarts": [{"id": h["id"], "pid": h["pid"], "reason": h["reason"],
                          "ago_s": round(now - h["at"], 3),
                          "spawned_ago_s": round(now - h["spawned"], 3)} for h in self.history],
            "exits": dict(self.exits),
            "tools": self.tools.status(),
            "generation": self.generation,
            "reload": rollout.status(self.reloading, self.daemons.values(), now),
        }

    def _daemon_status(self, d: Daemon, now: float) -> dict[str, Any]:
        status = {
            "id": d.name,
            "pid": d.pid,
            "state": d.state.value,
            "calls": d.calls,
            "uptime_s": round(now - d.ready_at, 3) if d.ready_at else None,
            "current_call": d.job.id if d.job else d.stale_id,
            "current_tool": d.job.tool if d.job else None,
            "call_age_s": round(now - d.job.started, 3) if d.job and d.job.started else None,
            "tools": d.tools,
            "rss": d.rss,
            "last_beat_age_s": round(now - d.last_beat, 3) if d.last_beat is not None else None,
            "unresponsive": d.vouched_at is not None,
            "retiring": d.retiring,
            "generation": d.generation,
        }
        if self.expose_errors:
            status["routing_id"] = d.ident.decode(errors="replace")
        return status


def new_job(client: bytes, header: Header, frame: bytes, now: float, default_timeout: float,
            extra: tuple[Any, ...] = (), owner: Any = None) -> Job:
    """A job for ``accept``; pure (an owner builds it before it takes the pool's lock)."""
    timeout = header.timeout_ms / 1000.0 if header.timeout_ms else default_timeout
    return Job(client, header.id, frame, now + timeout, now, bool(header.flags & FLAG_STREAM),
               tool=peek_method(frame), extra=extra,
               extra_size=sum(len(part) for part in extra) if extra else 0, owner=owner)
