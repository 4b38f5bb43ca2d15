"""The embedded direct route (zbridge/direct.py): a Bridge's plain calls borrow an idle
daemon and talk to it over its own channel, and the broker, under the pool's lock, still
decides everything. These are the route's own races; the behavioural suites (robustness,
lifecycle, health, cancel, chaos...) run against it too, as Bridge's default; the hot
path's hazards (signals, forks, re-entry, a dead hub thread) are in test_hot_path.py."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import wait

import pytest

import zbridge
from helpers import wait_until


def _status_of(bridge):
    status = bridge.status()
    return status["counters"], status["daemons"]


def _daemon_pids(bridge) -> set[int]:
    return {d["pid"] for d in bridge.status()["daemons"]}


def _requests_through_the_hub(bridge) -> list[bytes]:
    """Record the REQUEST frames the hub thread sends to daemons from now on."""
    from zbridge.protocol import Kind
    hub, sent = bridge.hub, []
    original = hub._send

    def send(sock, ident, frame, role, extra=()):
        if role == "daemon" and frame[3] == Kind.REQUEST:
            sent.append(bytes(frame))
        original(sock, ident, frame, role, extra)

    hub._send = send
    return sent


def test_plain_calls_take_the_direct_route(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, workers=1)
    assert bridge.call("echo", [0]) == 0
    through_hub = _requests_through_the_hub(bridge)
    assert [bridge.call("echo", [i]) for i in range(20)] == list(range(20))
    assert through_hub == []  # every request went on the daemon's channel
    (daemon,) = bridge.hub.broker.daemons.values()
    assert daemon.channel is not None
    assert bridge.status()["counters"]["completed"] == 21  # the broker still saw each call
    assert list(bridge.stream("count", [3])) == [0, 1, 2]  # streams keep the hub's route


def test_direct_off_routes_through_the_hub(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, workers=1, direct=False)
    assert bridge.call("echo", ["x"]) == "x"
    through_hub = _requests_through_the_hub(bridge)
    assert bridge.call("echo", ["y"]) == "y"
    assert len(through_hub) == 1
    assert all(d.channel is None for d in bridge.hub.broker.daemons.values())


def test_daemon_killed_between_pick_and_receive(bridge_factory, basic_tools):
    """The daemon is stopped before it can read the request, then killed: the caller gets
    WorkerLost at once (from the hub's exit event), not at its deadline; the next call runs
    on a fresh daemon."""
    bridge = bridge_factory(basic_tools, workers=1, heartbeat_interval=5.0)
    first = bridge.call("pid")
    os.kill(first, signal.SIGSTOP)
    future = bridge.submit("echo", ["never read"], timeout=60.0)
    assert wait_until(lambda: bridge.status()["daemons"][0]["current_call"] is not None)
    started = time.monotonic()
    os.kill(first, signal.SIGKILL)
    with pytest.raises(zbridge.WorkerLost):
        future.result(timeout=30)
    assert time.monotonic() - started < 30  # long before the 60 s deadline
    assert bridge.call("pid") != first


def test_reply_racing_its_deadline(bridge_factory, basic_tools):
    """Calls whose run time straddles their deadline: each gets exactly one answer (its
    result or CallTimeout), late replies free the daemon (no kill), the daemon stays warm."""
    bridge = bridge_factory(basic_tools, workers=1, kill_grace=30.0)
    pid = bridge.call("pid")
    outcomes = {"ok": 0, "timeout": 0}
    for i in range(60):
        seconds = 0.02 + (i % 5) * 0.004  # around the 0.028 s timeout
        try:
            result = bridge.call("span", [seconds, i], timeout=0.028)
            assert result["nonce"] == i
            outcomes["ok"] += 1
        except zbridge.CallTimeout:
            outcomes["timeout"] += 1
    assert sum(outcomes.values()) == 60 and outcomes["timeout"] > 0  # 0.036 s never fits
    # every late reply came back to the hub thread and freed the daemon: no kill, same pid
    assert wait_until(lambda: bridge.status()["daemons"][0]["state"] == "idle")
    counters, daemons = _status_of(bridge)
    assert counters["kills"] == 0 and daemons[0]["pid"] == pid
    assert counters["timeouts"] == outcomes["timeout"]
    assert bridge.call("echo", ["after"]) == "after"


@pytest.mark.parametrize("mode", ["interrupt", "abandon"])
def test_cancel_racing_completion(bridge_factory, basic_tools, mode):
    """Futures cancelled at every moment of their short calls: each ends once (a result
    or Cancelled), nothing hangs, and the daemons stay warm."""
    bridge = bridge_factory(basic_tools, workers=2, cancel_mode=mode, kill_grace=30.0)
    bridge.wait_ready()
    pids = _daemon_pids(bridge)
    futures = []
    for i in range(80):
        future = bridge.submit("span", [0.002 * (i % 4), i], timeout=10.0)
        time.sleep(0.001 * (i % 7))
        future.cancel()
        futures.append((i, future))
    done, pending = wait([f for _, f in futures], timeout=60)
    assert not pending
    for i, future in futures:
        if future.cancelled():
            continue
        try:
            assert future.result()["nonce"] == i
        except zbridge.Cancelled:
            pass
    assert wait_until(lambda: all(d["state"] == "idle" for d in bridge.status()["daemons"]))
    counters, _ = _status_of(bridge)
    assert counters["kills"] == 0 and _daemon_pids(bridge) == pids
    assert bridge.call("echo", [1]) == 1


def echo_from_threads(bridge, threads: int, calls: int) -> list[object]:
    """``threads`` threads each make ``calls`` echo calls of their own (thread, i) pairs;
    returns what went wrong (wrong results, errors)."""
    wrong: list[object] = []

    def caller(t: int) -> None:
        try:
            for i in range(calls):
                got = bridge.call("echo", [[t, i]])
                if got != [t, i]:
                    wrong.append((t, i, got))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            wrong.append(exc)

    running = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    return wrong


def test_many_threads_no_misrouted_reply(bridge_factory, basic_tools):
    """16 threads x 2,000 calls over 2 daemons: every reply is its own call's."""
    bridge = bridge_factory(basic_tools, workers=2)
    bridge.wait_ready()
    assert echo_from_threads(bridge, 16, 2000) == []
    counters, _ = _status_of(bridge)
    assert counters["completed"] >= 32_000 and counters["lost"] == 0


def test_queued_direct_calls_get_leases_in_order(bridge_factory, basic_tools):
    """More callers than daemons: queued calls wait in the broker and are handed a daemon
    when one frees up; all finish, and max_queue still bounds the wait."""
    bridge = bridge_factory(basic_tools, workers=1, max_queue=2)
    bridge.wait_ready()
    futures = [bridge.submit("span", [0.2, i]) for i in range(3)]
    time.sleep(0.05)
    with pytest.raises(zbridge.Overloaded):
        bridge.call("echo", [1])
    assert [f.result(timeout=30)["nonce"] for f in futures] == [0, 1, 2]


def test_a_reply_that_arrived_in_time_survives_a_gil_stall(bridge_factory):
    """Replies before verdicts on the direct path: the reply reached the caller's socket
    before the deadline, then the host held the GIL past it; the caller gets the result."""
    from test_robustness import FAST_BEATS, ROUGH, hold_gil
    bridge = bridge_factory(ROUGH, **FAST_BEATS)
    pid = bridge.call("pid")
    future = bridge.submit("nap", [0.3], timeout=1.0)
    assert wait_until(lambda: bridge.status()["daemons"][0]["state"] == "busy")
    hold_gil(1.8)  # the reply arrives at ~0.3 s; the deadline passes during the stall
    assert future.result(timeout=10) == pid
    assert bridge.status()["counters"]["timeouts"] == 0


def test_a_cancel_that_reaches_the_daemon_before_its_call_keeps_it_warm(bridge_factory, basic_tools, tmp_path):
    """The daemon is stopped while a call is dispatched to it and then cancelled: on resume
    the CANCEL (heartbeat thread) and the request (main thread) race. Whichever wins, the
    call ends Cancelled and the daemon is free at once, not after the 60 s tool or a kill."""
    bridge = bridge_factory(basic_tools, workers=1, heartbeat_interval=5.0, kill_grace=60.0)
    pid = bridge.call("pid")
    os.kill(pid, signal.SIGSTOP)
    try:
        future = bridge.submit("interruptible", [60, str(tmp_path / "m")], timeout=120)
        assert wait_until(lambda: bridge.status()["daemons"][0]["current_call"] is not None)
        assert future.cancel()
        with pytest.raises(zbridge.Cancelled):
            future.result(timeout=10)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert bridge.call("pid", timeout=20) == pid


def test_large_messages_travel_on_the_channel_intact(bridge_factory, basic_tools):
    """Large requests and replies (in band and as buffer frames) go on the channel like
    small ones, whole and in order; later small calls are unaffected."""
    import numpy
    bridge = bridge_factory(basic_tools, workers=1)
    through_hub = _requests_through_the_hub(bridge)
    payload = os.urandom(2 * 1024 * 1024)
    assert bridge.call("echo", [payload]) == payload  # large request and reply, out of band
    assert len(bridge.call("big", [3 * 1024 * 1024])) == 3 * 1024 * 1024  # large in-band reply
    arrays = [numpy.arange(i * 50_000, dtype=numpy.int64) for i in range(1, 9)]
    assert all((a == b).all() for a, b in zip(bridge.call("echo", [arrays]), arrays))
    assert bridge.call("echo", ["small"]) == "small"
    assert through_hub == []
    counters = bridge.status()["counters"]
    assert counters["completed"] == 4 and counters["kills"] == 0


def test_queued_callers_are_lent_daemons_in_order_of_arrival(bridge_factory, basic_tools, tmp_path):
    """One daemon, a long call, then callers queued one by one: each is lent the daemon in
    turn, in order of arrival, its request sent by the thread that checked the daemon in."""
    bridge = bridge_factory(basic_tools, workers=1)
    bridge.wait_ready()
    log = tmp_path / "order"
    first = bridge.submit("span", [0.3, "first"])
    assert wait_until(lambda: bridge.status()["daemons"][0]["state"] == "busy")
    futures = []
    for i in range(5):
        futures.append(bridge.submit("record", [str(log), str(i)]))
        assert wait_until(lambda: bridge.status()["queue_depth"] == i + 1)
    assert [f.result(timeout=30) for f in futures] == [str(i) for i in range(5)]
    assert first.result(timeout=30)["nonce"] == "first"
    assert log.read_text().split() == [str(i) for i in range(5)]  # the order they ran in


def test_a_channel_that_refuses_the_request_sends_the_call_to_another_daemon(bridge_factory, basic_tools):
    """The request never left (the daemon's channel refused it): the broker puts the call
    back in front of the queue, gives up that daemon, and another one serves it."""
    import socket as sockets
    for workers in (2, 1):  # another daemon idle; none left, so the call waits for a new one
        bridge = bridge_factory(basic_tools, workers=workers, prewarm=True)
        bridge.wait_ready()
        broken = next(iter(bridge.hub.broker.daemons.values()))
        broken.channel.sock.shutdown(sockets.SHUT_WR)  # every send on it now fails
        assert [bridge.call("echo", [i], timeout=30) for i in range(6)] == list(range(6))
        counters = bridge.status()["counters"]
        assert counters["lost"] == 0 and counters["completed"] == 6 and counters["kills"] >= 1
