"""The hot path's hazards (issue 20): signals, handlers that call back, forks, a dead hub
thread, and deadlines judged under load. Each test could fail on the direct path before
it: a torn critical section, a lock held across logging, a lock inherited by a child, a
verdict that waited for callers to report."""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import zbridge
from helpers import TOOLSETS, daemon_pids, wait_until

BASIC = str(TOOLSETS / "basic.py")


def run_program(tmp_path: Path, source: str, *args: str) -> subprocess.Popen[str]:
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.Popen([sys.executable, str(script), BASIC, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


STORM = """
    import json, os, sys, time
    import zbridge
    bridge = zbridge.Bridge(sys.argv[1], workers=2, prewarm=True, timeout=5, kill_grace=2)
    bridge.wait_ready()
    pids = sorted(d["pid"] for d in bridge.status()["daemons"])
    print("ready", flush=True)
    ok = wrong = interrupted = stray = 0
    until = time.monotonic() + float(sys.argv[2])
    i = 0
    while True:
        try:
            while time.monotonic() < until:
                i += 1
                try:
                    if bridge.call("echo", [i]) == i:
                        ok += 1
                    else:
                        wrong += 1
                except KeyboardInterrupt:
                    interrupted += 1
            break
        except KeyboardInterrupt:  # landed in this loop's own bookkeeping
            stray += 1
    # a torn call would leave a daemon held (then killed at its deadline + kill_grace)
    settled = False
    for _ in range(200):
        status = bridge.status()
        if all(d["state"] == "idle" for d in status["daemons"]) and not status["queue_depth"]:
            settled = True
            break
        time.sleep(0.05)
    time.sleep(2.5)  # past timeout... no: past kill_grace after any stale verdict
    status = bridge.status()
    after = bridge.call("echo", ["after"])
    print(json.dumps({"ok": ok, "wrong": wrong, "interrupted": interrupted, "stray": stray,
                      "settled": settled, "counters": status["counters"], "after": after,
                      "same_pids": sorted(d["pid"] for d in status["daemons"]) == pids}))
    bridge.close()
"""


def test_a_sigint_storm_during_calls_kills_no_daemon_and_loses_no_answer(tmp_path):
    """Ctrl-C (or a Jupyter interrupt) landing anywhere in a call, hundreds of times: every
    call either returns its own result or raises KeyboardInterrupt, and the pool stays
    whole: no daemon held, killed or replaced, nothing timed out."""
    proc = run_program(tmp_path, STORM, "4")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    sent, until = 0, time.monotonic() + 3.0
    while time.monotonic() < until:
        proc.send_signal(signal.SIGINT)
        sent += 1
        time.sleep(0.002)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    result = last_json(out)
    print(f"{sent} SIGINTs: {result}")
    assert result["interrupted"] > 50  # the storm did land inside calls
    assert result["wrong"] == 0 and result["settled"] and result["same_pids"]
    counters = result["counters"]
    assert counters["kills"] == 0 and counters["lost"] == 0 and counters["timeouts"] == 0
    assert result["after"] == "after"


HANDLER = """
    import json, os, signal, sys, threading, time
    import zbridge
    bridge = zbridge.Bridge(sys.argv[1], workers=2, prewarm=True)
    bridge.wait_ready()
    outcomes = []

    def handler(signum, frame):
        started = time.monotonic()
        try:
            outcomes.append(["result", bridge.call("echo", ["from a handler"])])
        except zbridge.BridgeError as exc:
            outcomes.append(["error", type(exc).__name__, (exc.data or {}).get("cause")])
        outcomes[-1].append(time.monotonic() - started)

    signal.signal(signal.SIGUSR1, handler)
    stop = threading.Event()

    def storm():
        while not stop.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.003)

    threading.Thread(target=storm, daemon=True).start()
    wrong = 0
    for i in range(1500):
        if bridge.call("echo", [i]) != i:
            wrong += 1
    stop.set()
    time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGUSR1)  # outside any call: the handler's call runs
    time.sleep(0.2)
    print(json.dumps({"wrong": wrong, "outcomes": outcomes}))
    bridge.close()
"""


def test_a_signal_handler_calling_the_bridge_gets_an_answer_or_an_error_at_once(tmp_path):
    """A handler that calls the bridge, landing on top of the main thread's calls again and
    again: it is refused at once (it would wait for itself) or served, never a hang; the
    main thread's calls all get their own results."""
    proc = run_program(tmp_path, HANDLER)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err[-3000:]
    result = last_json(out)
    outcomes = result["outcomes"]
    assert result["wrong"] == 0 and len(outcomes) > 20
    kinds = {tuple(o[:-1]) for o in outcomes}
    assert kinds <= {("result", "from a handler"), ("error", "PoolUnavailable", "reentrant")}
    assert ("error", "PoolUnavailable", "reentrant") in kinds
    assert outcomes[-1][:2] == ["result", "from a handler"]  # outside a call it is served
    assert max(o[-1] for o in outcomes) < 1.0


CLOSE_IN_HANDLER = """
    import json, os, signal, sys, threading, time
    import zbridge
    bridge = zbridge.Bridge(sys.argv[1], workers=1, prewarm=True)
    pids = [d["pid"] for d in bridge.wait_ready()["daemons"]]
    signal.signal(signal.SIGTERM, lambda signum, frame: bridge.close())
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    started = time.monotonic()
    try:
        bridge.call("span", [30, "long"], timeout=60)
        outcome = "result"
    except zbridge.BridgeError as exc:
        outcome = type(exc).__name__
    waited = time.monotonic() - started
    bridge.close()
    print(json.dumps({"outcome": outcome, "waited": waited, "pids": pids}))
"""


def test_close_from_a_signal_handler_during_a_call_stops_the_pool_without_a_hang(tmp_path):
    proc = run_program(tmp_path, CLOSE_IN_HANDLER)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    result = last_json(out)
    assert result["outcome"] == "WorkerLost"  # the call was running when the pool stopped
    assert result["waited"] < 15
    assert wait_until(lambda: not set(result["pids"]) & daemon_pids())


class CallingHandler(logging.Handler):
    """A logging handler that calls a tool for every record it sees."""

    def __init__(self, bridge: zbridge.Bridge) -> None:
        super().__init__(logging.INFO)
        self.bridge = bridge
        self.outcomes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.outcomes.append(str(self.bridge.call("echo", ["logged"], timeout=10)))
        except zbridge.BridgeError as exc:
            self.outcomes.append(f"{type(exc).__name__}:{(exc.data or {}).get('cause')}")


def test_a_logging_handler_that_calls_a_tool_never_deadlocks(bridge_factory):
    """zbridge logs from its hub thread (notes), its daemons' watchers (their output) and
    its callers; a handler that calls a tool on each record gets a result, or a clear
    refusal where the call would wait for the very thread that logs."""
    bridge = bridge_factory(BASIC, workers=2, prewarm=True, backoff_base=0.01)
    bridge.wait_ready()
    handler = CallingHandler(bridge)
    logger = logging.getLogger("zbridge")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        for i in range(5):
            assert bridge.call("chatty", [f"line {i}"]) == f"line {i}"  # daemon output: watcher threads
        with pytest.raises(zbridge.WorkerLost):
            bridge.call("exit_hard", [3])  # exit and respawn notes: the hub thread
        assert wait_until(lambda: len(bridge.status()["daemons"]) == 2 and
                          all(d["state"] == "idle" for d in bridge.status()["daemons"]))
        assert [bridge.call("echo", [i]) for i in range(50)] == list(range(50))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert "logged" in handler.outcomes
    assert set(handler.outcomes) <= {"logged", "PoolUnavailable:reentrant"}


def test_a_forked_child_gets_a_clear_error_and_the_parent_keeps_serving(bridge_factory):
    """os.fork() while other threads call: the child's copy refuses use at once (it holds
    no hub thread, and maybe a lock another thread held), and exits cleanly; the parent's
    pool serves on, its daemons untouched."""
    bridge = bridge_factory(BASIC, workers=2, prewarm=True)
    pids = {d["pid"] for d in bridge.wait_ready()["daemons"]}
    stop = threading.Event()
    wrong: list[object] = []

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            if bridge.call("echo", [i]) != i:
                wrong.append(i)

    callers = [threading.Thread(target=load) for _ in range(3)]
    for caller in callers:
        caller.start()
    statuses = []
    try:
        for n in range(20):
            child = os.fork()
            if child == 0:  # the child: report, then leave as a program would
                code = 12
                try:
                    bridge.call("echo", [1])
                    code = 10
                except zbridge.PoolUnavailable as exc:
                    code = 0 if (exc.data or {}).get("cause") == "forked" else 11
                finally:
                    if n % 2:  # its exit handlers close its copy: that must not touch the pool
                        atexit._run_exitfuncs()
                    os._exit(code)
            deadline = time.monotonic() + 20
            while (done := os.waitpid(child, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            if done[0] == 0:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
                statuses.append("hung")
            else:
                statuses.append(os.waitstatus_to_exitcode(done[1]))
    finally:
        stop.set()
        for caller in callers:
            caller.join()
    assert statuses == [0] * 20
    assert wrong == []
    assert {d["pid"] for d in bridge.status()["daemons"]} == pids
    assert bridge.call("echo", ["parent"]) == "parent"


FORKS_THEN_WAITS = """
    import json, os, sys, time
    import zbridge
    bridge = zbridge.Bridge(sys.argv[1], workers=2, prewarm=True)
    daemons = [d["pid"] for d in bridge.wait_ready()["daemons"]]
    children = []
    for _ in range(3):
        child = os.fork()
        if child == 0:
            time.sleep(120)
            os._exit(0)
        children.append(child)
    print(json.dumps({"daemons": daemons, "children": children}), flush=True)
    time.sleep(120)
"""


def test_kill_9_of_a_parent_with_forked_children_leaves_no_daemon(tmp_path):
    """Forked children do not keep their parent's daemons alive: after the parent's
    SIGKILL, its daemons see their lifelines end and exit, though the children live on."""
    proc = run_program(tmp_path, FORKS_THEN_WAITS)
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    children = info["children"]
    try:
        assert set(info["daemons"]) <= daemon_pids()
        proc.kill()
        proc.wait()
        assert wait_until(lambda: not set(info["daemons"]) & daemon_pids(), timeout=15)
        assert all(os.path.exists(f"/proc/{child}") for child in children)
    finally:
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.communicate()


def test_a_dead_hub_thread_fails_waiting_and_later_calls_at_once(bridge_factory):
    """The hub thread dies of an exception: the queued call gets PoolUnavailable naming the
    cause at once, the running one WorkerLost as its daemon stops, later calls are refused
    at once: none waits for its deadline."""
    bridge = bridge_factory(BASIC, workers=1, prewarm=True, heartbeat_interval=0.1)
    bridge.wait_ready()
    running = bridge.submit("span", [60, "long"], timeout=120)
    assert wait_until(lambda: bridge.status()["daemons"][0]["state"] == "busy")
    queued = bridge.submit("echo", ["queued"], timeout=120)
    assert wait_until(lambda: bridge.status()["queue_depth"] == 1)

    def injected() -> None:
        raise RuntimeError("injected failure")

    bridge._hub._beat = injected  # the hub thread beats every heartbeat interval
    with pytest.raises(zbridge.PoolUnavailable) as info:
        queued.result(timeout=20)
    assert info.value.data["cause"] == "broken" and "injected failure" in str(info.value)
    with pytest.raises(zbridge.WorkerLost, match="injected failure"):
        running.result(timeout=20)
    with pytest.raises(zbridge.PoolUnavailable, match="broken"):
        bridge.call("echo", ["later"])
    with pytest.raises(zbridge.PoolUnavailable, match="broken"):
        bridge.status()


def test_under_64_threads_a_running_call_gets_call_timeout_at_its_deadline(bridge_factory):
    """Every caller judges its own deadline: a 1 s tool with timeout=0.2 never returns a
    result, however many threads compete for the GIL and however many late replies are on
    their way (none waits for other callers to report theirs)."""
    bridge = bridge_factory(BASIC, workers=2, prewarm=True, kill_grace=10.0)
    bridge.wait_ready()
    outcomes: list[str] = []
    until = time.monotonic() + 4.0

    def caller() -> None:
        while time.monotonic() < until:
            try:
                bridge.call("span", [1.0], timeout=0.2)
                outcomes.append("result")
            except zbridge.CallTimeout:
                outcomes.append("timeout")
            except zbridge.BridgeError as exc:
                outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=caller) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"{len(outcomes)} calls: {sorted(set(outcomes))}")
    assert len(outcomes) > 128 and set(outcomes) == {"timeout"}
    assert wait_until(lambda: all(d["state"] == "idle" for d in bridge.status()["daemons"]))
    assert bridge.status()["counters"]["kills"] == 0  # late replies came back: daemons warm


def test_recycling_under_load_loses_no_call(bridge_factory):
    """Daemons recycled every ~30 calls while 4 threads call for 3 s: every call answered
    with its own result, the replacements spawned by the hub thread after the lock."""
    bridge = bridge_factory(BASIC, workers=2, prewarm=True, max_calls=30)
    bridge.wait_ready()
    stop = time.monotonic() + 3.0
    wrong: list[object] = []
    done = [0]

    def caller(t: int) -> None:
        i = 0
        while time.monotonic() < stop:
            i += 1
            try:
                if bridge.call("echo", [[t, i]]) != [t, i]:
                    wrong.append((t, i))
                done[0] += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                wrong.append(exc)

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    counters = bridge.status()["counters"]
    print(f"{done[0]} calls, {counters['recycled']} recycles")
    assert counters["recycled"] >= 4 and counters["lost"] == 0 and counters["timeouts"] == 0
