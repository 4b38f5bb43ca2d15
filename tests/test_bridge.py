"""The core guarantees of an embedded Bridge, with real daemons and sockets."""

from __future__ import annotations

import os
import signal
import time

import pytest

import zbridge
from helpers import daemon_pids, wait_until


def test_warm_state_is_reused(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)
    first = bridge.call("cached", {"key": "k"})
    second = bridge.call("cached", ["k"])
    assert first["pid"] == second["pid"]
    assert (first["hits"], second["hits"]) == (1, 2)


def test_two_daemons_run_two_calls_at_once(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, workers=2, prewarm=True)
    futures = [bridge.submit("span", {"seconds": 0.5}) for _ in range(2)]
    a, b = (f.result(timeout=30) for f in futures)
    assert a["pid"] != b["pid"]
    assert max(a["start"], b["start"]) < min(a["end"], b["end"]), "the two calls did not overlap"


def test_sigkill_during_call_gives_worker_lost_then_recovers(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)
    victim = bridge.call("pid")
    future = bridge.submit("span", {"seconds": 30})
    assert wait_until(lambda: any(d["state"] == "busy" for d in bridge.status()["daemons"]))
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(zbridge.WorkerLost) as info:
        future.result(timeout=10)
    print(f"WorkerLost {1000 * (time.monotonic() - killed_at):.1f} ms after SIGKILL")
    assert "SIGKILL" in str(info.value)
    assert bridge.call("pid") != victim
    assert bridge.call("add", [1, 2]) == 3


def test_import_error_is_reported_fast_and_spawns_stay_bounded(bridge_factory, broken_tools,
                                                                tmp_path, monkeypatch):
    spawn_log = tmp_path / "spawns"
    monkeypatch.setenv("ZBRIDGE_TEST_SPAWN_LOG", str(spawn_log))
    bridge = bridge_factory(broken_tools, fallback=False, backoff_base=0.05)
    for _ in range(10):
        with pytest.raises(zbridge.PoolUnavailable) as info:
            bridge.call("anything", timeout=20)
        assert "ModuleNotFoundError" in str(info.value)
        assert "zbridge_missing_dependency_xyz" in str(info.value)
    spawns = len(spawn_log.read_text().splitlines())
    assert 1 <= spawns <= bridge.settings.start_retries + 1
    assert "zbridge_missing_dependency_xyz" in bridge.status()["last_start_error"]


def test_import_error_through_fallback_names_the_cause(bridge_factory, broken_tools):
    bridge = bridge_factory(broken_tools, backoff_base=0.05)
    with pytest.raises(zbridge.PoolUnavailable, match="zbridge_missing_dependency_xyz"):
        bridge.call("anything", timeout=20)


def test_tool_output_never_reaches_the_protocol(bridge_factory, basic_tools, capfd):
    bridge = bridge_factory(basic_tools)
    assert bridge.call("chatty", ["hi"]) == "hi"
    assert bridge.call("echo", [{"after": "print"}]) == {"after": "print"}
    seen = []
    assert wait_until(lambda: seen.append(capfd.readouterr().err) or "raw fd 1 write" in "".join(seen))
    logged = "".join(seen)
    assert "tool says hi" in logged and "to stderr" in logged


def test_tool_exception_carries_type_message_traceback(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)
    with pytest.raises(zbridge.ToolError) as info:
        bridge.call("boom", {"message": "kaput"})
    err = info.value
    assert err.code == -32000
    assert err.data["type"] == "ValueError" and err.data["message"] == "kaput"
    assert "raise ValueError(message)" in err.traceback


def test_unencodable_result_is_an_error_and_the_daemon_keeps_serving(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)
    before = bridge.call("pid")
    with pytest.raises(zbridge.InternalError, match="cannot be encoded"):
        bridge.call("unencodable")
    assert bridge.call("pid") == before


def test_one_mib_result_over_zmq(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)
    assert bridge.call("big", [1024 * 1024]) == "x" * (1024 * 1024)


@pytest.mark.parametrize("tool, args, error", [
    ("no_such_tool", None, zbridge.ToolNotFound),
    ("add", {"a": 1, "c": 2}, zbridge.InvalidParams),
    ("add", [1, 2, 3], zbridge.InvalidParams),
    ("add", None, zbridge.InvalidParams),
])
def test_bad_calls_get_typed_errors(bridge_factory, basic_tools, tool, args, error):
    bridge = bridge_factory(basic_tools)
    with pytest.raises(error) as info:
        bridge.call(tool, args)
    assert isinstance(info.value, zbridge.BridgeError)
    assert bridge.call("add", [2, 2]) == 4


def test_named_decorator_and_undecorated_module(bridge_factory, basic_tools, plain_tools):
    bridge = bridge_factory([basic_tools, plain_tools])
    assert bridge.call("renamed") == "renamed ok"
    assert bridge.call("double", [21]) == 42
    with pytest.raises(zbridge.ToolNotFound):
        bridge.call("_private")


def test_health_builtin(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)
    health = bridge.call("execute_tool", {"tool_name": "health", "args": {"action": "server"}})
    assert health["status"] == "ok" and "echo" in health["tools"]
    assert health["pid"] in daemon_pids()


def test_timeout_answers_at_deadline_and_replaces_the_daemon(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, kill_grace=0.2)
    hung = bridge.call("pid")
    with pytest.raises(zbridge.CallTimeout):
        bridge.call("span", {"seconds": 60}, timeout=0.5)
    assert wait_until(lambda: hung not in daemon_pids())
    assert bridge.call("pid") != hung


def test_expired_queued_call_never_runs(bridge_factory, basic_tools, tmp_path):
    bridge = bridge_factory(basic_tools, prewarm=True)
    journal = tmp_path / "ran"
    busy = bridge.submit("span", {"seconds": 1.0})
    assert wait_until(lambda: any(d["state"] == "busy" for d in bridge.status()["daemons"]))
    with pytest.raises(zbridge.CallTimeout, match="waiting"):
        bridge.call("record", [str(journal), "late"], timeout=0.2)
    busy.result(timeout=10)
    bridge.call("pid")
    assert not journal.exists()


def test_full_queue_answers_overloaded(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, prewarm=True, max_queue=1)
    running = bridge.submit("span", {"seconds": 1.0})
    assert wait_until(lambda: any(d["state"] == "busy" for d in bridge.status()["daemons"]))
    queued = bridge.submit("echo", ["queued"])
    assert wait_until(lambda: bridge.status()["queue_depth"] == 1)
    with pytest.raises(zbridge.Overloaded):
        bridge.call("echo", ["rejected"])
    assert queued.result(timeout=10) == "queued"
    running.result(timeout=10)


def test_idempotent_calls_are_retried_others_are_not(bridge_factory, basic_tools, tmp_path):
    bridge = bridge_factory(basic_tools)
    with pytest.raises(zbridge.WorkerLost):
        bridge.call("die_once", [str(tmp_path / "a")])
    assert bridge.call("die_once", [str(tmp_path / "b")], idempotent=True) == "survived"


def test_many_threads_share_one_bridge(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, workers=2)
    futures = [bridge.submit("echo", [i]) for i in range(500)]
    assert [f.result(timeout=30) for f in futures] == list(range(500))


def test_status_lists_daemons(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, workers=2, prewarm=True)
    assert wait_until(lambda: len([d for d in bridge.status()["daemons"] if d["state"] == "idle"]) == 2)
    status = bridge.status()
    assert {d["pid"] for d in status["daemons"]} <= daemon_pids()
    assert status["queue_depth"] == 0 and status["workers"] == 2


def test_type_error_inside_a_tool_is_a_tool_error(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)
    with pytest.raises(zbridge.ToolError) as info:
        bridge.call("inner_type_error")
    assert info.value.data["type"] == "TypeError"
    with pytest.raises(zbridge.InvalidParams):
        bridge.call("inner_type_error", [1, 2])


def test_call_many_fans_out_and_keeps_order(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, workers=2, prewarm=True)
    results = bridge.call_many([("span", [0.3, i]) for i in range(4)])
    assert [r["nonce"] for r in results] == [0, 1, 2, 3]
    assert len({r["pid"] for r in results}) == 2  # both daemons took part
    spans = sorted((r["start"], r["end"]) for r in results)
    assert spans[1][0] < spans[0][1], "no two calls overlapped"
    assert bridge.map("echo", range(300)) == list(range(300))


def test_call_many_errors_in_place_or_raised(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools)
    mixed = bridge.call_many([("add", [1, 2]), ("boom", None), ("nope", None), ("add", {"x": 1})],
                             return_exceptions=True)
    assert mixed[0] == 3
    assert [type(e) for e in mixed[1:]] == [zbridge.ToolError, zbridge.ToolNotFound, zbridge.InvalidParams]
    with pytest.raises(zbridge.ToolError):
        bridge.call_many([("add", [1, 2]), ("boom", None)])


def test_sync_future_cancel_interrupts_a_running_call(bridge_factory, basic_tools, tmp_path):
    bridge = bridge_factory(basic_tools, prewarm=True)
    pid = bridge.call("pid")
    marker = tmp_path / "cleaned"
    future = bridge.submit("interruptible", [60, str(marker)])
    assert wait_until(lambda: os.path.exists(f"{marker}.started"))  # the tool itself runs
    assert future.cancel()
    with pytest.raises(zbridge.Cancelled):
        future.result(timeout=10)
    assert bridge.call("pid") == pid  # still warm: the call after it waited for the interrupt
    assert marker.read_text() == str(pid)


def test_sync_future_cancel_of_a_queued_call(bridge_factory, basic_tools, tmp_path):
    bridge = bridge_factory(basic_tools, prewarm=True)
    journal = tmp_path / "ran"
    blocker = bridge.submit("span", [1.0])
    assert wait_until(lambda: any(d["state"] == "busy" for d in bridge.status()["daemons"]))
    queued = bridge.submit("record", [str(journal), "q"])
    assert wait_until(lambda: bridge.status()["queue_depth"] == 1)
    assert queued.cancel()
    with pytest.raises(zbridge.Cancelled, match="before it ran"):
        queued.result(timeout=10)
    blocker.result(timeout=10)
    bridge.call("pid")
    assert not journal.exists()


def test_wait_ready(bridge_factory, basic_tools, broken_tools):
    bridge = bridge_factory(basic_tools, workers=2)  # lazy: wait_ready starts them
    status = bridge.wait_ready(timeout=30)
    assert sum(d["state"] == "idle" for d in status["daemons"]) == 2
    broken = bridge_factory(broken_tools, fallback=False, backoff_base=0.05)
    with pytest.raises(zbridge.PoolUnavailable, match="zbridge_missing_dependency_xyz"):
        broken.wait_ready(timeout=30)
    assert bridge_factory(basic_tools, pool_enabled=False).wait_ready()["pool_enabled"] is False
