"""The lean hub loop (issue 14, part 2): timers judged only when one may be due, one message
per socket per wake-up, the broker's path for a call an idle daemon takes at once.

Behaviour only: no timing thresholds here (timings live in bench/)."""

from __future__ import annotations

import concurrent.futures
import random
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import zbridge
from zbridge.actions import Action, Note, ToClient, ToDaemon
from zbridge.broker import Broker
from zbridge.config import Settings
from zbridge.hub import REAP_INTERVAL, Hub
from zbridge.errors import InvalidParams
from zbridge.protocol import (FLAG_RETIRE, Header, Kind, add_flags, encode_error, encode_request, encode_result,
                              peek_error_code, peek_method, read_header, without_flags)
from zbridge.state import DaemonState, JobState

from helpers import TOOLSETS, served, wait_until

BASIC = str(TOOLSETS / "basic.py")


def broker(**kw: Any) -> Broker:
    b = Broker(Settings(**kw), rng=random.Random(0), new_ident=lambda n: b"w%d" % n)
    b.start(0.0)
    return b


def submit(b: Broker, id: int, now: float, timeout_ms: int = 0) -> list[Action]:
    frame = encode_request(id, "t", [id], timeout_ms=timeout_ms)
    return [a for a in b.submit(b"c", read_header(frame), frame, now) if not isinstance(a, Note)]


def reply(b: Broker, ident: bytes, id: int, now: float) -> list[Action]:
    out = b.daemon_reply(ident, Header(Kind.REPLY, id), encode_result(id, "ok"), now)
    return [a for a in out if not isinstance(a, Note)]


# --- the broker's hot path (pure) -------------------------------------------------------

def test_a_call_an_idle_daemon_takes_skips_the_queue_and_is_answered_once() -> None:
    b = broker(workers=1, prewarm=True)
    b.daemon_ready(b"w1", {"pid": 1, "tools": ["t"]}, 0.0)
    (send,) = submit(b, 1, 1.0)
    assert isinstance(send, ToDaemon) and send.daemon == b"w1"
    job = b.jobs[(b"c", 1)]
    assert job.state is JobState.RUNNING and b.queued == 0 and not b.queue
    assert b.daemons[b"w1"].state is DaemonState.BUSY
    (answer,) = reply(b, b"w1", 1, 1.5)
    assert isinstance(answer, ToClient) and answer.client == b"c"
    assert b.counters["accepted"] == b.counters["completed"] == 1
    assert b.tools.get("t").calls == 1 and b.tools.get("t").run.count == 1
    with pytest.raises(AssertionError, match="answered twice"):
        b._answer(job, answer.frame)


def test_the_queued_path_still_dispatches_in_order_when_the_daemon_frees_up() -> None:
    b = broker(workers=1, prewarm=True)
    b.daemon_ready(b"w1", {"pid": 1, "tools": ["t"]}, 0.0)
    submit(b, 1, 1.0)
    assert submit(b, 2, 1.0) == [] and submit(b, 3, 1.0) == []
    assert b.queued == 2
    answer, send = reply(b, b"w1", 1, 2.0)
    assert isinstance(answer, ToClient) and isinstance(send, ToDaemon)
    assert b.daemons[b"w1"].job is b.jobs[(b"c", 2)]
    assert b.queued == 1


def test_calls_answered_while_queued_do_not_stay_in_the_queue() -> None:
    b = broker(workers=1, prewarm=True)
    b.daemon_ready(b"w1", {"pid": 1, "tools": ["t"]}, 0.0)
    submit(b, 1, 1.0)
    submit(b, 2, 1.0)
    b.cancel(b"c", 2, 1.1)  # answered (Cancelled) while it waited
    assert b.queued == 0 and len(b.queue) == 1
    reply(b, b"w1", 1, 1.2)
    (send,) = submit(b, 3, 1.3)  # straight to the idle daemon
    assert isinstance(send, ToDaemon)
    assert not b.queue  # the cancelled call's frame is not kept alive


def test_a_daemon_being_stopped_has_no_timer() -> None:
    b = broker(workers=1, prewarm=True, kill_grace=1.0)
    b.daemon_ready(b"w1", {"pid": 1, "tools": ["t"]}, 0.0)
    submit(b, 1, 0.0, timeout_ms=100)
    b.tick(0.2)  # the call times out; the daemon still runs it (stale)
    assert b.daemons[b"w1"].state.value == "stale"
    b.tick(1.3)  # past the grace: it is killed, a replacement starts
    assert b.daemons[b"w1"].state.value == "stopping"
    wait = b.next_wakeup(1.3)
    assert wait is not None and wait > 0  # the old kill_at no longer asks for a tick at once


def test_no_idle_timer_when_idle_action_is_none() -> None:
    b = broker(workers=1, prewarm=True, idle_timeout=1.0, idle_action="none")
    b.daemon_ready(b"w1", {"pid": 1, "tools": ["t"]}, 0.0)
    b.daemon_beat(b"w1", {}, 2.0)
    b.tick(2.0)
    wait = b.next_wakeup(2.0)
    assert wait is not None and wait > 0  # the next heartbeat verdict, not the idle timer


def test_peeks_read_a_memoryview_as_they_read_bytes() -> None:
    """The hub hands the broker a large frame as a memoryview (no copy)."""
    request = encode_request(1, "some_tool", ["x" * 70_000])
    error = encode_error(1, InvalidParams("y" * 70_000))
    result = add_flags(encode_result(1, "z" * 70_000), FLAG_RETIRE)
    assert peek_method(memoryview(request)) == peek_method(request) == "some_tool"
    assert peek_error_code(memoryview(error)) == peek_error_code(error) == InvalidParams.code
    assert peek_error_code(memoryview(result)) is None
    assert without_flags(memoryview(result), FLAG_RETIRE) == without_flags(result, FLAG_RETIRE)
    assert read_header(without_flags(memoryview(result), FLAG_RETIRE)).flags == 0


# --- the hub's timer (real sockets, no loop) --------------------------------------------

@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    # no local daemons: a request waits in the queue and nothing is spawned
    h = Hub(Settings(workers=0), [BASIC], frontend=f"ipc://{tmp_path / 'hub.sock'}")
    try:
        yield h
    finally:
        h._shutdown()


def test_a_request_deadline_lowers_the_hub_timer_at_once(hub: Hub) -> None:
    now = time.monotonic()
    hub._next_timer = now + REAP_INTERVAL
    frame = encode_request(1, "echo", [1], timeout_ms=200)
    hub._on_client(b"c", frame, now)
    assert hub.broker.queued == 1
    assert hub._next_timer <= now + 0.2
    frame = encode_request(2, "echo", [2], timeout_ms=60_000)
    hub._on_client(b"c", frame, now)
    assert hub._next_timer <= now + 0.2  # a later deadline never raises it


def test_a_judgement_rearms_the_timer_no_later_than_the_reap_interval(hub: Hub) -> None:
    now = hub._judge_time()
    assert now < hub._next_timer <= now + REAP_INTERVAL
    hub._on_client(b"c", encode_request(1, "echo", [1], timeout_ms=100), now)
    assert hub._next_timer <= now + 0.1


def test_rarer_client_messages_make_the_hub_judge_at_once(hub: Hub) -> None:
    now = hub._judge_time()
    hub._on_client(b"c", zbridge.protocol.encode_cancel(7), now)
    assert hub._next_timer == now


# --- end to end through `zbridge serve` -------------------------------------------------

def test_many_callers_through_a_served_hub_get_their_own_answers(tmp_path: Path) -> None:
    with served(tmp_path, "--tools", BASIC, "--workers", "2", "--prewarm") as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:
            def calls(n: int) -> list[int]:
                return [client.call("add", [n, i]) for i in range(40)]
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                results = list(pool.map(calls, range(8)))
            assert results == [[n + i for i in range(40)] for n in range(8)]
            counters = client.status()["counters"]
            assert counters["accepted"] == counters["completed"] == 8 * 40


def test_large_in_band_values_pass_the_hub_uncopied_and_intact(tmp_path: Path) -> None:
    big = "".join(chr(0x41 + i % 26) for i in range(300_000))  # in the body, not a buffer frame
    with served(tmp_path, "--tools", BASIC, "--workers", "1", "--prewarm") as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:
            assert client.call("echo", [big]) == big
            with pytest.raises(zbridge.BridgeError, match="AAAB"):
                client.call("boom", ["AAAB" * 50_000])
            tools = client.status()["tools"]
            assert tools["echo"]["calls"] == 1 and tools["boom"]["errors"]
            assert client.call("echo", [1]) == 1


def test_a_short_deadline_still_times_out_and_the_hub_keeps_serving(tmp_path: Path) -> None:
    with served(tmp_path, "--tools", BASIC, "--workers", "1", "--prewarm",
                "--kill-grace", "0.2") as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False, retries=0) as client:
            assert client.call("echo", [1]) == 1
            with pytest.raises(zbridge.CallTimeout):
                client.call("span", [30], timeout=0.2)
            assert client.call("echo", [2], timeout=30) == 2  # a fresh daemon took over
            assert client.status()["counters"]["timeouts"] == 1


def test_an_idle_daemon_is_let_go_after_a_reply(tmp_path: Path) -> None:
    with served(tmp_path, "--tools", BASIC, "--workers", "1", "--idle-timeout", "0.3",
                "--idle-action", "stop") as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:
            assert client.call("echo", [1]) == 1
            assert wait_until(lambda: client.status()["exits"]["idle"] == 1, timeout=15)
            assert client.call("echo", [2]) == 2  # started again lazily
