"""Prefetch (opt-in): one call may wait in a busy daemon's own queue. The broker's rules,
without sockets; the process-level behaviour is in test_direct.py."""

from __future__ import annotations

from test_broker import error_of, make, ready, reply, request

from zbridge import errors
from zbridge.actions import Interrupt, ToClient, ToDaemon


def sends(actions):
    return [a for a in actions if isinstance(a, ToDaemon)]


def answers(actions):
    return [a for a in actions if isinstance(a, ToClient)]


def busy_pool(**kw):
    broker = make(workers=1, prefetch=True, **kw)
    request(broker, id=1)
    assert sends(ready(broker, b"w1"))  # call 1 runs
    return broker


def test_off_by_default_a_busy_daemon_gets_nothing_more():
    broker = make(workers=1)
    request(broker, id=1)
    ready(broker, b"w1")
    assert sends(request(broker, id=2)) == []
    assert broker.queued == 1


def test_one_call_waits_in_the_busy_daemons_queue_and_starts_on_its_reply():
    broker = busy_pool()
    assert [a.frame for a in sends(request(broker, id=2))] and broker.queued == 0
    assert sends(request(broker, id=3)) == [] and broker.queued == 1  # one per daemon
    out = reply(broker, b"w1", 1, now=1.0)
    assert [error_of(a) for a in answers(out)] == [None]
    assert len(sends(out)) == 1  # call 3 takes the freed queue slot at once
    assert broker.daemons[b"w1"].job.id == 2 and broker.daemons[b"w1"].job.started == 1.0
    assert answers(reply(broker, b"w1", 2, now=2.0))
    assert answers(reply(broker, b"w1", 3, now=3.0))
    assert broker.daemons[b"w1"].state.value == "idle" and broker.running() == 0


def test_a_lost_daemon_loses_its_prefetched_call_too():
    broker = busy_pool()
    request(broker, id=2)
    out = broker.daemon_exited(b"w1", 1.0, "killed by SIGKILL")
    lost = [error_of(a) for a in answers(out)]
    assert len(lost) == 2 and all(isinstance(e, errors.WorkerLost) for e in lost)
    assert "may have started" in str(lost[1])


def test_a_prefetched_call_whose_deadline_passes_is_answered_and_then_runs_stale():
    broker = busy_pool(kill_grace=5.0, cancel_mode="interrupt")
    request(broker, id=2, timeout_ms=1000)
    out = broker.tick(2.0)
    assert [type(error_of(a)) for a in answers(out)] == [errors.CallTimeout]
    promoted = reply(broker, b"w1", 1, now=3.0)
    assert [a for a in promoted if isinstance(a, Interrupt)] == [Interrupt(b"w1", 2)]
    daemon = broker.daemons[b"w1"]
    assert daemon.state.value == "stale" and daemon.stale_id == 2 and daemon.kill_at == 8.0
    assert answers(reply(broker, b"w1", 2, now=3.5)) == []  # its late reply frees the daemon
    assert daemon.state.value == "idle"


def test_cancelling_a_prefetched_call_answers_it_and_never_kills_for_it():
    broker = busy_pool(cancel_mode="kill")
    request(broker, id=2)
    out = broker.cancel(b"c", 2, 1.0)
    assert [type(error_of(a)) for a in answers(out)] == [errors.Cancelled]
    assert broker.daemons[b"w1"].state.value == "busy"  # call 1 goes on


def test_streams_are_never_prefetched():
    broker = busy_pool()
    from zbridge.protocol import encode_request, read_header
    frame = encode_request(2, "t", [], window=4)
    assert sends(broker.submit(b"c", read_header(frame), frame, 0.0)) == []
    assert broker.queued == 1


def test_a_prefetched_call_whose_send_failed_goes_back_to_the_queue():
    broker = make(workers=2, prefetch=True)
    request(broker, id=1)
    ready(broker, b"w1")
    sent = sends(request(broker, id=2))
    assert len(sent) == 1 and sent[0].daemon == b"w1"
    broker.daemon_unreachable(b"w1", sent[0].frame, 1.0)
    assert broker.queued == 1 and broker.jobs[(b"c", 2)].state.value == "queued"


def test_the_prefetched_call_may_answer_first():
    """Requests from two callers' connections reach the daemon in any order: a reply for
    the waiting call answers it, and the call ahead of it is the one running now."""
    broker = busy_pool()
    request(broker, id=2)
    out = reply(broker, b"w1", 2, now=1.0)
    assert [error_of(a) for a in answers(out)] == [None] and answers(out)[0].frame
    daemon = broker.daemons[b"w1"]
    assert daemon.job.id == 1 and daemon.next is None and daemon.state.value == "busy"
    assert answers(reply(broker, b"w1", 1, now=2.0))
    assert daemon.state.value == "idle"

