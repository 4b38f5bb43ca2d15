"""What hub silence means to a daemon: a local one trusts its lifeline, a remote one
reconnects and registers again by itself."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import zmq

import zbridge
from zbridge.protocol import encode_disconnect, encode_heartbeat, encode_request, read_header, Kind
from helpers import wait_until
from test_cli import ZBRIDGE, free_port
from test_security import key, keys  # noqa: F401 - keys is a fixture


@pytest.fixture
def fake_hub(tmp_path):
    """The hub's two daemon-side sockets, driven by hand."""
    ctx = zmq.Context()
    backend, beats = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    for sock in (backend, beats):
        sock.linger = 0
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    backend.bind(f"ipc://{tmp_path}/b.sock")
    beats.bind(f"ipc://{tmp_path}/h.sock")
    try:
        yield backend, beats, tmp_path
    finally:
        ctx.destroy(0)


def daemon(tmp_path, tools, *extra, **popen):
    return subprocess.Popen([sys.executable, "-m", "zbridge_daemon", "--connect", f"ipc://{tmp_path}/b.sock",
                             "--heartbeat", f"ipc://{tmp_path}/h.sock", "--heartbeat-interval", "0.1",
                             "--identity", "d-test", "--tools", tools, *extra],
                            stderr=subprocess.DEVNULL, **popen)


def next_kind(sock: zmq.Socket, timeout: float) -> tuple[bytes, Kind, bytes] | None:
    if not sock.poll(timeout * 1000):
        return None
    ident, frame = sock.recv_multipart()
    return ident, read_header(frame).kind, frame


def beat_for(beats: zmq.Socket, ident: bytes, seconds: float) -> None:
    """Answer the daemon's beats for a while, as a live hub does."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if beats.poll(50):
            beats.recv_multipart()
        beats.send_multipart([ident, encode_heartbeat()])


def call(backend: zmq.Socket, ident: bytes, request_id: int, tool: str, args) -> dict:
    backend.send_multipart([ident, encode_request(request_id, tool, args, timeout_ms=5000)])
    assert backend.poll(10000), "no reply"
    _, frame = backend.recv_multipart()
    header = read_header(frame)
    assert header.kind is Kind.REPLY and header.id == request_id
    return frame


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_remote_daemon_reconnects_and_registers_again(fake_hub, basic_tools):
    backend, beats, tmp_path = fake_hub
    proc = daemon(tmp_path, basic_tools)
    try:
        first = next_kind(backend, 20)
        assert first and first[1] is Kind.READY
        beat_for(beats, first[0], 0.5)
        # silence: the daemon must not exit, it comes back with a fresh READY
        again = next_kind(backend, 10)
        assert again and again[1] is Kind.READY and again[0] == first[0]
        assert proc.poll() is None
        beat_for(beats, first[0], 0.3)
        call(backend, first[0], 7, "add", [1, 2])  # served on the new connection
        backend.send_multipart([first[0], encode_disconnect("test over")])
        assert proc.wait(timeout=10) == 0
    finally:
        stop(proc)


def test_exit_on_hub_loss_keeps_the_old_behaviour(fake_hub, basic_tools):
    backend, beats, tmp_path = fake_hub
    proc = daemon(tmp_path, basic_tools, "--exit-on-hub-loss")
    try:
        assert next_kind(backend, 20)[1] is Kind.READY
        assert proc.wait(timeout=10) == 0
    finally:
        stop(proc)


def test_local_daemon_trusts_its_lifeline_not_heartbeats(fake_hub, basic_tools):
    backend, beats, tmp_path = fake_hub
    proc = daemon(tmp_path, basic_tools, "--lifeline", stdin=subprocess.PIPE, start_new_session=True)
    try:
        ready = next_kind(backend, 20)
        assert ready and ready[1] is Kind.READY
        # the hub says nothing for 10x interval x misses (an embedder holding the GIL)
        assert next_kind(backend, 3.0) is None and proc.poll() is None
        call(backend, ready[0], 1, "add", [2, 2])
        proc.stdin.close()  # the lifeline ends: the daemon goes at once
        assert proc.wait(timeout=10) in (0, -signal.SIGKILL)
    finally:
        stop(proc)


def test_remote_daemon_re_registers_with_a_restarted_hub(keys, basic_tools):  # noqa: F811
    ports = [free_port() for _ in range(3)]
    endpoint = f"tcp://127.0.0.1:{ports[0]}"
    serve = ZBRIDGE + [
        "serve", "--workers", "0", "--bind", endpoint, "--heartbeat-interval", "0.2",
        "--curve-secret", key(keys, "hub", "server", True), "--curve-clients", str(keys / "clients"),
        "--curve-daemons", str(keys / "daemons"), "--daemon-bind", f"tcp://127.0.0.1:{ports[1]}",
        "--heartbeat-bind", f"tcp://127.0.0.1:{ports[2]}"]
    curve = dict(curve_server_key=key(keys, "hub", "server"), curve_secret=key(keys, "clients", "alice", True))
    remote = subprocess.Popen([
        sys.executable, "-m", "zbridge_daemon", "--connect", f"tcp://127.0.0.1:{ports[1]}",
        "--heartbeat", f"tcp://127.0.0.1:{ports[2]}", "--heartbeat-interval", "0.2",
        "--curve-secret", key(keys, "daemons", "d1", True), "--curve-server-key", key(keys, "hub", "server"),
        "--tools", basic_tools], stderr=subprocess.DEVNULL)
    hub = None
    try:
        for _ in range(2):  # the second hub never heard of this daemon: it must come back alone
            hub = subprocess.Popen(serve, stderr=subprocess.DEVNULL)
            with zbridge.Client(endpoint, fallback=False, **curve) as client:
                assert wait_until(lambda: _serves(client, remote.pid), timeout=30)
            hub.kill()
            hub.wait()
        assert remote.poll() is None
    finally:
        for proc in (hub, remote):
            if proc is not None:
                stop(proc)


def _serves(client: zbridge.Client, pid: int) -> bool:
    try:
        return client.call("pid", timeout=1) == pid
    except zbridge.BridgeError:
        return False


def test_remote_daemon_cut_off_mid_stream_reconnects(fake_hub, basic_tools):
    backend, beats, tmp_path = fake_hub
    proc = daemon(tmp_path, basic_tools)
    try:
        ready = next_kind(backend, 20)
        assert ready and ready[1] is Kind.READY
        beat_for(beats, ready[0], 0.3)
        # a stream with one item of credit: the daemon waits for CREDIT that never comes
        backend.send_multipart([ready[0], encode_request(3, "count", [100], timeout_ms=60000, window=1)])
        assert next_kind(backend, 10)[1] is Kind.PARTIAL
        kinds = []
        while not kinds or kinds[-1] is not Kind.READY:
            got = next_kind(backend, 10)
            assert got, f"daemon stuck after {kinds}"
            kinds.append(got[1])
        assert proc.poll() is None
    finally:
        stop(proc)
