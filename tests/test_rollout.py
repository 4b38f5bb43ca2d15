"""Live control in the broker, event by event with a fake clock: scale up and down, and a
reload's rolling replacement (zbridge/rollout.py). Pure: no process, no socket."""

from __future__ import annotations

import pytest

from zbridge import errors
from zbridge.actions import Spawn, ToClient, ToDaemon
from zbridge.broker import Broker
from zbridge.protocol import Kind, decode_reply_body, read_header
from zbridge.rollout import leavers
from zbridge.state import Daemon, DaemonState

from test_broker import error_of, make, ready, reply, request


def pool(n: int, **kw) -> Broker:
    """A broker with ``n`` daemons up (w1..wn), every one idle."""
    b = make(workers=n, prewarm=True, **kw)
    assert [a.daemon for a in b.start(0.0) if isinstance(a, Spawn)] == [b"w%d" % i for i in range(1, n + 1)]
    for i in range(1, n + 1):
        ready(b, b"w%d" % i)
    return b


def busy(b: Broker, ident: bytes, id: int) -> None:
    """Give ``ident`` call ``id`` (the only idle daemon must be that one)."""
    (send,) = [a for a in request(b, id=id) if isinstance(a, ToDaemon)]
    assert send.daemon == ident


def disconnected(actions) -> list[bytes]:
    return [a.daemon for a in actions if isinstance(a, ToDaemon) and read_header(a.frame).kind is Kind.DISCONNECT]


def spawned(actions) -> list[bytes]:
    return [a.daemon for a in actions if isinstance(a, Spawn)]


def answer(actions, client=b"op") -> dict:
    (out,) = [a for a in actions if isinstance(a, ToClient) and a.client == client]
    return decode_reply_body(out.frame)


def test_scale_up_spawns_the_new_daemons_now():
    b = pool(1)
    assert spawned(b.set_workers(3, 1.0)) == [b"w2", b"w3"]
    assert b.status(1.0)["workers"] == 3


def test_scale_down_lets_idle_extras_go_at_once_and_busy_ones_after_their_call():
    b = pool(4)
    busy(b, b"w1", 1)
    busy(b, b"w2", 2)
    busy(b, b"w3", 3)  # w4 idle
    actions = b.set_workers(1, 1.0)
    # the idle one goes now; two busy ones retire, and no busy daemon is told to go
    assert disconnected(actions) == [b"w4"] and not spawned(actions)
    assert sorted(d.name for d in b.daemons.values() if d.retiring) == ["w2", "w3", "w4"]
    assert b.status(1.0)["workers"] == 1
    gone = []
    for ident, id in ((b"w1", 1), (b"w2", 2), (b"w3", 3)):
        out = reply(b, ident, id, 2.0)
        assert decode_reply_body(out[0].frame) == {"result": "ok"}  # each call's answer comes first
        gone += disconnected(out)
    assert gone == [b"w2", b"w3"]  # the last spawned go, w1 stays
    for ident in [b"w4", *gone]:
        b.daemon_exited(ident, 2.2, "exited with code 0")
    assert len(b.daemons) == 1 and b.exits["scaled"] == 3
    assert not spawned(b.tick(2.5))


def test_scale_down_prefers_daemons_not_serving_yet():
    b = pool(2)
    spawned(b.set_workers(4, 1.0))  # w3, w4 starting
    assert disconnected(b.set_workers(2, 1.5)) == []
    assert sorted(d.name for d in b.daemons.values() if d.retiring) == ["w3", "w4"]
    assert disconnected(ready(b, b"w3", 2.0)) == [b"w3"]  # ready, then let go at once


def test_scaling_up_again_keeps_daemons_still_finishing_a_call():
    b = pool(2)
    busy(b, b"w1", 1)
    busy(b, b"w2", 2)
    b.set_workers(1, 1.0)
    assert spawned(b.set_workers(2, 1.5)) == []  # the retiring one stays instead
    assert not any(d.retiring for d in b.daemons.values())
    assert disconnected(reply(b, b"w1", 1, 2.0) + reply(b, b"w2", 2, 2.0)) == []


def test_scale_refuses_zero_without_remote_daemons_and_a_closing_pool():
    with pytest.raises(errors.InvalidParams, match="at least 1"):
        pool(1).set_workers(0, 1.0)
    b = pool(1)
    b.close()
    with pytest.raises(errors.PoolUnavailable, match="shutting down"):
        b.set_workers(2, 1.0)


def test_reload_checks_one_new_daemon_then_replaces_the_old_ones_one_at_a_time():
    b = pool(2)
    busy(b, b"w1", 1)  # w2 idle
    actions = b.reload(b"op", 7, 1.0)
    assert spawned(actions) == [b"w3"] and not disconnected(actions)  # the old ones stay for now
    assert b.status(1.0)["reload"]["phase"] == "checking"
    # the new daemon is up: the idle old one goes first, the busy one is left alone
    assert disconnected(ready(b, b"w3", 2.0)) == [b"w2"]
    assert b.daemons[b"w1"].state is DaemonState.BUSY and not b.daemons[b"w1"].retiring
    # w2 gone: next is w1, busy: a replacement starts, w1 keeps its call
    actions = b.daemon_exited(b"w2", 2.5, "exited with code 0")
    assert spawned(actions) == [b"w4"] and not disconnected(actions)
    assert b.daemons[b"w1"].retiring
    ready(b, b"w4", 3.0)
    out = reply(b, b"w1", 1, 3.5)  # its call is answered, then it goes
    assert isinstance(out[0], ToClient) and decode_reply_body(out[0].frame) == {"result": "ok"}
    assert disconnected(out) == [b"w1"]
    done = b.daemon_exited(b"w1", 4.0, "exited with code 0")
    assert answer(done) == {"result": {"generation": 1, "replaced": 2, "took_s": 3.0}}
    assert sorted(d.name for d in b.daemons.values()) == ["w3", "w4"]
    assert all(d.generation == 1 for d in b.daemons.values()) and b.status(4.0)["reload"] is None
    assert b.exits["reloaded"] == 2 and b.exits["crashed"] == 0


def test_a_reload_whose_new_daemon_cannot_start_is_aborted_and_the_old_daemons_serve_on():
    b = pool(2)
    b.reload(b"op", 7, 1.0)
    actions = b.daemon_exited(b"w3", 1.5, "exited with code 3",
                              3, "tools failed to load: SyntaxError: invalid syntax (/app/t.py, line 3)")
    err = error_of([a for a in actions if isinstance(a, ToClient)][0])
    assert isinstance(err, errors.ReloadFailed) and err.data["cause"] == "load_failed"
    assert "SyntaxError: invalid syntax (/app/t.py, line 3)" in err.message and "keep serving" in err.message
    assert not any(d.retiring for d in b.daemons.values()) and b.reloading is None
    assert sorted(d.name for d in b.daemons.values()) == ["w1", "w2"]
    busy(b, b"w1", 1)  # still served


def test_a_reload_asked_for_during_another_starts_over_and_answers_both():
    b = pool(2)
    b.reload(b"op", 1, 1.0)
    assert disconnected(ready(b, b"w3", 1.2)) == [b"w2"]  # rolling: w2 goes first
    assert spawned(b.reload(b"op2", 2, 1.3)) == [b"w4"]  # the code changed again: w3 is old too
    left = {b"w1", b"w3"}
    actions = ready(b, b"w4", 1.4) + b.daemon_exited(b"w2", 1.5, "exited with code 0")
    now = 1.5
    while left:
        (going,) = disconnected(actions)
        left.remove(going)
        now += 0.1
        actions = b.daemon_exited(going, now, "exited with code 0")
        actions += ready(b, next(iter(spawned(actions)), b"w4"), now) if spawned(actions) else []
    assert answer(actions, b"op")["result"]["generation"] == 2
    assert answer(actions, b"op2")["result"]["generation"] == 2
    assert all(d.generation == 2 for d in b.daemons.values()) and len(b.daemons) == 2


def test_closing_answers_a_reload_in_progress():
    b = pool(1)
    b.reload(b"op", 1, 1.0)
    assert isinstance(error_of(answer_action(b.close(), b"op")), errors.PoolUnavailable)


def answer_action(actions, client):
    (out,) = [a for a in actions if isinstance(a, ToClient) and a.client == client]
    return out


def test_leavers_go_in_order_starting_stale_idle_busy():
    states = [DaemonState.BUSY, DaemonState.IDLE, DaemonState.STARTING, DaemonState.STALE]
    daemons = [Daemon(b"w%d" % i, 0.0, name=f"w{i}", state=s) for i, s in enumerate(states)]
    assert [d.state for d in leavers(daemons, 3)] == [DaemonState.STARTING, DaemonState.STALE,
                                                      DaemonState.IDLE]
    assert leavers(daemons, 0) == []
