"""The broker's handling of calls already in flight: streamed items, credit, cancels.

Kept apart from routing; mixed into ``Broker``. Every frame is matched against the daemon
that holds that caller's request id, so nothing reaches or touches any other call.
"""

from __future__ import annotations

from .errors import Cancelled
from .protocol import Header, encode_credit, encode_error
from .state import Daemon, DaemonState, Job, JobState

Action = tuple


class InFlight:
    # --- streams -----------------------------------------------------------------------

    def daemon_partial(self, ident: bytes, header: Header, frame: bytes) -> list[Action]:
        """One streamed item: to the caller if this daemon holds that call, else dropped."""
        daemon = self.daemons.get(ident)
        if daemon is None:
            return []
        if daemon.state is DaemonState.BUSY and daemon.job is not None and daemon.job.id == header.id:
            return [("client", daemon.job.client, frame)]
        if daemon.state is DaemonState.STALE and daemon.stale_id == header.id:
            # nobody consumes it any more: keep credit flowing so the stream can end
            return [("daemon", ident, encode_credit(header.id, 1))]
        return []

    def client_credit(self, client: bytes, header: Header, frame: bytes) -> list[Action]:
        """A consumer's credit: to the daemon running that caller's call, else dropped."""
        for daemon in self.daemons.values():
            job = daemon.job
            if job is not None and job.client == client and job.id == header.id:
                return [("daemon", daemon.ident, frame)]
        return []

    # --- cancellation ------------------------------------------------------------------

    def cancel(self, client: bytes, id: int, now: float) -> list[Action]:
        """Cancel a call: a queued one never runs; a running one follows cancel_mode.
        Finished or unknown calls are left alone, so a cancel never touches a later call."""
        for job in self.queue:
            if job.client == client and job.id == id and job.state is JobState.QUEUED:
                job.state = JobState.DONE
                self.queued -= 1
                self.counters["cancelled"] += 1
                return [("client", client, encode_error(id, Cancelled("cancelled before it ran")))]
        for daemon in self.daemons.values():
            job = daemon.job
            if job is not None and job.client == client and job.id == id and job.state is JobState.RUNNING:
                return self._cancel_running(daemon, job, now)
        return []

    def _cancel_running(self, daemon: Daemon, job: Job, now: float) -> list[Action]:
        mode = self.s.cancel_mode
        job.state = JobState.DONE
        self.counters["cancelled"] += 1
        actions: list[Action] = [("client", job.client, encode_error(job.id, Cancelled(
            f"cancelled while running (cancel_mode={mode})")))]
        daemon.job = None
        if mode == "kill":
            reason = f"call {job.id} was cancelled (cancel_mode=kill)"
            self.kill_requested(daemon.ident, reason)
            return actions + [("kill", daemon.ident, reason, False)]
        # the daemon is busy until it answers; its answer is dropped
        daemon.state, daemon.stale_id = DaemonState.STALE, job.id
        if mode == "interrupt":
            daemon.kill_at = now + self.s.kill_grace  # a tool that ignores it is killed
            return actions + [("interrupt", daemon.ident, job.id)]
        daemon.kill_at = job.deadline + self.s.kill_grace
        return actions
