"""The embedded direct route: a calling thread borrows an idle daemon, talks to it over the
daemon's own channel, and gives it back; the hub thread only supervises.

Each daemon an embedded hub spawns has one exclusive channel (a ``socketpair``, made at
spawn: ``supervisor.py``). The broker stays the one judge of who runs what, under the
pool's lock (``shield.Guard``), held only while it decides:

1. *check out*: ``broker.accept`` hands the job an idle daemon (``Lease``: the job now
   holds that daemon's channel) or queues it;
2. the caller sends its frame and blocks in one ``recv`` on the channel, in slices (the
   kernel's SO_RCVTIMEO) that end at its deadline: **the caller judges its own deadline**;
3. *check in*: ``broker.daemon_reply`` frees the daemon, answers the job (``job.answer``)
   and may lend the daemon to the first queued caller, whose request the checking-in
   thread sends itself before it wakes that caller (``lend``): a freed daemon never waits
   for a thread to be scheduled.

A queued caller waits on its own lock (``Parking``); whoever moves its job on (a lease,
an answer) wakes it. Everything else the broker asks for (spawns, kills, interrupts,
logging) is posted to the hub thread, after the lock. A call that ends while its request
is still out (deadline, cancel, Ctrl-C) hands the channel to the hub thread
(``Hub.adopt``), which reads the late reply so the daemon comes back warm, or the broker
kills it at ``kill_grace``. A daemon that dies closes its channel (and the supervisor
shuts our end), so the caller wakes at once and waits briefly for the hub's verdict on
the exit (``WorkerLost``, naming how it died).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .actions import Action, Answered, Lease
from .broker import new_job
from .calls import closed_while_waiting
from .errors import BridgeError
from .protocol import FLAG_LONE, Kind, add_flags, read_header
from .shield import checkpoint, protected, waiting
from .state import Job
from .wire import SMALL

if TYPE_CHECKING:
    from .hub import Hub

DIRECT_CLIENT = b"\x00direct"  # owners' client id in the broker: no zmq peer can have it
EXIT_WAIT = 1.0  # after its channel closed, how long a caller waits for the hub's verdict
SLICE = 0.1  # a waiting caller looks at its job (and a Ctrl-C) this often
# A lone caller spins this long for its reply before it sleeps: on a virtual machine a
# sleep and its wake-up cost more than a small call (bench: floor.unix), and what the
# spin wastes is bounded by this much per call.
SPIN = 0.0001
_DONTWAIT = socket.MSG_DONTWAIT
Reply = tuple[bytes, tuple[Any, ...]]


class Parking:
    """A thread's place to wait for its job to move: a lock it holds, released by ``wake``."""

    __slots__ = ("lock", "thread")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.thread = threading.current_thread()

    def wake(self, job: Job | None = None) -> None:
        try:
            self.lock.release()
        except RuntimeError:
            pass  # already woken: it looks at its job before it waits again

    def wait(self, timeout: float) -> None:
        self.lock.acquire(timeout=max(0.0, timeout))


def carry_out(hub: Hub, actions: list[Action], me: Any) -> None:
    """A caller's share of the broker's actions: wake other owners (sending their leased
    requests first), post the rest to the hub thread. ``me``: this caller's owner."""
    rest: list[Action] = []
    for action in actions:
        kind = type(action)
        if kind is Answered:
            owner = action.job.owner  # type: ignore[union-attr]
            if owner is not me:
                owner.wake(action.job)  # type: ignore[union-attr]
        elif kind is Lease:
            job = action.job  # type: ignore[union-attr]
            if job.owner is me:
                job.owner_sends = True
            else:
                lend(hub, job)
        else:
            rest.append(action)
    if rest:
        hub.post(rest)


def lend(hub: Hub, job: Job) -> None:
    """Send another owner's leased request (if small: it goes at once), then wake it. A
    send that fails means the request never left: the broker puts it back in the queue
    and gives up the daemon."""
    if job.extra or len(job.frame) > SMALL:
        job.owner_sends = True  # it may take a while: the owner's own time, not ours
    elif not send_request(hub, job, True):  # it waited for a daemon: more are likely to come soon
        return
    job.owner.wake(job)


def send_request(hub: Hub, job: Job, lone: bool = False) -> bool:
    """A leased request on its daemon's channel (``lone``: another request is likely to
    follow at once, from a lone caller calling back to back or from the queue, so the
    daemon may wait for it awake); False (and the broker told) if the daemon's end is gone."""
    channel, daemon = job.channel, job.daemon or b""  # as lent now (a failure voids the lease)
    try:
        channel.send(add_flags(job.frame, FLAG_LONE) if lone else job.frame, job.extra)
    except OSError:
        with hub.guard:
            actions = hub.broker.daemon_unreachable(daemon, job.frame, time.monotonic(), job.extra)
        carry_out(hub, actions, None)
        job.owner.wake(job)
        return False
    job.sent, job.extra = True, ()
    return True


class Route:
    """What a caller on the direct route decides, under the pool's lock, and does right
    after: check out, check in, judge its deadline, cancel, give up. No waiting here: the
    blocking twin (``DirectTransport``) and the asyncio one (``direct_async``) wait."""

    def __init__(self, hub: Hub, default_timeout: float,
                 closed: Callable[[], bool] = lambda: False) -> None:
        self.hub = hub
        self.broker = hub.broker
        self.guard = hub.guard
        self.default_timeout = default_timeout
        self.closed = closed  # the client was closed: a waiting call gives up (Cancelled)
        self._jobs: dict[int, Job] = {}  # calls in flight, by request id (for cancel)

    def _check_out(self, frame: bytes, buffers: Sequence[Any], me: Any) -> Job:
        """A job for the request ``frame``, accepted by the broker: leased, queued, or
        already answered (refused)."""
        header = read_header(frame)
        extra = tuple(_bytes_view(b) for b in buffers) if buffers else ()
        job = new_job(DIRECT_CLIENT, header, frame, time.monotonic(), self.default_timeout, extra, me)
        with self.guard:
            actions = self.broker.accept(job, header, job.accepted)
        self._jobs[job.id] = job
        carry_out(self.hub, actions, me)
        return job

    def _check_in(self, job: Job, frame: bytes, buffers: Sequence[Any], me: Any) -> bool:
        """A message read on the job's channel: its reply (True once reported, which
        answers the job and frees the daemon), or something to ignore (False)."""
        try:
            header = read_header(frame)
        except BridgeError:
            return False
        if header.kind is not Kind.REPLY or header.id != job.id:
            return False  # nothing else is ever sent on a channel
        with self.guard:
            actions = self.broker.daemon_reply(job.daemon or b"", header, frame, time.monotonic(),
                                               tuple(buffers))
        carry_out(self.hub, actions, me)
        return True

    def cancel(self, request_id: int) -> None:
        """Cancel a call of this route from any thread (``CallFuture.cancel``)."""
        job = self._jobs.get(request_id)
        if job is not None:
            self._decide(self.broker.cancel, None, job.client, job.id, time.monotonic())

    def _check_closed(self) -> None:
        """The client was closed while this call waited: it ends Cancelled (it may have run;
        the caller's clean-up cancels it in the pool)."""
        if self.closed():
            raise closed_while_waiting()

    def _decide(self, event: Any, me: Any, *args: Any) -> None:
        with self.guard:
            actions = event(*args)
        carry_out(self.hub, actions, me)

    def _expire(self, job: Job, me: Any) -> None:
        self._decide(self.broker.expire_call, me, job, time.monotonic())

    def _channel_lost(self, job: Job, me: Any) -> None:
        """Its channel closed and the hub did not report the exit in time: give it up."""
        if job.answer is None:
            self._decide(self.broker.channel_lost, me, job, time.monotonic())

    def _time_out(self, job: Job, me: Any) -> Reply:
        """No reply by the deadline: CallTimeout (unless answered already), and the hub
        reads the reply still due."""
        self._expire(job, me)
        return self._answered(job)

    def _give_up(self, job: Job, me: Any) -> None:
        """The caller leaves early (Ctrl-C, a cancelled task): a leased request is sent
        all the same (a daemon lent out always gets its request), the call is cancelled
        (``cancel_mode``), and the hub reads the reply still due."""
        self._jobs.pop(job.id, None)
        if job.answer is None:
            self._decide(self.broker.cancel, me, job.client, job.id, time.monotonic())
        self._release(job)

    def _answered(self, job: Job) -> Reply:
        """The job was answered before its caller read from the channel (a cancel, a
        verdict): the daemon it was lent still gets its request and its reply is read."""
        self._release(job)
        assert job.answer is not None
        return job.answer

    def _release(self, job: Job) -> None:
        """A daemon lent out always gets its request (ours to send, or a lender's) and
        its reply is read (by the hub, once this caller is gone)."""
        if job.channel is None:
            return
        if not job.sent and job.owner_sends:
            send_request(self.hub, job)
        self.hub.adopt(job)


class DirectTransport(Route):
    """Plain calls of a ``Bridge``'s threads on the direct route."""

    def __init__(self, hub: Hub, default_timeout: float,
                 closed: Callable[[], bool] = lambda: False) -> None:
        super().__init__(hub, default_timeout, closed)
        self._local = threading.local()

    def _parking(self) -> Parking:
        parking: Parking | None = getattr(self._local, "parking", None)
        if parking is None:
            parking = self._local.parking = Parking()
        return parking

    def roundtrip(self, frame: bytes, buffers: Sequence[Any], timeout: float) -> Reply:
        """The answer to the request ``frame``: a REPLY frame and its buffer frames."""
        me = self._parking()
        with protected():
            job = self._check_out(frame, buffers, me)
            try:
                reply = self._await(job, me)
            except BaseException:  # Ctrl-C, a failed send: never leave the call running or leased
                self._give_up(job, me)
                raise
            self._jobs.pop(job.id, None)
            return reply

    def _await(self, job: Job, me: Parking) -> Reply:
        while True:
            if job.answer is not None:
                return self._answered(job)
            if job.channel is not None and (job.sent or job.owner_sends):
                # leased (and sent, or ours to send): the daemon is ours until it answers
                if not job.sent and not send_request(self.hub, job, len(self._jobs) == 1):
                    continue  # it never left: queued again, or answered
                return self._read(job, me)
            remaining = job.deadline - time.monotonic()
            if remaining <= 0:
                self._expire(job, me)
                continue
            self._check_closed()
            with waiting():
                me.wait(min(remaining, SLICE))

    def _read(self, job: Job, me: Parking) -> Reply:
        """The reply on the channel, reported to the broker, which answers the job (or
        drops it as late, if the job was answered meanwhile: the daemon is free either way).

        The deadline is judged by the kernel's clock: a reply that reached the channel
        before the slice ending at the deadline timed out is the call's, however late this
        thread gets to run (a host holding the GIL); none there by then is CallTimeout."""
        channel = job.channel
        if len(self._jobs) == 1:  # the only call out: wait for a quick reply awake
            try:
                message = channel.recv_soon(SPIN)
            except EOFError:
                return self._after_exit(job, me)
            if message is not None and self._check_in(job, message[0], message[1], me):
                assert job.answer is not None
                return job.answer
        while True:
            remaining = job.deadline - time.monotonic()
            if remaining <= 0:  # starved past the deadline in an earlier slice: a reply may be in
                try:
                    frame, buffers = channel.recv(_DONTWAIT)
                except BlockingIOError:
                    return self._time_out(job, me)
                except EOFError:
                    return self._after_exit(job, me)
            else:
                final = remaining <= SLICE
                channel.recv_timeout(remaining if final else SLICE)
                try:
                    frame, buffers = channel.recv()  # Ctrl-C waits for the slice's end
                except TimeoutError:
                    if final:
                        return self._time_out(job, me)
                    if job.answer is not None:  # cancelled (or judged) by another thread
                        return self._answered(job)
                    checkpoint()
                    self._check_closed()
                    continue
                except EOFError:
                    return self._after_exit(job, me)
            if self._check_in(job, frame, buffers, me):
                assert job.answer is not None  # answered now, or before (then dropped as late)
                return job.answer

    def _after_exit(self, job: Job, me: Parking) -> Reply:
        """The channel closed: the daemon is gone. The hub reports its exit (WorkerLost,
        naming how it died) within moments; if it does not, the daemon is given up here."""
        give_up = time.monotonic() + EXIT_WAIT
        while job.answer is None and time.monotonic() < give_up:
            with waiting():
                me.wait(give_up - time.monotonic())
        self._channel_lost(job, me)
        assert job.answer is not None
        return job.answer


def _bytes_view(buffer: Any) -> Any:
    """A buffer frame whose len() is its size in bytes, as the broker counts it."""
    try:
        return memoryview(buffer).cast("B")
    except TypeError:  # not C-contiguous: a copy is what would be sent anyway
        return bytes(memoryview(buffer))
