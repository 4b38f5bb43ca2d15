"""The routing state machine, driven event by event with a fake clock."""

from __future__ import annotations

import random

from zbridge import errors
from zbridge.broker import Broker
from zbridge.config import Settings
from zbridge.protocol import Header, Kind, decode_reply_body, encode_request, encode_result, read_header


def make(**kw) -> Broker:
    return Broker(Settings(**kw), rng=random.Random(0), new_ident=lambda n: b"w%d" % n)


def request(broker, client=b"c", id=1, now=0.0, timeout_ms=0):
    frame = encode_request(id, "t", [id], timeout_ms=timeout_ms)
    return broker.submit(client, read_header(frame), frame, now)


def ready(broker, ident, now=0.0):
    return broker.daemon_ready(ident, {"pid": 100, "tools": ["t"]}, now)


def reply(broker, ident, id, now=0.0):
    frame = encode_result(id, "ok")
    return broker.daemon_reply(ident, Header(Kind.REPLY, id), frame, now)


def error_of(action):
    body = decode_reply_body(action[2])
    return errors.error_from_wire(body["error"]) if "error" in body else None


def test_first_request_spawns_then_dispatches_when_ready():
    b = make()
    assert request(b) == [("spawn", b"w1")]
    (send,) = ready(b, b"w1")
    assert send[0] == "daemon" and send[1] == b"w1"
    (out,) = reply(b, b"w1", 1)
    assert out[:2] == ("client", b"c")


def test_only_idle_daemons_get_work_least_recently_used_first():
    b = make(workers=2, prewarm=True)
    assert b.start(0.0) == [("spawn", b"w1"), ("spawn", b"w2")]
    ready(b, b"w1"), ready(b, b"w2")
    assert request(b, id=1)[0][1] == b"w1"
    assert request(b, id=2)[0][1] == b"w2"
    assert request(b, id=3) == []  # both busy: queued, no spawn beyond workers
    assert b.queued == 1
    out = reply(b, b"w2", 2)
    assert out[1][:2] == ("daemon", b"w2")  # the queued call goes to the daemon that freed up


def test_queue_bound_gives_overloaded():
    b = make(max_queue=1)
    request(b, id=1)
    (out,) = request(b, id=2)
    assert isinstance(error_of(out), errors.Overloaded)


def test_expired_queued_request_is_answered_and_never_dispatched():
    b = make()
    request(b, id=1, timeout_ms=100)
    (timeout,) = [a for a in b.tick(0.2) if a[0] == "client"]
    assert isinstance(error_of(timeout), errors.CallTimeout)
    assert ready(b, b"w1", now=0.3) == []


def test_running_timeout_then_late_reply_is_dropped_and_daemon_killed_after_grace():
    b = make(kill_grace=1.0)
    request(b, id=1, timeout_ms=100)
    ready(b, b"w1")
    (out,) = [a for a in b.tick(0.2) if a[0] == "client"]
    assert isinstance(error_of(out), errors.CallTimeout)
    assert b.tick(0.5) == []
    kill = b.tick(1.3)
    assert kill and kill[0][:2] == ("kill", b"w1")


def test_late_reply_within_grace_frees_the_daemon_without_delivery():
    b = make(kill_grace=1.0)
    request(b, id=1, timeout_ms=100)
    ready(b, b"w1")
    b.tick(0.2)
    assert reply(b, b"w1", 1, now=0.3) == []
    assert request(b, id=2, now=0.4)[0][:2] == ("daemon", b"w1")


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
    (lost,) = [a for a in actions if a[0] == "client"]
    assert isinstance(error_of(lost), errors.WorkerLost) and "SIGKILL" in str(error_of(lost))
    assert b.next_wakeup(20.0) is not None


def test_start_failures_back_off_then_pool_unavailable_names_the_cause():
    b = make(start_retries=3, backoff_base=0.1)
    now = 0.0
    assert request(b, id=1, now=now) == [("spawn", b"w1")]
    spawned = [b"w1"]
    for attempt in range(3):
        if attempt:
            now += b.next_wakeup(now)  # the backoff delay
            spawned += [a[1] for a in b.tick(now) if a[0] == "spawn"]
        actions = b.daemon_exited(spawned[-1], now, "ImportError: no module x (exited with code 3)")
    assert spawned == [b"w1", b"w2", b"w3"]
    (failure,) = [a for a in actions if a[0] == "client"]
    err = error_of(failure)
    assert isinstance(err, errors.PoolUnavailable) and "ImportError" in str(err)
    (refused,) = request(b, id=2, now=now)  # still inside the backoff window: no new spawn
    assert isinstance(error_of(refused), errors.PoolUnavailable)
    assert [a[0] for a in request(b, id=3, now=now + 60)] == ["spawn"]  # later, try again


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
    actions = b.daemon_unreachable(b"w1", send[2], 0.0)
    assert not [a for a in actions if a[0] == "client"]
    assert b.queued == 1


def test_spawned_daemon_ids_are_unguessable_and_unknown_ready_is_refused():
    b = Broker(Settings())
    ((_, ident),) = request(b)
    assert ident.startswith(b"w1-") and len(ident) > 8
    (out,) = b.daemon_ready(b"w1", {"pid": 1}, 0.0)  # a peer guessing the plain name
    assert out[:2] == ("daemon", b"w1") and read_header(out[2]).kind is Kind.DISCONNECT
    assert b"w1" not in b.daemons
