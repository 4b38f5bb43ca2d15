"""Prefetch (``prefetch=True``, opt-in): one queued call may wait in a busy daemon's own
queue, so the daemon starts it the moment it sends its reply instead of idling while the
broker hands it the next call (a round trip through a caller or the hub thread).

Kept apart from routing; mixed into ``Broker``, whose attributes it declares below.

The failure rule (documented in README and PROTOCOL): a prefetched call has left the
broker, so it is never taken back. If its daemon is lost, it gets ``WorkerLost`` like the
call before it, even though it may not have started (the daemon may have sent its
previous reply and begun it just before it died): it *may have run*, so only idempotent
calls are retried. Its deadline counts from submission, as always; if it passes while the
call waits, the call gets ``CallTimeout`` and the daemon, which will still run it, is
treated as running a stale call (killed if it has not answered by then plus
``kill_grace``; interrupted at once with ``cancel_mode=interrupt``). Streams are never
prefetched, nor sent to a daemon running a stream, nor to a daemon being replaced.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from .actions import Action, ToDaemon
from .config import Settings
from .errors import WorkerLost
from .protocol import FLAG_RETIRE, peek_error_code, without_flags
from .state import Daemon, DaemonState, Job, JobState


class Prefetch:
    s: Settings
    daemons: dict[bytes, Daemon]
    queue: deque[Job]
    queued: int
    queued_bytes: int
    counters: dict[str, int]

    if TYPE_CHECKING:  # provided by Broker
        def _answer_error(self, job: Job, error: Any) -> Action: ...
        def _answer(self, job: Job, frame: bytes, code: int | None = None,
                    extra: tuple[Any, ...] = ()) -> Action: ...
        def _dispatch(self, now: float) -> list[Action]: ...
        def interrupt_stale(self, daemon: Daemon, now: float) -> list[Action]: ...
        def _requeue(self, job: Job, extra: tuple[Any, ...]) -> None: ...

    def _prefetch(self, now: float) -> list[Action]:
        """Queued calls to busy daemons with room for one, while the queue lasts."""
        actions: list[Action] = []
        for daemon in self.daemons.values():
            if not self.queued:
                break
            current = daemon.job
            if daemon.state is not DaemonState.BUSY or daemon.next is not None or daemon.retiring \
                    or current is None or current.stream:
                continue
            while self.queue and self.queue[0].state is not JobState.QUEUED:
                self.queue.popleft()  # answered while they waited
            if not self.queue or self.queue[0].stream:
                break  # a stream waits for an idle daemon, and calls behind it keep their turn
            job = self.queue.popleft()
            self.queued -= 1
            self.queued_bytes -= job.size
            job.state, job.daemon, job.touched = JobState.RUNNING, daemon.ident, now
            daemon.next = job
            actions.append(ToDaemon(daemon.ident, job.frame, job.extra, job.client))
            job.extra = ()
        return actions

    def _promote(self, daemon: Daemon, now: float) -> list[Action]:
        """The daemon answered its call and starts its prefetched one now."""
        job, daemon.next = daemon.next, None
        assert job is not None
        if job.state is JobState.RUNNING:
            daemon.state, daemon.job = DaemonState.BUSY, job
            job.started = job.touched = now
            if job.stats is not None:
                job.stats.queue.add(now - job.accepted)
            return []
        # answered while it waited (deadline, cancel): the daemon runs it anyway
        daemon.state, daemon.job, daemon.stale_id = DaemonState.STALE, None, job.id
        daemon.kill_at = max(now, job.deadline) + self.s.kill_grace
        return self.interrupt_stale(daemon, now) if self.s.cancel_mode == "interrupt" else []

    def _next_reply(self, daemon: Daemon, frame: bytes, now: float,
                    extra: tuple[Any, ...]) -> list[Action]:
        """The prefetched call answered first: it reached the daemon before the call ahead
        of it (requests from different callers' connections arrive in any order), so that
        one is what the daemon runs now. Answer this one; the queue slot is free again."""
        job, daemon.next = daemon.next, None
        assert job is not None
        daemon.calls += 1
        actions: list[Action] = []
        if job.state is JobState.RUNNING:
            self.counters["completed"] += 1
            actions.append(self._answer(job, without_flags(frame, FLAG_RETIRE),
                                        peek_error_code(frame), extra))
        return actions + (self._dispatch(now) if self.queued else [])

    def _lose_next(self, daemon: Daemon, reason: str) -> list[Action]:
        """WorkerLost for the call waiting in a lost daemon's queue (it may have started)."""
        job, daemon.next = daemon.next, None
        if job is None or job.state is not JobState.RUNNING:
            return []
        self.counters["lost"] += 1
        return [self._answer_error(job, WorkerLost(
            f"daemon {daemon.name} (pid {daemon.pid}) was lost while the call waited in its "
            f"queue (prefetch; it may have started): {reason}"))]

    def _take_back_next(self, daemon: Daemon, frame: bytes, extra: tuple[Any, ...]) -> bool:
        """A prefetched call whose send failed never left: back to the front of the queue."""
        job = daemon.next
        if job is None or job.frame is not frame or job.state is not JobState.RUNNING:
            return False
        daemon.next = None
        self._requeue(job, extra)
        return True
