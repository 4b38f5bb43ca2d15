"""The hub's routing state machine. Pure: no sockets, no processes, no clock of its own.

Every event (a request arrives, a daemon is ready, replies, exits; time passes) is a method
that returns the actions the hub must carry out, typed in ``zbridge/actions.py``:
``ToClient``, ``ToDaemon``, ``Spawn``, ``Kill``, ``Interrupt``, and ``Note`` (a lifecycle
event for the hub's log). It also keeps the per-tool numbers (``zbridge/stats.py``).

Guarantees kept here: a request goes only to an idle daemon (least recently used first);
every accepted request is answered exactly once (``_answer`` is the only way a call gets
its reply, and it refuses a second); a reply is delivered only if it comes from the daemon
holding that request id; an expired queued request is never dispatched.
"""

from __future__ import annotations

import heapq
import itertools
import math
from logging import INFO, WARNING
import random
from collections import deque
from typing import Any, Callable

from . import health
from .actions import Action, Kill, Note, Spawn, ToClient, ToDaemon
from .backoff import restart_delay
from .config import Settings
from .errors import (
    BridgeError,
    CallTimeout,
    InvalidRequest,
    Overloaded,
    PoolUnavailable,
    WorkerLost,
)
from .inflight import InFlight
from .pickling import foreign_error as pickle_refused
from .pickling import remote_error as pickle_refused_remote
from .pickling import foreign_pickle
from .prefetch import Prefetch
from .protocol import (EXIT_LOAD_FAILED, FLAG_PICKLE, FLAG_RETIRE, FLAG_STREAM, HEADER_SIZE, REQUEST_FLAGS, Header,
                       encode_disconnect, encode_error, peek_error_code, peek_method, too_large,
                       without_flags)
from .state import (EXIT_KINDS, SHUTTING_DOWN, Daemon, DaemonState, Job, JobState, Process, _secret_ident,
                    first_line, last_line)
from .stats import ToolTable

Probe = Callable[[bytes], "Process | None"]
HISTORY = 50  # exits remembered for status()
# the states the hot path compares against, bound once (a module global beats an enum lookup)
_QUEUED, _RUNNING, _DONE = JobState.QUEUED, JobState.RUNNING, JobState.DONE
_IDLE, _BUSY, _STALE, _STARTING, _STOPPING = (DaemonState.IDLE, DaemonState.BUSY, DaemonState.STALE,
                                              DaemonState.STARTING, DaemonState.STOPPING)


class Broker(InFlight, Prefetch):
    def __init__(self, settings: Settings, *, remote_ok: bool = False,
                 rng: random.Random | None = None,
                 new_ident: Callable[[int], bytes] | None = None,
                 probe: Probe | None = None, expose_errors: bool = True,
                 direct_prefix: str | None = None) -> None:
        self.s = settings
        self.rng = rng or random.Random()
        self._new_ident = new_ident or _secret_ident
        self.probe = probe                # asks the OS about a local daemon; None for remote ones
        self.expose_errors = expose_errors  # stderr tails and routing ids only to local callers
        self.direct_prefix = direct_prefix  # where our own daemons' direct sockets may be
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
        """A request; ``extra``: its buffer frames (opaque objects with a length)."""
        tool = peek_method(frame)
        if self.closing:
            return self._refuse(client, header.id, SHUTTING_DOWN(), tool)
        extra_size = sum(len(part) for part in extra) if extra else 0
        size = len(frame) - HEADER_SIZE + extra_size  # the whole message, as every receiver judges it
        refusal = (self._invalid(client, header)
                   or (size > self.s.max_message_size and too_large(size, self.s.max_message_size, len(extra)))
                   or self._overloaded(len(frame) + extra_size))
        if refusal is not None:
            self.tools.get(tool).answered(refusal.code)
            return [ToClient(client, encode_error(header.id, refusal))]
        if self._unavailable(now):
            return self._refuse(client, header.id, self._unavailable_error(), tool)
        timeout = header.timeout_ms / 1000.0 if header.timeout_ms else self.s.timeout
        job = Job(client, header.id, frame, now + timeout, now, bool(header.flags & FLAG_STREAM),
                  tool=tool, stats=self.tools.get(tool), extra=extra, extra_size=extra_size)
        self.counters["accepted"] += 1
        self.jobs[(client, header.id)] = job
        deadlines = self.deadlines
        heapq.heappush(deadlines, (job.deadline, next(self._seq), job))
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
            actions += self._scale(now) + self._fail_hopeless(now)
        return actions

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

    def _refuse(self, client: bytes, id: int, error: BridgeError, tool: str | None) -> list[Action]:
        self.counters["unavailable"] += 1
        self.tools.get(tool).answered(error.code)
        return [ToClient(client, encode_error(id, error))]

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
        if self.queued and self.s.prefetch:
            actions += self._prefetch(now)
        return actions

    def _start(self, job: Job, ident: bytes, now: float) -> Action:
        """Hand a job (no longer queued) to the idle daemon ``ident``."""
        daemon = self.daemons[ident]
        job.state, job.started, job.daemon, job.touched = _RUNNING, now, ident, now
        if job.stats is not None:
            job.stats.queue.add(now - job.accepted)
        daemon.state, daemon.job = _BUSY, job
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
            n = next(self._names)
            ident = self._new_ident(n)
            self.daemons[ident] = Daemon(ident, now, name=f"w{n}")
            self.counters["spawns"] += 1
            actions.append(Spawn(ident))
            actions.append(Note("daemon_spawn", INFO, {"daemon": f"w{n}"}))
        return actions

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
        elif daemon.state is DaemonState.STARTING:  # one we spawned: its direct socket is ours
            direct, unix = info.get("direct"), info.get("unix")
            if isinstance(direct, str) and self.direct_prefix and direct.startswith(self.direct_prefix):
                daemon.direct = direct
            if isinstance(unix, str) and self.direct_prefix and \
                    f"ipc://{unix}".startswith(self.direct_prefix) and ".." not in unix:
                daemon.unix = unix
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
        return [note] + self._finish_retirements() + self._dispatch(now)

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
        if daemon.next is not None and daemon.next.id == header.id:
            return self._next_reply(daemon, frame, now, extra)
        if daemon.state is _STALE and daemon.stale_id == header.id:
            daemon.calls += 1  # late reply: dropped, the daemon is free again
            return self._after_call(daemon, header, now)
        return []  # a reply for nothing this daemon holds: never delivered

    def _after_call(self, daemon: Daemon, header: Header, now: float) -> list[Action]:
        reason = health.recycle_reason(daemon, self.s, bool(header.flags & FLAG_RETIRE))
        if daemon.next is not None:  # it starts its prefetched call now
            actions = self._promote(daemon, now)
        else:
            self._make_idle(daemon, now)
            actions = []
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

    def _retire(self, daemon: Daemon, reason: str, now: float) -> list[Action]:
        """Replace a healthy daemon: it keeps serving until its replacement is ready."""
        if daemon.retiring or self.closing:
            return []
        daemon.retiring = reason
        self.counters["recycled"] += 1
        note = Note("daemon_recycle", INFO, {"daemon": daemon.name, "pid": daemon.pid, "reason": reason,
                                             "calls": daemon.calls})
        return [note] + self._finish_retirements() + self._scale(now)

    def _finish_retirements(self) -> list[Action]:
        """Let idle retiring daemons go once the others cover what is wanted."""
        active = sum(1 for d in self.daemons.values()
                     if d.state in (DaemonState.IDLE, DaemonState.BUSY) and not d.retiring)
        actions: list[Action] = []
        for daemon in list(self.daemons.values()):
            if daemon.retiring and daemon.state is DaemonState.IDLE and active >= self.wanted:
                actions += self._let_go(daemon, daemon.retiring, "recycled")
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
        queued = self._lose_next(daemon, reason) if daemon.next is not None else []
        if job is None or job.state is not JobState.RUNNING:
            return queued
        self.counters["lost"] += 1
        return [self._answer_error(job, WorkerLost(
            f"daemon {daemon.name} (pid {daemon.pid}) was lost during the call: {reason}"))] + queued

    def daemon_spawned(self, ident: bytes, pid: int) -> list[Action]:
        daemon = self.daemons.get(ident)
        if daemon is None:
            return []
        daemon.pid = pid
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
        return [note] + actions + self._fail_hopeless(now) + self._dispatch(now) + self._scale(now)

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
        planned = kind in ("recycled", "idle", "stopped")
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
        else:
            self._take_back_next(daemon, frame, extra)
        return self._lose(daemon, "unreachable (its socket refused a message)") + self._dispatch(now)

    def _requeue(self, job: Job, extra: tuple[Any, ...]) -> None:
        """A dispatched job that never left goes back in front of the queue."""
        job.state, job.daemon, job.extra = JobState.QUEUED, None, extra
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
            self._finish_retirements() + self._scale(now)

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
        if daemon.next is not None and daemon.next.key == (client, id):
            return True
        if daemon.state is DaemonState.STALE:
            return daemon.stale_id == id
        return daemon.job is not None and daemon.job.key == (client, id)

    def deadline_due(self, now: float) -> bool:
        """Whether tick(now) would judge a call's deadline."""
        return bool(self.deadlines) and self.deadlines[0][0] <= now

    def expire_call(self, client: bytes, id: int, now: float) -> list[Action]:
        """Judge one call's deadline now (its caller waited past it without a verdict)."""
        job = self.jobs.get((client, id))
        return self._expire(job, now) if job is not None else []

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

    # --- shutdown and status -----------------------------------------------------------

    def close(self) -> list[Action]:
        """Refuse new calls and answer queued ones; running calls may still finish."""
        self.closing = True
        self.wanted = 0
        actions = [self._answer_error(job, SHUTTING_DOWN()) for job in self._queued_jobs()]
        self.queue.clear()
        return actions

    def abandon_running(self, reason: str) -> list[Action]:
        """Answer every still-running call (used when the drain time is up)."""
        actions = []
        for daemon in self.daemons.values():
            for job in (daemon.job, daemon.next):
                if job is not None and job.state is JobState.RUNNING:
                    actions.append(self._answer_error(job, WorkerLost(reason)))
            daemon.job = daemon.next = None
        return actions

    def running(self) -> int:
        return sum(1 for d in self.daemons.values()
                   if d.job is not None or (d.next is not None and d.next.state is JobState.RUNNING))

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
        }
        if self.expose_errors:
            status["routing_id"] = d.ident.decode(errors="replace")
        return status
