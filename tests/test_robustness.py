"""The hub never wedges: slow peers, GIL stalls, crash loops, stalled streams, floods.

Each test reproduces a way real users broke an earlier hub, with real processes and sockets.
"""

from __future__ import annotations

import asyncio
import ctypes
import time

import pytest
import zmq

import zbridge
from helpers import (TOOLSETS, PeakSampler, processes_matching, raw_dealer, served, status_request, stop,
                     wait_until)
from zbridge import protocol
from zbridge.protocol import Kind

ROUGH = str(TOOLSETS / "rough.py")
FAST_BEATS = {"heartbeat_interval": 0.3, "heartbeat_misses": 3}  # silence limit 0.9 s


def hold_gil(seconds: float) -> None:
    """Keep the GIL in one C call, as a busy host program does (ctypes.pythonapi is a PyDLL)."""
    ctypes.pythonapi.usleep(ctypes.c_uint(int(seconds * 1_000_000)))


def call_all(client: zbridge.Client, n: int, timeout: float = 5.0) -> list:
    return [client.call("echo", [i], timeout=timeout) for i in range(n)]


# --- slow and hostile peers -----------------------------------------------------------------

def test_a_client_that_never_reads_harms_nobody_and_serve_still_stops(tmp_path, basic_tools):
    with served(tmp_path, "--tools", basic_tools) as (endpoint, proc):
        with raw_dealer(endpoint) as flooder, zbridge.Client(endpoint, fallback=False) as client:
            for i in range(20_000):  # STATUS replies pile up in a pipe nobody reads
                flooder.send(status_request(i + 1))
            assert call_all(client, 50) == list(range(50))
            assert wait_until(lambda: client.status()["counters"]["dropped_replies"] > 0)
            assert call_all(client, 50) == list(range(50))
        assert stop(proc) == 0  # SIGTERM still stops it, at once


def test_a_credit_flood_for_a_plain_call_is_not_forwarded(tmp_path, basic_tools):
    with served(tmp_path, "--tools", basic_tools, "--workers", "2", "--prewarm") as (endpoint, proc):
        with raw_dealer(endpoint) as peer, zbridge.Client(endpoint, fallback=False) as client:
            client.wait_ready(timeout=20)
            peer.send(protocol.encode_request(1, "span", [6.0]))
            for _ in range(50_000):  # a daemon busy in a plain call reads none of these
                peer.send(protocol.encode_credit(1, 1))
            assert call_all(client, 20, timeout=3.0) == list(range(20))
            header = protocol.read_header(reply := peer.recv())
            assert header.kind is Kind.REPLY and header.id == 1
            assert "result" in protocol.decode_reply_body(reply)


def test_a_slow_stream_consumer_leaves_other_callers_served(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, workers=2, prewarm=True)
    bridge.wait_ready()
    items = bridge.stream("count", [10**6], window=protocol.MAX_WINDOW)
    assert next(items) == 0
    time.sleep(0.5)  # the consumer dawdles with a full window in flight
    assert call_all(bridge, 50) == list(range(50))
    items.close()
    assert call_all(bridge, 50) == list(range(50))


def test_a_stream_window_has_an_upper_bound(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)
    with pytest.raises(ValueError, match="window"):
        next(bridge.stream("count", [10], window=100_000))


def test_one_async_client_gathering_thousands_gets_no_overloaded(basic_tools):
    async def main() -> list:
        async with zbridge.AsyncBridge(basic_tools, workers=2, max_queue=500) as bridge:
            results = await asyncio.gather(*(bridge.call("echo", [i]) for i in range(3000)))
            return [results, (await bridge.status())["counters"]["overloaded"]]
    results, overloaded = asyncio.run(main())
    assert results == list(range(3000)) and overloaded == 0


def test_an_over_long_message_is_discarded_and_answered(tmp_path, basic_tools):
    with served(tmp_path, "--tools", basic_tools) as (endpoint, _):
        with raw_dealer(endpoint) as peer, zbridge.Client(endpoint, fallback=False) as client:
            peer.send_multipart([protocol.encode_status_request(1)] + [b""] * 200_000)
            assert call_all(client, 10) == list(range(10))
            reply = peer.recv()
            assert protocol.read_header(reply).id == 0
            assert "200001" in protocol.decode_reply_body(reply)["error"]["message"]


def test_queue_is_bounded_in_bytes(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, max_queue_bytes=3 * 1024 * 1024)
    blocker = bridge.submit("span", [1.0])
    assert wait_until(lambda: bridge.status()["daemons"] and bridge.status()["daemons"][0]["state"] == "busy")
    big = "x" * (1024 * 1024)
    futures = [bridge.submit("echo", [big]) for _ in range(6)]
    outcomes = [f.exception(timeout=30) for f in futures]
    assert any(isinstance(e, zbridge.Overloaded) and "max_queue_bytes" in str(e) for e in outcomes)
    assert any(e is None for e in outcomes)
    assert blocker.result(timeout=30)["end"] > 0


def test_a_client_learns_at_once_when_the_hub_drops_its_connection(tmp_path, basic_tools):
    with served(tmp_path, "--tools", basic_tools, "--max-message-size", "2048") as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:
            started = time.monotonic()
            with pytest.raises(zbridge.ConnectionLost):
                client.call("echo", ["x" * 100_000], timeout=30)
            assert time.monotonic() - started < 20  # well before the 30 s deadline
            assert client.call("echo", ["small"], timeout=10) == "small"  # it reconnects


# --- the GIL ---------------------------------------------------------------------------------

def test_a_tool_holding_the_gil_is_busy_not_dead(bridge_factory):
    bridge = bridge_factory(ROUGH, **FAST_BEATS)
    pid = bridge.call("pid")
    assert bridge.call("hold_gil", [1.8], timeout=30) == pid  # 2 x interval x misses
    status = bridge.status()
    assert status["counters"]["lost"] == 0 and status["counters"]["kills"] == 0
    assert bridge.call("pid") == pid


def test_a_stopped_daemon_is_still_found_in_time(bridge_factory):
    import os
    import signal
    bridge = bridge_factory(ROUGH, **FAST_BEATS)
    pid = bridge.call("pid")
    future = bridge.submit("nap", [30.0])
    assert wait_until(lambda: bridge.status()["daemons"][0]["state"] == "busy")
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(zbridge.WorkerLost, match="stopped"):
        future.result(timeout=20)
    assert time.monotonic() - started < 0.9 + 1.0 + 1.0  # limit + 1 s, + 1 s for a noisy machine
    assert bridge.call("pid") != pid


def test_an_embedding_program_holding_the_gil_gets_its_finished_result(bridge_factory):
    bridge = bridge_factory(ROUGH, **FAST_BEATS)
    pid = bridge.call("pid")
    future = bridge.submit("nap", [0.3])
    assert wait_until(lambda: bridge.status()["daemons"][0]["state"] == "busy")
    hold_gil(1.8)  # the hub thread cannot run; the reply waits in its socket
    assert future.result(timeout=10) == pid
    assert bridge.call("pid") == pid and bridge.status()["counters"]["lost"] == 0


# --- crash loops and fallbacks -----------------------------------------------------------------

def test_calls_that_kill_their_daemon_do_not_starve_innocent_calls(bridge_factory):
    bridge = bridge_factory(ROUGH)
    for _ in range(12):
        with pytest.raises(zbridge.WorkerLost):
            bridge.call("die", timeout=10)
    assert bridge.call("pid", timeout=3) > 0


def test_while_no_daemon_can_start_calls_get_pool_unavailable_not_timeout(bridge_factory, broken_tools):
    bridge = bridge_factory(broken_tools, fallback=False, start_retries=2, backoff_base=5.0)
    with pytest.raises(zbridge.PoolUnavailable, match="No module named"):
        bridge.call("anything", timeout=20)
    started = time.monotonic()
    with pytest.raises(zbridge.PoolUnavailable):
        bridge.call("anything", timeout=20)
    assert time.monotonic() - started < 10


def test_no_fallback_subprocess_when_the_tools_cannot_load(bridge_factory, broken_tools):
    bridge = bridge_factory(broken_tools, workers=2)
    with PeakSampler(lambda: len(processes_matching(b"--stdio"))) as fallbacks:
        futures = [bridge.submit("anything") for _ in range(100)]
        errors = [f.exception(timeout=60) for f in futures]
    assert fallbacks.peak == 0
    assert all(isinstance(e, zbridge.PoolUnavailable) and "No module named" in str(e) for e in errors)


def test_fallback_subprocesses_are_bounded_by_workers(bridge_factory, tmp_path):
    log = tmp_path / "calls.log"
    bridge = bridge_factory(str(TOOLSETS / "slow_start.py"), workers=2, start_timeout=0.2,
                            start_retries=1, backoff_base=30.0)
    futures = [bridge.submit("logged", [str(log)], timeout=30) for _ in range(6)]
    assert all(isinstance(f.result(timeout=60), int) for f in futures)
    spans = [tuple(map(float, line.split())) for line in log.read_text().splitlines()]
    assert len(spans) == 6  # every call ran once, each in a one-shot subprocess
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most <= 2


# --- streams ---------------------------------------------------------------------------------

def test_a_stream_timed_out_while_blocked_on_credit_keeps_its_daemon(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)
    pid = bridge.call("pid")
    items = bridge.stream("count", [10**6], window=2, timeout=1.0)
    assert next(items) == 0
    time.sleep(1.5)  # the daemon sits waiting for credit; the hub times the stream out
    with pytest.raises(zbridge.CallTimeout):
        list(items)
    assert bridge.call("pid") == pid
    assert bridge.status()["counters"]["kills"] == 0


def test_a_stream_whose_client_vanishes_keeps_its_daemon(tmp_path, basic_tools):
    with served(tmp_path, "--tools", basic_tools) as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:
            pid = client.call("pid")
            context = zmq.Context()
            with raw_dealer(endpoint, context) as peer:
                peer.send(protocol.encode_request(1, "count", [10**6], window=4))
                assert protocol.read_header(peer.recv()).kind is Kind.PARTIAL
            context.term()
            # the peer is gone without a CANCEL; the daemon must come back to serve
            assert client.call("pid", timeout=10) == pid
            assert client.status()["counters"]["kills"] == 0


def test_a_tool_catching_exception_does_not_swallow_the_interrupt(bridge_factory):
    bridge = bridge_factory(ROUGH)
    pid = bridge.call("pid")
    future = bridge.submit("swallow_everything", [30.0])
    assert wait_until(lambda: bridge.status()["daemons"][0]["state"] == "busy")
    future.cancel()
    with pytest.raises(zbridge.Cancelled):
        future.result(timeout=10)
    assert bridge.call("pid", timeout=10) == pid  # interrupted, not killed after kill_grace
    assert bridge.status()["counters"]["kills"] == 0


def test_the_start_up_heap_is_frozen_out_of_collections(bridge_factory):
    bridge = bridge_factory(ROUGH)
    assert bridge.call("gc_frozen") > 1000  # modules and what start-up built
