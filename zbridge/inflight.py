"""The broker's handling of calls already in flight: streamed items, credit, cancels, and
callers that stop reading or vanish.

Kept apart from routing; mixed into ``Broker``, whose attributes it declares below. Every
frame is matched against the job of that caller's request id, so nothing reaches or
touches any other call.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from logging import INFO

from .actions import Action, Interrupt, Note, ToClient, ToDaemon
from .config import Settings
from .errors import BridgeError, Cancelled
from .pickling import foreign_pickle
from .protocol import (
    FLAG_PICKLE,
    Header,
    Kind,
    encode_cancel,
    encode_credit,
    encode_heartbeat,
    read_header,
)
from .state import Daemon, DaemonState, Job, JobState

PROBE = encode_heartbeat()


class InFlight:
    s: Settings
    daemons: dict[bytes, Daemon]
    jobs: dict[tuple[bytes, int], Job]
    queue: deque[Job]
    counters: dict[str, int]

    if TYPE_CHECKING:  # provided by Broker
        def _answer_error(self, job: Job, error: BridgeError) -> Action: ...
        def _end(self, job: Job) -> None: ...
        def _kill(self, daemon: Daemon, reason: str, hard: bool, kind: str) -> list[Action]: ...

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
        is that one (with prefetch, only while no other call waits behind it)."""
        if daemon.state is not DaemonState.STALE or daemon.stale_id is None or daemon.next is not None:
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
