"""Issue 24's attacks, one test per row of docs/SECURITY.md's "second pass" table: a rogue
daemon's pickle, fd exhaustion from another user and from an admitted client, buffer
references that amplify, messages whose frames add up, duplicate keys, forged log lines and
a flood of made-up tool names. Each fails on the code before the issue."""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import zmq

import zbridge
from zbridge import protocol

from helpers import (TOOLSETS, ZBRIDGE, fd_count, free_port, raw_dealer, reset_peak_rss, status_kib,
                     wait_until)

BASIC = str(TOOLSETS / "basic.py")
FD_LIMIT = 256
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root "
                             "(as the netns group does): run the suite as root to include it")


def _limit_fds(n: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return preexec


@contextlib.contextmanager
def hub_at_fd_limit(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                    limit: int = FD_LIMIT) -> Iterator[tuple[str, subprocess.Popen]]:
    """`zbridge serve` whose soft and hard RLIMIT_NOFILE are ``limit``, so exhaustion is quick."""
    endpoint = f"ipc://{tmp_path}/hub.sock"
    log = open(tmp_path / "serve.log", "w+b")
    proc = subprocess.Popen(ZBRIDGE + ["serve", "--bind", endpoint, "--tools", BASIC, "--workers", "1",
                                       "--log-level", "INFO", *args],
                            stdout=subprocess.DEVNULL, stderr=log, preexec_fn=_limit_fds(limit),
                            env={**os.environ, **(env or {})})
    try:
        def up() -> bool:
            try:
                with zbridge.Client(endpoint, fallback=False, connect_timeout=1.0) as client:
                    return client.call("echo", [1], timeout=10) == 1
            except zbridge.BridgeError:
                return proc.poll() is not None
        assert wait_until(up, timeout=30) and proc.poll() is None, (tmp_path / "serve.log").read_text()
        yield endpoint, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _alive(proc: subprocess.Popen, log: Path) -> None:
    assert proc.poll() is None, f"the hub died ({proc.returncode}):\n{log.read_text()[-3000:]}"


# --- fd exhaustion ---------------------------------------------------------------------

def test_admitted_client_holding_connections_cannot_abort_the_hub(tmp_path):
    """~400 DEALERs at a hub allowed 256 fds: it refuses new connections with a log line
    (libzmq used to abort it: "Too many open files (src/ipc_listener.cpp)"), keeps serving
    the client that was connected before, and accepts again once they close."""
    with hub_at_fd_limit(tmp_path) as (endpoint, proc):
        log = tmp_path / "serve.log"
        victim = zbridge.Client(endpoint, fallback=False, connect_timeout=2.0)
        assert victim.call("echo", ["before"]) == "before"
        ctx = zmq.Context()
        flood = []
        peak = 0
        try:
            for _ in range(400):
                sock = ctx.socket(zmq.DEALER)
                sock.linger = 0
                sock.connect(endpoint)
                flood.append(sock)
                if len(flood) % 20 == 0:
                    time.sleep(0.02)  # let the hub accept what it will
                    peak = max(peak, fd_count(proc.pid))
            time.sleep(0.5)
            peak = max(peak, fd_count(proc.pid))
            _alive(proc, log)
            assert peak < FD_LIMIT
            assert "refusing new connections" in log.read_text()
            for i in range(20):  # the hub serves the connections it has
                assert victim.call("echo", [i], timeout=10) == i
        finally:
            for sock in flood:
                sock.close(0)
            ctx.term()
        _alive(proc, log)

        def new_client_served() -> bool:
            try:
                with zbridge.Client(endpoint, fallback=False, connect_timeout=1.0) as client:
                    return client.call("echo", ["after"], timeout=5) == "after"
            except zbridge.BridgeError:
                return False
        assert wait_until(new_client_served, timeout=20), log.read_text()[-3000:]
        assert wait_until(lambda: "accepting new connections again" in log.read_text(), timeout=10)
        victim.close()


@contextlib.contextmanager
def connections_held_by(user: str, port: int, n: int) -> Iterator[int]:
    """A child process running as ``user`` that opens ``n`` connections to ``port`` and
    sends nothing (half-open HTTP requests); yields its pid, killed after."""
    account = pwd.getpwnam(user)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exec, so no interpreter of ours needs to be readable by them
        try:
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            held = []
            stalled = time.monotonic() + 2.0  # until the server has taken nothing for 2 s
            while len(held) < n and time.monotonic() < stalled:
                sock = socket.socket()
                sock.settimeout(0.2)
                try:
                    sock.connect(("127.0.0.1", port))
                    held.append(sock)
                    stalled = time.monotonic() + 2.0
                except OSError:
                    sock.close()
            os.write(ready_w, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"x"
        yield pid
    finally:
        os.close(ready_r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@as_root
def test_another_user_holding_metrics_connections_cannot_abort_the_hub(tmp_path):
    """`nobody` opens 1,000 idle connections to the metrics port of a hub allowed 256 fds
    (prometheus_client's server took them all, a thread each, and the hub aborted at the
    next client): the hub keeps its fds, serves calls, and answers scrapes afterwards."""
    port = free_port()
    with hub_at_fd_limit(tmp_path, "--metrics", f"127.0.0.1:{port}",
                         env={"ZBRIDGE_METRICS_ALLOW_ANYONE": "true"}) as (endpoint, proc):
        log = tmp_path / "serve.log"
        with connections_held_by("nobody", port, 1000):
            held = fd_count(proc.pid)
            answers: list[int] = []
            with zbridge.Client(endpoint, fallback=False, connect_timeout=2.0) as client:
                with contextlib.suppress(zbridge.BridgeError):  # a new client: the hub used to abort
                    answers = [client.call("echo", [i], timeout=10) for i in range(10)]
            _alive(proc, log)
            assert held < FD_LIMIT and answers == list(range(10))

        def scraped() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return b"zbridge_hub_info" in r.read()
            except OSError:
                return False
        assert wait_until(scraped, timeout=20)
        _alive(proc, log)


# --- pickle stays on one host and one connection -----------------------------------------

class Planted:
    """Unpickling this runs ``os.mkdir(path)``: what a rogue daemon's code could do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@contextlib.contextmanager
def rogue_daemon_hub(tmp_path: Path) -> Iterator[tuple[str, zmq.Socket]]:
    """A hub (ipc frontend, no local daemons) that admits daemons over tcp with CURVE, and a
    rogue daemon that holds an allowed key: a raw DEALER that said READY (tool ``f``)."""
    from zbridge.security import keygen, load_keypair, load_public, make_client
    keygen(str(tmp_path / "hub"), "hub")
    keygen(str(tmp_path / "daemons"), "rogue")
    daemon_port, beat_port = free_port(), free_port()
    endpoint = f"ipc://{tmp_path}/hub.sock"
    proc = subprocess.Popen(ZBRIDGE + [
        "serve", "--bind", endpoint, "--tools", BASIC, "--workers", "0", "--heartbeat-interval", "5",
        "--curve-secret", str(tmp_path / "hub" / "hub.key_secret"),
        "--curve-daemons", str(tmp_path / "daemons"),
        "--daemon-bind", f"tcp://127.0.0.1:{daemon_port}", "--heartbeat-bind", f"tcp://127.0.0.1:{beat_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = zmq.Context()
    rogue = ctx.socket(zmq.DEALER)
    rogue.linger = 0
    rogue.rcvtimeo = 10_000
    rogue.setsockopt(zmq.IDENTITY, b"r-rogue")
    make_client(rogue, load_public(str(tmp_path / "hub" / "hub.key")),
                load_keypair(str(tmp_path / "daemons" / "rogue.key_secret")))
    try:
        rogue.connect(f"tcp://127.0.0.1:{daemon_port}")
        rogue.send(protocol.encode_ready(4242, ["f"], "0"))

        def rogue_admitted() -> bool:
            try:
                with zbridge.Client(endpoint, fallback=False, connect_timeout=1.0) as client:
                    return any(d["pid"] == 4242 for d in client.status(timeout=2)["daemons"])
            except zbridge.BridgeError:
                return False
        assert wait_until(rogue_admitted, timeout=20)
        yield endpoint, rogue
    finally:
        rogue.close(0)
        ctx.term()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def _answer_with_pickle(rogue: zmq.Socket, marker: str) -> None:
    """The rogue's reply to the next request it gets: a pickle whose loading runs its code."""
    import pickle
    try:
        header = protocol.read_header(rogue.recv())
    except zmq.Again:
        return
    body = pickle.dumps({"result": Planted(marker)}, protocol=5)
    rogue.send(protocol.pack_header(protocol.Kind.REPLY, header.id, 0, protocol.FLAG_PICKLE) + body)


def test_a_rogue_daemons_pickle_never_runs_in_a_client(tmp_path, bridge_factory):
    """A daemon with an allowed key answers with FLAG_PICKLE. Before: a msgpack Client in a
    process that also built a local pickle Bridge unpickled it (the opt-in was process-wide,
    the broker forwarded the flag), and a pickle Client's request reached the remote daemon."""
    import threading
    bridge_factory(BASIC, serializer="pickle")  # a local pickle Bridge in this process
    with rogue_daemon_hub(tmp_path) as (endpoint, rogue):
        marker = str(tmp_path / "rogue-code-ran")
        answer = threading.Thread(target=_answer_with_pickle, args=(rogue, marker))
        answer.start()
        with zbridge.Client(endpoint, fallback=False) as client:
            with pytest.raises(zbridge.InternalError, match="pickle"):
                client.call("f", timeout=10)
        answer.join()
        assert not os.path.exists(marker)
        with zbridge.Client(endpoint, fallback=False, serializer="pickle") as client:
            with pytest.raises(zbridge.InvalidRequest, match="other hosts"):
                client.call("f", timeout=3)
        assert rogue.poll(300) == 0  # the pickle request never left the hub


def test_a_hub_with_a_tcp_daemon_endpoint_refuses_pickle(tmp_path):
    """Bridge(serializer="pickle", daemon_bind="tcp://...") used to be accepted."""
    from zbridge.security import keygen
    _, secret = keygen(str(tmp_path), "hub")
    with pytest.raises(ValueError, match="tcp://127.0.0.1"):
        zbridge.Bridge(BASIC, serializer="pickle", curve_secret=secret, curve_daemons=str(tmp_path),
                       daemon_bind=f"tcp://127.0.0.1:{free_port()}",
                       heartbeat_bind=f"tcp://127.0.0.1:{free_port()}")


# --- receivers never amplify --------------------------------------------------------------

def test_a_buffer_frame_referenced_1024_times_is_refused_without_amplifying(tmp_path):
    """A 1 MiB buffer frame referenced 1,024 times from a 1 KiB body: the daemon used to
    build 1,024 copies (peak RSS +1 GiB); now the second reference is -32602 and the
    daemon's peak grows by less than a few frames' worth."""
    import msgpack
    ref = msgpack.ExtType(11, msgpack.packb([0, "b", None]))
    body = msgpack.packb({"method": "pid", "params": [[ref] * 1024]})
    frame = protocol.pack_header(protocol.Kind.REQUEST, 1, 30_000) + body
    with hub_at_fd_limit(tmp_path, limit=4096) as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:
            daemon = client.status()["daemons"][0]["pid"]
        reset_peak_rss(daemon)
        before = status_kib(daemon, "VmRSS")
        with raw_dealer(endpoint) as sock:
            sock.send_multipart([frame, b"\0" * (1 << 20)])
            reply = protocol.decode_reply_body(sock.recv())
        grew_mib = (status_kib(daemon, "VmHWM") - before) / 1024
        assert grew_mib < 16, f"daemon peak RSS grew by {grew_mib:.0f} MiB"
        assert reply["error"]["code"] == -32602, reply
        assert "referenced more than once" in reply["error"]["message"]


# --- memory per message bounded before it is spent ---------------------------------------

def test_the_documented_worst_message_is_refused_by_the_hub_and_held_once(tmp_path):
    """The worst case docs/PROTOCOL.md states for one message: 1 + 64 frames of
    max_message_size each (libzmq bounds each frame, zbridge the frames). The hub refuses it
    (-32700: over max_message_size in all; it used to forward it, every frame fitting) after
    holding it once, and the daemon never sees it."""
    import msgpack
    limit = 1 << 20
    refs = [msgpack.ExtType(11, msgpack.packb([i, "b", None])) for i in range(64)]
    body = msgpack.packb({"method": "pid", "params": [refs]})
    frame = protocol.pack_header(protocol.Kind.REQUEST, 1, 30_000) + body
    with hub_at_fd_limit(tmp_path, "--max-message-size", str(limit), limit=4096) as (endpoint, hub):
        with zbridge.Client(endpoint, fallback=False, max_message_size=limit) as client:
            daemon = client.status()["daemons"][0]["pid"]
        for pid in (hub.pid, daemon):
            reset_peak_rss(pid)
        hub_before, daemon_before = status_kib(hub.pid, "VmRSS"), status_kib(daemon, "VmRSS")
        with raw_dealer(endpoint) as sock:
            sock.send_multipart([frame] + [b"\1" * limit for _ in range(64)])
            reply = protocol.decode_reply_body(sock.recv())
        hub_grew = (status_kib(hub.pid, "VmHWM") - hub_before) * 1024
        daemon_grew = (status_kib(daemon, "VmHWM") - daemon_before) * 1024
        assert daemon_grew < 8 * limit, f"the daemon grew by {daemon_grew / limit:.0f} MiB"
        assert hub_grew < 1.2 * 65 * limit, f"the hub grew by {hub_grew / limit:.0f} MiB"
        assert reply["error"]["code"] == -32700 and "limit" in reply["error"]["message"], reply


def test_an_oversized_argument_is_refused_before_it_is_encoded():
    """`call("echo", ["x" * 500 MiB])` used to encode 500 MiB (+1.4 GiB peak) before saying
    it was too large; now the caller's peak memory does not grow by the argument's size."""
    text = "x" * (500 << 20)
    me = os.getpid()
    reset_peak_rss(me)
    before = status_kib(me, "VmRSS")
    with zbridge.Client("ipc:///nonexistent/zbridge-test.sock", fallback=False) as client:
        with pytest.raises(zbridge.InvalidRequest) as refused:
            client.call("echo", [text])
    grew_mib = (status_kib(me, "VmHWM") - before) / 1024
    assert grew_mib < 50, f"the caller grew by {grew_mib:.0f} MiB"
    assert "before encoding" in str(refused.value)


# --- one reading of a message ---------------------------------------------------------------

def test_duplicate_method_keys_are_refused_and_cannot_forge_log_lines(tmp_path):
    """The hub read the first "method" key, the daemon ran the last: this request ran
    exit_hard while the hub's log and statistics named the first one, whose newline and
    ESC forged a log line. Now the daemon refuses the body (-32600) and runs nothing."""
    import msgpack
    forged = "exit_hard\n\x1b[2Kzbridge INFO zbridge.hub: forged line"
    body = (b"\x83" + msgpack.packb("method") + msgpack.packb(forged)
            + msgpack.packb("method") + msgpack.packb("exit_hard") + msgpack.packb("params") + b"\x90")
    frame = protocol.pack_header(protocol.Kind.REQUEST, 1, 30_000) + body
    with hub_at_fd_limit(tmp_path, limit=4096) as (endpoint, _):
        log = tmp_path / "serve.log"
        with zbridge.Client(endpoint, fallback=False) as client:
            daemon = client.status()["daemons"][0]["pid"]
            with raw_dealer(endpoint) as sock:
                sock.send(frame)
                reply = protocol.decode_reply_body(sock.recv())
            time.sleep(0.5)  # what the hub would log about it, logged
            status = client.status()
            assert [d["pid"] for d in status["daemons"]] == [daemon], "the daemon ran exit_hard"
            assert reply["error"]["code"] == -32600 and "'method'" in reply["error"]["message"], reply
            assert not any("forged" in name for name in status["tools"])
            assert client.call("echo", ["still here"]) == "still here"
        text = log.read_text()
        assert "\x1b" not in text
        assert not any(line.startswith("zbridge INFO zbridge.hub: forged") for line in text.splitlines())


def test_five_thousand_made_up_names_do_not_hide_a_real_tool(tmp_path):
    """Per-tool statistics had 256 slots for whatever names callers sent: 5,000 unknown
    names filled them and `echo`, called later, was counted in "(other)"."""
    with hub_at_fd_limit(tmp_path, limit=4096) as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:
            made_up = client.call_many([(f"nosuch{i}", []) for i in range(5000)], return_exceptions=True)
            assert all(isinstance(e, zbridge.ToolNotFound) for e in made_up)
            for i in range(3):
                assert client.call("echo", [i]) == i
            tools = client.status()["tools"]
    assert tools["echo"]["calls"] == 4  # and the call the hub fixture made at start
    assert tools["(other)"]["calls"] == 5000 and tools["(other)"]["errors"] == {"-32601": 5000}
    assert len(tools) <= 3, sorted(tools)


def test_the_fd_reserve_leaves_room_for_the_hub_itself():
    from zbridge.fdguard import Headroom
    small, roomy = Headroom.for_hub(256, 1), Headroom.for_hub(20_000, 4)
    assert 0 < small.resume_at < small.pause_at < 256 and not small.cramped
    assert roomy.limit - roomy.pause_at == roomy.reserve < 200
    cramped = Headroom.for_hub(256, 64)  # a limit too low for the pool: clients get half
    assert cramped.cramped and cramped.pause_at == 128


def test_a_paused_ipc_listener_refuses_connects_and_resumes_as_it_was(tmp_path):
    from zbridge.fdguard import IpcListener
    path = str(tmp_path / "hub.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(4)
        listener = IpcListener(path)
        listener.pause()
        with socket.socket(socket.AF_UNIX) as client, pytest.raises(FileNotFoundError):
            client.connect(path)
        listener.resume()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            conn, _ = server.accept()
            conn.close()
