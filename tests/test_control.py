"""Live control of a running pool, end to end: `scale`, `reload` and `stacks` from the
client API (sync and asyncio twins) and the CLI, under load, with real daemons."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import zmq

import zbridge
from zbridge import protocol
from zbridge.protocol import Kind, encode_result, read_header

from helpers import ZBRIDGE, free_port, served, wait_until

TOOLS = """\
import os, time
import zbridge

VERSION = {version}{padding}


@zbridge.tool
def work(i: int, log: str) -> int:
    '''Records each run (call number, code version) in ``log``: a run twice shows twice.'''
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"%d %d\\n" % (i, VERSION))
    finally:
        os.close(fd)
    time.sleep(0.003)
    return VERSION


@zbridge.tool
def stuck(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()
"""


def write_tools(path: Path, version: int, broken: bool = False) -> str:
    """The tools module at ``version`` (its size differs from the other versions', so no
    stale bytecode is taken for it), or one that does not compile."""
    text = TOOLS.format(version=version, padding="  # " + "v" * version)
    if broken:
        text += "\ndef oops(:\n"
    staging = path.with_suffix(".new")
    staging.write_text(text)
    os.replace(staging, path)
    return str(path)


class Load:
    """Threads calling ``work`` back to back, each call numbered; every outcome kept."""

    def __init__(self, client: zbridge.Client, log: Path, threads: int = 4) -> None:
        self.client, self.log = client, str(log)
        self.numbers = itertools.count(1)
        self.outcomes: list[tuple[int, float, object]] = []  # (number, started, result or error)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            i, started = next(self.numbers), time.monotonic()
            try:
                outcome: object = self.client.call("work", [i, self.log], timeout=30)
            except zbridge.BridgeError as exc:
                outcome = exc
            self.outcomes.append((i, started, outcome))

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        assert wait_until(lambda: len(self.outcomes) >= 20, timeout=20)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=40)

    def check_each_ran_once(self) -> None:
        errors = [o for o in self.outcomes if isinstance(o[2], BaseException)]
        assert not errors, errors[:3]
        runs = Counter(int(line.split()[0]) for line in Path(self.log).read_text().splitlines())
        assert sorted(runs) == sorted(i for i, _, _ in self.outcomes)  # none lost, none extra
        assert max(runs.values()) == 1  # none ran twice


def live(status: dict) -> list[dict]:
    return [d for d in status["daemons"] if d["state"] != "stopping"]


def settled(client: zbridge.Client, n: int) -> bool:
    daemons = live(client.status())
    return len(daemons) == n and all(d["state"] in ("idle", "busy") and not d["retiring"] for d in daemons)


# --- reload ------------------------------------------------------------------------------

@pytest.fixture(params=["embedded", "served"])
def pool(request, tmp_path, bridge_factory):
    """A pool of 2 daemons on the tools of ``tools.py`` (version 1), and a client to it:
    an embedded Bridge (its direct route) or a `zbridge serve` (the hub's route)."""
    tools = write_tools(tmp_path / "tools.py", 1)
    if request.param == "embedded":
        yield bridge_factory(tools, workers=2, prewarm=True), tools
        return
    with served(tmp_path, "--tools", tools, "--workers", "2", "--prewarm") as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:
            yield client, tools


def test_reload_under_load_drops_and_repeats_nothing_then_serves_the_new_code(pool, tmp_path):
    client, tools = pool
    client.wait_ready(count=2)
    before = {d["pid"] for d in client.status()["daemons"]}
    with Load(client, tmp_path / "runs.log") as load:
        write_tools(Path(tools), 2)
        began = time.monotonic()
        answer = client.reload(timeout=60)
        reloaded = time.monotonic()
        assert wait_until(lambda: sum(1 for _, t, _ in load.outcomes if t > reloaded) >= 20, timeout=20)
    load.check_each_ran_once()
    assert sum(1 for _, t, _ in load.outcomes if began < t < reloaded) >= 20  # calls all along
    assert answer["generation"] == 1 and answer["replaced"] == 2
    assert {o for _, t, o in load.outcomes if t > reloaded} == {2}  # every call since: new code
    assert {o for _, _, o in load.outcomes} == {1, 2}
    status = client.status()
    assert [d["generation"] for d in status["daemons"]] == [1, 1] and status["reload"] is None
    assert not before & {d["pid"] for d in status["daemons"]}
    assert status["exits"]["reloaded"] == 2 and status["exits"]["crashed"] == 0


def test_a_reload_whose_new_code_does_not_load_is_aborted_and_the_old_daemons_serve_on(pool, tmp_path):
    client, tools = pool
    client.wait_ready(count=2)
    before = sorted(d["pid"] for d in client.status()["daemons"])
    with Load(client, tmp_path / "runs.log") as load:
        write_tools(Path(tools), 2, broken=True)
        with pytest.raises(zbridge.ReloadFailed) as failed:
            client.reload(timeout=60)
        aborted = len(load.outcomes)
        assert wait_until(lambda: len(load.outcomes) > aborted + 20, timeout=20)
    load.check_each_ran_once()
    message = str(failed.value)
    assert "keep serving" in message and "SyntaxError" in message and "tools.py, line" in message
    assert failed.value.data["cause"] == "load_failed"
    status = client.status()
    assert sorted(d["pid"] for d in live(status)) == before  # the same daemons, untouched
    assert {o for _, _, o in load.outcomes} == {1} and status["reload"] is None
    assert not any(d["retiring"] for d in status["daemons"])


# --- scale -------------------------------------------------------------------------------

def test_scale_up_and_down_under_load(tmp_path, bridge_factory):
    bridge = bridge_factory(write_tools(tmp_path / "tools.py", 1), workers=2, prewarm=True)
    bridge.wait_ready(count=2)
    with Load(bridge, tmp_path / "runs.log", threads=6) as load:
        assert bridge.scale(4) == {"workers": 4, "was": 2}
        assert wait_until(lambda: settled(bridge, 4), timeout=30)
        assert bridge.status()["workers"] == 4
        assert bridge.scale(1) == {"workers": 1, "was": 4}
        assert wait_until(lambda: settled(bridge, 1) and len(bridge.status()["daemons"]) == 1, timeout=30)
        done = len(load.outcomes)
        assert wait_until(lambda: len(load.outcomes) > done + 20, timeout=20)  # one daemon serves all
    load.check_each_ran_once()
    status = bridge.status()
    assert status["workers"] == 1 and status["exits"]["scaled"] == 3
    assert status["counters"]["lost"] == 0 and status["exits"]["crashed"] == 0


def test_scale_refuses_what_the_pool_cannot_be(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, workers=1)
    with pytest.raises(zbridge.InvalidParams, match="at least 1"):
        bridge.scale(0)
    with pytest.raises(zbridge.InvalidParams, match="from 0 to 1024"):
        bridge.scale(5000)
    with pytest.raises(TypeError):
        bridge.scale("2")  # type: ignore[arg-type]
    assert bridge.status()["workers"] == 1


# --- stacks ------------------------------------------------------------------------------

def test_stacks_show_the_frame_of_a_tool_stuck_in_sleep(tmp_path, bridge_factory):
    tools = write_tools(tmp_path / "tools.py", 1)
    bridge = bridge_factory(tools, workers=1, prewarm=True)
    future = bridge.submit("stuck", [30])
    assert wait_until(lambda: bridge.status()["daemons"][0]["state"] == "busy", timeout=20)
    daemon = bridge.status()["daemons"][0]
    for key in (daemon["id"], daemon["pid"]):
        text = bridge.stacks(key)
        assert f'File "{tools}", line ' in text and " in stuck" in text, text
        assert "(most recent call first)" in text and text.count("Thread 0x") >= 2  # every thread
    with pytest.raises(zbridge.InvalidParams, match="no daemon 'w99'"):
        bridge.stacks("w99")
    future.cancel()
    with pytest.raises(BaseException):
        future.result(timeout=20)
    assert bridge.call("work", [1, str(tmp_path / "runs.log")]) == 1  # the daemon was not hurt


def test_stacks_only_where_tracebacks_are_shown_and_control_only_with_a_pool(bridge_factory, basic_tools):
    bridge = bridge_factory(basic_tools, workers=1, prewarm=True, expose_tracebacks="false")
    bridge.wait_ready()
    with pytest.raises(zbridge.InvalidRequest, match="no tracebacks"):
        bridge.stacks("w1")
    without = bridge_factory(basic_tools, pool_enabled=False)
    with pytest.raises(zbridge.PoolUnavailable, match="disabled"):
        without.reload()


def test_stacks_of_a_daemon_from_another_host_are_refused(tmp_path, bridge_factory, basic_tools):
    from zbridge.security import keygen, load_keypair, load_public, make_client
    keygen(str(tmp_path / "hub"), "hub")
    keygen(str(tmp_path / "daemons"), "remote")
    daemons, beats = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    bridge = bridge_factory(basic_tools, workers=1, daemon_bind=daemons, heartbeat_bind=beats,
                            curve_secret=str(tmp_path / "hub" / "hub.key_secret"),
                            curve_daemons=str(tmp_path / "daemons"), heartbeat_interval=5.0)
    context = zmq.Context()
    remote = context.socket(zmq.DEALER)  # a daemon on "another host": READY, nothing more
    remote.linger = 0
    remote.setsockopt(zmq.IDENTITY, b"r-elsewhere")
    make_client(remote, load_public(str(tmp_path / "hub" / "hub.key")),
                load_keypair(str(tmp_path / "daemons" / "remote.key_secret")))
    try:
        remote.connect(daemons)
        remote.send(protocol.encode_ready(4242, ["pid"], "0"))
        assert wait_until(lambda: any(d["id"] == "r1" for d in bridge.status()["daemons"]), timeout=20)
        for key in ("r1", 4242):
            with pytest.raises(zbridge.InvalidRequest, match="r1 runs on another host"):
                bridge.stacks(key)
    finally:
        remote.close()
        context.term()


def test_the_asyncio_twin_scales_reloads_and_dumps_stacks(tmp_path):
    tools = write_tools(tmp_path / "tools.py", 1)

    async def main() -> None:
        async with zbridge.AsyncBridge(tools, workers=1, prewarm=True) as bridge:
            await bridge.wait_ready()
            assert await bridge.scale(2) == {"workers": 2, "was": 1}
            running = asyncio.ensure_future(bridge.call("stuck", [0.5]))
            await asyncio.sleep(0.2)
            busy = [d for d in (await bridge.status())["daemons"] if d["state"] == "busy"]
            assert " in stuck" in await bridge.stacks(busy[0]["id"])
            write_tools(Path(tools), 2)
            assert (await bridge.reload())["replaced"] == 2
            await running
            assert await bridge.call("work", [1, str(tmp_path / "runs.log")]) == 2
    asyncio.run(main())


# --- an older hub, and the CLI -----------------------------------------------------------

def test_a_hub_without_the_control_capability_is_told_apart(tmp_path):
    """A hub whose STATUS does not list "control" would refuse the CONTROL kind with id 0,
    which no call could be matched to: the client asks first, and says so at once."""
    endpoint = f"ipc://{tmp_path}/old.sock"
    context = zmq.Context()
    hub = context.socket(zmq.ROUTER)
    hub.linger = 0
    hub.bind(endpoint)
    seen: list[int] = []
    stop = threading.Event()

    def answer() -> None:  # a version-2 hub from before live control
        while not stop.is_set():
            if hub.poll(50):
                peer, frame = hub.recv_multipart()
                header = read_header(frame)
                seen.append(header.kind)
                hub.send_multipart([peer, encode_result(header.id, {
                    "protocol": 2, "capabilities": ["stream", "prewarm", "trace"]})])
        hub.close()
    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with zbridge.Client(endpoint, fallback=False) as client:
            with pytest.raises(zbridge.InvalidRequest, match="no 'control' capability"):
                client.scale(2)
        assert seen == [Kind.STATUS]  # no CONTROL was sent
    finally:
        stop.set()
        thread.join(timeout=10)
        context.term()


def zb(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(ZBRIDGE + list(args), capture_output=True, text=True, timeout=timeout)


def test_the_cli_scales_reloads_and_dumps_stacks(tmp_path):
    tools = write_tools(tmp_path / "tools.py", 1)
    with served(tmp_path, "--tools", tools, "--workers", "1") as (endpoint, _):
        out = zb("scale", "2", "--wait", "--endpoint", endpoint)
        assert out.returncode == 0 and out.stdout.splitlines() == ["workers 1 -> 2", "2 daemon(s) up"], out.stderr
        with zbridge.Client(endpoint, fallback=False) as client:
            running = client.submit("stuck", [1.5])
            assert wait_until(lambda: any(d["state"] == "busy" for d in client.status()["daemons"]), timeout=20)
            busy = next(d for d in client.status()["daemons"] if d["state"] == "busy")
            out = zb("stacks", busy["id"], "--endpoint", endpoint)
            assert out.returncode == 0 and " in stuck" in out.stdout and tools in out.stdout, out.stderr
            assert " in stuck" in zb("stacks", str(busy["pid"]), "--endpoint", endpoint).stdout
            write_tools(Path(tools), 2)
            out = zb("reload", "--endpoint", endpoint)
            assert out.returncode == 0 and "reloaded: 2 daemon(s) replaced in" in out.stdout, out.stderr
            assert running.result(timeout=10) == busy["pid"]  # its call finished first
            assert client.call("work", [1, str(tmp_path / "runs.log")]) == 2
        out = zb("stacks", "w99", "--endpoint", endpoint)
        assert out.returncode == 1 and "no daemon 'w99'" in out.stderr
        write_tools(Path(tools), 3, broken=True)
        out = zb("reload", "--endpoint", endpoint)
        assert out.returncode == 1 and "reload aborted" in out.stderr and "SyntaxError" in out.stderr
        assert zb("scale", "1", "--wait", "--endpoint", endpoint).returncode == 0


def test_status_says_a_reload_is_under_way():
    from zbridge.cli import format_status
    info = {"hub_pid": 1, "endpoint": "ipc:///x", "workers": 2, "queue_depth": 0, "daemons": [],
            "counters": {}, "reload": {"generation": 3, "phase": "rolling", "replaced": 1, "left": 1,
                                       "started_ago_s": 0.4}}
    assert "reload to generation 3: rolling, 1 replaced, 1 old daemon(s) left" in format_status(info)
