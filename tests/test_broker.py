"""The routing state machine, driven event by event with a fake clock."""

from __future__ import annotations

import random

from zbridge import errors
from zbridge.actions import Interrupt, Kill, Note, Spawn, ToClient, ToDaemon
from zbridge.broker import Broker
from zbridge.config import Settings
from zbridge.protocol import Header, Kind, decode_reply_body, encode_request, encode_result, read_header


class Quiet:
    """A broker whose action lists leave out Notes (log records, tested in test_observe.py)."""

    def __init__(self, broker: Broker) -> None:
        self.__dict__["_b"] = broker

    def __getattr__(self, name):
        value = getattr(self._b, name)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            out = value(*args, **kwargs)
            return [a for a in out if not isinstance(a, Note)] if isinstance(out, list) else out
        return call

    def __setattr__(self, name, value):
        setattr(self._b, name, value)


def make(**kw) -> Broker:
    return Quiet(Broker(Settings(**kw), rng=random.Random(0), new_ident=lambda n: b"w%d" % n))


def request_frame(id, timeout_ms=0):
    return encode_request(id, "t", [id], timeout_ms=timeout_ms)


def request(broker, client=b"c", id=1, now=0.0, timeout_ms=0):
    frame = request_frame(id, timeout_ms)
    return broker.submit(client, read_header(frame), frame, now)


def ready(broker, ident, now=0.0):
    return broker.daemon_ready(ident, {"pid": 100, "tools": ["t"]}, now)


def reply(broker, ident, id, now=0.0):
    frame = encode_result(id, "ok")
    return broker.daemon_reply(ident, Header(Kind.REPLY, id), frame, now)


def error_of(action):
    body = decode_reply_body(action.frame)
    return errors.error_from_wire(body["error"]) if "error" in body else None


def test_first_request_spawns_then_dispatches_when_ready():
    b = make()
    assert request(b) == [Spawn(b"w1")]
    (send,) = ready(b, b"w1")
    assert isinstance(send, ToDaemon) and send.daemon == b"w1"
    (out,) = reply(b, b"w1", 1)
    assert isinstance(out, ToClient) and out.client == b"c"


def test_only_idle_daemons_get_work_least_recently_used_first():
    b = make(workers=2, prewarm=True)
    assert b.start(0.0) == [Spawn(b"w1"), Spawn(b"w2")]
    ready(b, b"w1"), ready(b, b"w2")
    assert request(b, id=1)[0].daemon == b"w1"
    assert request(b, id=2)[0].daemon == b"w2"
    assert request(b, id=3) == []  # both busy: queued, no spawn beyond workers
    assert b.queued == 1
    out = reply(b, b"w2", 2)
    assert isinstance(out[1], ToDaemon) and out[1].daemon == b"w2"  # the queued call goes to the daemon that freed up


def test_queue_bound_gives_overloaded():
    b = make(max_queue=1)
    request(b, id=1)
    (out,) = request(b, id=2)
    assert isinstance(error_of(out), errors.Overloaded)


def test_expired_queued_request_is_answered_and_never_dispatched():
    b = make()
    request(b, id=1, timeout_ms=100)
    (timeout,) = [a for a in b.tick(0.2) if isinstance(a, ToClient)]
    assert isinstance(error_of(timeout), errors.CallTimeout)
    assert ready(b, b"w1", now=0.3) == []


def test_running_timeout_then_late_reply_is_dropped_and_daemon_killed_after_grace():
    b = make(kill_grace=1.0)
    request(b, id=1, timeout_ms=100)
    ready(b, b"w1")
    (out,) = [a for a in b.tick(0.2) if isinstance(a, ToClient)]
    assert isinstance(error_of(out), errors.CallTimeout)
    assert b.tick(0.5) == []
    kill = b.tick(1.3)
    assert kill and isinstance(kill[0], Kill) and kill[0].daemon == b"w1"


def test_late_reply_within_grace_frees_the_daemon_without_delivery():
    b = make(kill_grace=1.0)
    request(b, id=1, timeout_ms=100)
    ready(b, b"w1")
    b.tick(0.2)
    assert reply(b, b"w1", 1, now=0.3) == []
    assert request(b, id=2, now=0.4)[0] == ToDaemon(b"w1", request_frame(2))


def test_reply_for_a_request_the_daemon_does_not_hold_is_dropped():
    b = make(workers=2, prewarm=True)
    b.start(0.0)
    ready(b, b"w1"), ready(b, b"w2")
    request(b, id=1)
    assert reply(b, b"w2", 1) == []        # wrong daemon
    assert reply(b, b"w1", 99) == []       # wrong id
    assert reply(b, b"intruder", 1) == []  # unknown peer
    assert len(reply(b, b"w1", 1)) == 1


def test_daemon_death_answers_worker_lost_and_respawns():
    b = make()
    request(b, id=1)
    ready(b, b"w1", now=0.0)
    actions = b.daemon_exited(b"w1", 20.0, "boom (killed by SIGKILL)")
    (lost,) = [a for a in actions if isinstance(a, ToClient)]
    assert isinstance(error_of(lost), errors.WorkerLost) and "SIGKILL" in str(error_of(lost))
    assert b.next_wakeup(20.0) is not None


def test_start_failures_back_off_then_pool_unavailable_names_the_cause():
    b = make(start_retries=3, backoff_base=0.1)
    now = 0.0
    assert request(b, id=1, now=now) == [Spawn(b"w1")]
    spawned = [b"w1"]
    for attempt in range(3):
        if attempt:
            now += b.next_wakeup(now)  # the backoff delay
            spawned += [a.daemon for a in b.tick(now) if isinstance(a, Spawn)]
        actions = b.daemon_exited(spawned[-1], now, "ImportError: no module x (exited with code 3)")
    assert spawned == [b"w1", b"w2", b"w3"]
    (failure,) = [a for a in actions if isinstance(a, ToClient)]
    err = error_of(failure)
    assert isinstance(err, errors.PoolUnavailable) and "ImportError" in str(err)
    (refused,) = request(b, id=2, now=now)  # still inside the backoff window: no new spawn
    assert isinstance(error_of(refused), errors.PoolUnavailable)
    assert [type(a) for a in request(b, id=3, now=now + 60)] == [Spawn]  # later, try again


def test_close_refuses_new_work_and_answers_queued():
    b = make()
    request(b, id=1)
    (closed,) = b.close()
    assert isinstance(error_of(closed), errors.PoolUnavailable)
    (refused,) = request(b, id=2)
    assert isinstance(error_of(refused), errors.PoolUnavailable)


def test_unreachable_daemon_requeues_the_job_it_never_received():
    b = make(workers=2)
    request(b, id=1)
    (send,) = ready(b, b"w1")
    actions = b.daemon_unreachable(b"w1", send.frame, 0.0)
    assert not [a for a in actions if isinstance(a, ToClient)]
    assert b.queued == 1


def test_spawned_daemon_ids_are_unguessable_and_unknown_ready_is_refused():
    b = Quiet(Broker(Settings()))
    (spawn,) = request(b)
    ident = spawn.daemon
    assert ident.startswith(b"w1-") and len(ident) > 8
    (out,) = b.daemon_ready(b"w1", {"pid": 1}, 0.0)  # a peer guessing the plain name
    assert isinstance(out, ToDaemon) and out.daemon == b"w1" and read_header(out.frame).kind is Kind.DISCONNECT
    assert b"w1" not in b.daemons


# --- robustness rules, on a fake clock ---------------------------------------------------

def test_a_job_cannot_be_answered_twice():
    b = make()
    request(b, id=1)
    ready(b, b"w1")
    job = b.daemons[b"w1"].job
    b._answer_error(job, errors.Cancelled("once"))
    import pytest
    with pytest.raises(AssertionError, match="answered twice"):
        b._answer_error(job, errors.Cancelled("twice"))


def test_a_silent_daemon_whose_process_runs_keeps_its_call():
    from zbridge.state import Process
    verdict = {"w1": Process.RUNNING}
    b = Broker(Settings(heartbeat_interval=1.0, heartbeat_misses=3), rng=random.Random(0),
               new_ident=lambda n: b"w%d" % n, probe=lambda ident: verdict[ident.decode()])
    request(b, id=1, timeout_ms=60_000)
    ready(b, b"w1")
    assert b.tick(10.0) == []                  # silent for 10 s, but running: busy, not dead
    assert b.status(10.0)["daemons"][0]["unresponsive"]
    verdict["w1"] = Process.FROZEN
    actions = b.tick(11.5)                     # asked again one interval later: stopped
    (lost,) = [a for a in actions if isinstance(a, ToClient)]
    assert isinstance(error_of(lost), errors.WorkerLost) and "stopped" in str(error_of(lost))
    assert any(isinstance(a, Kill) and a.hard for a in actions)


def test_a_crash_in_a_call_respawns_at_once_a_crash_before_serving_backs_off():
    b = make(backoff_base=5.0)
    request(b, id=1)
    ready(b, b"w1")
    b.daemon_exited(b"w1", 1.0, "killed by SIGKILL")
    assert b.spawn_allowed_at <= 1.0             # the call is to blame: no backoff
    b.prewarm(1.0)
    ready(b, b"w2", now=1.1)
    b.daemon_exited(b"w2", 1.2, "killed by SIGKILL")  # died idle, before serving anything
    assert b.spawn_allowed_at > 1.2 + 1.0


def test_credit_is_forwarded_only_for_items_delivered():
    from zbridge.protocol import FLAG_STREAM, encode_partial
    b = make()
    frame = encode_request(1, "t", [], window=2)
    b.submit(b"c", read_header(frame), frame, 0.0)
    ready(b, b"w1")
    assert b.client_credit(b"c", 1, 5, 0.1) == []           # nothing delivered yet
    partial = encode_partial(1, "x")
    assert b.daemon_partial(b"w1", read_header(partial), partial, 0.2)
    (credit,) = b.client_credit(b"c", 1, 5, 0.3)             # clamped to the one item
    assert isinstance(credit, ToDaemon) and credit.frame != frame
    assert b.client_credit(b"other", 1, 1, 0.4) == []        # not the owner
    assert b.jobs[(b"c", 1)].credited == 1 and read_header(frame).flags & FLAG_STREAM


def test_requests_the_protocol_refuses():
    b = make()
    request(b, id=1)
    for frame in (encode_request(0, "t"), encode_request(1, "t"),
                  encode_request(2, "t")[:4] + b"\x40" + encode_request(2, "t")[5:]):
        (out,) = b.submit(b"c", read_header(frame), frame, 0.0)
        assert isinstance(error_of(out), errors.InvalidRequest)


def test_queue_is_bounded_in_bytes():
    b = make(max_queue_bytes=1000)
    big = encode_request(1, "t", ["x" * 600])
    assert b.submit(b"c", read_header(big), big, 0.0) == [Spawn(b"w1")]
    again = encode_request(2, "t", ["x" * 600])
    (out,) = b.submit(b"c", read_header(again), again, 0.0)
    assert isinstance(error_of(out), errors.Overloaded) and "max_queue_bytes" in str(error_of(out))


def test_a_vanished_client_loses_its_queued_calls_without_replies():
    b = make()
    request(b, client=b"gone", id=1)
    request(b, client=b"gone", id=2)
    request(b, client=b"stays", id=1)
    assert b.client_gone(b"gone", 0.0) == []
    assert b.queued == 1
    (send,) = ready(b, b"w1")
    assert send.frame == request_frame(1)


def test_an_interrupted_stale_call_is_asked_again_until_it_answers():
    """A cancel may reach the daemon before the call began; the broker asks again every
    heartbeat interval while the daemon holds that stale call, and stops once it answers."""
    broker = make(workers=1, cancel_mode="interrupt", heartbeat_interval=1.0, kill_grace=10.0)
    request(broker, id=1)
    ready(broker, b"w1")
    first = [a for a in broker.cancel(b"c", 1, 0.0) if isinstance(a, Interrupt)]
    assert first == [Interrupt(b"w1", 1)]
    assert [a for a in broker.tick(0.5) if isinstance(a, Interrupt)] == []
    assert [a for a in broker.tick(1.0) if isinstance(a, Interrupt)] == [Interrupt(b"w1", 1)]
    reply(broker, b"w1", 1, now=1.5)
    assert [a for a in broker.tick(5.0) if isinstance(a, Interrupt)] == []
