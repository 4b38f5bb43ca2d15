"""The embedded direct path (zbridge/direct.py): a Bridge's plain calls go from the calling
thread straight to a daemon's own socket, and the broker, used under the hub's lock, still
decides everything. These are the direct path's own races; the behavioural suites
(robustness, lifecycle, health, cancel, chaos...) run against it too, as Bridge's default."""

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


def test_plain_calls_take_the_direct_path(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, workers=1)
    assert bridge.call("echo", [1]) == 1
    slot = bridge._direct.slot()
    assert slot.ident.startswith(b"\x00direct-")
    assert len(slot.sockets) == 1  # one DEALER, to the daemon's own ROUTER
    daemon = bridge._hub.broker.daemons[next(iter(slot.sockets))]
    assert daemon.direct and daemon.direct.startswith(f"ipc://{bridge.private_dir}/")
    assert bridge.status()["counters"]["completed"] == 1  # the broker still saw the call


def test_direct_off_routes_through_the_hub(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, workers=1, direct=False)
    assert bridge.call("echo", ["x"]) == "x"
    assert bridge._direct is None
    assert bridge._hub.broker.daemons and all(d.direct is None for d in bridge._hub.broker.daemons.values())


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


def test_caller_thread_ends_with_its_slot(bridge_factory, basic_tools):
    """A thread's direct slot (sockets, pipe) goes when the thread has ended."""
    bridge = bridge_factory(basic_tools, workers=1)
    thread = threading.Thread(target=lambda: bridge.call("echo", [1]))
    thread.start()
    thread.join()
    bridge.call("echo", [2])  # from another thread: slots of ended threads are pruned
    slots = bridge._hub.directory.slots
    assert all(slot.alive() for slot in slots.values())


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


@pytest.mark.parametrize("direct", [True, False])
def test_prefetch_keeps_every_answer_its_own(bridge_factory, basic_tools, direct):
    """prefetch=True: a call may wait in a busy daemon's queue; 6 threads over 2 daemons
    still get their own results, through the direct path and through the hub thread."""
    bridge = bridge_factory(basic_tools, workers=2, prefetch=True, direct=direct)
    bridge.wait_ready()
    assert echo_from_threads(bridge, 6, 300) == []
    assert bridge.status()["counters"]["completed"] >= 1800


def test_prefetch_a_lost_daemon_loses_the_waiting_call_too(bridge_factory, basic_tools):
    """The documented failure rule: the call waiting in a dying daemon's queue gets
    WorkerLost (it may have started), and the pool serves the next call."""
    bridge = bridge_factory(basic_tools, workers=1, prefetch=True)
    pid = bridge.call("pid")
    running = bridge.submit("span", [30.0, "a"], timeout=60)
    assert wait_until(lambda: bridge.status()["daemons"][0]["current_call"] is not None)
    waiting = bridge.submit("echo", ["b"], timeout=60)
    assert wait_until(lambda: bridge.status()["queue_depth"] == 0 and bridge._hub.broker.daemons
                      and next(iter(bridge._hub.broker.daemons.values())).next is not None)
    os.kill(pid, signal.SIGKILL)
    for future in (running, waiting):
        with pytest.raises(zbridge.WorkerLost):
            future.result(timeout=30)
    assert bridge.call("pid") != pid


def test_large_messages_go_through_the_hub_zero_copy(bridge_factory, basic_tools):
    """Above framing.STREAM_MAX a request (or a reply) travels through the hub's zmq
    sockets instead of the direct Unix socket; results are the same and later small calls
    go direct again."""
    bridge = bridge_factory(basic_tools, workers=1)
    payload = os.urandom(2 * 1024 * 1024)
    assert bridge.call("echo", [payload]) == payload  # large request (and reply)
    assert len(bridge.call("big", [3 * 1024 * 1024])) == 3 * 1024 * 1024  # small request, large reply
    assert bridge.call("echo", ["small"]) == "small"
    assert bridge._direct.slot().sockets  # the direct connection is (again) in use
    counters = bridge.status()["counters"]
    assert counters["completed"] == 3 and counters["kills"] == 0
