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

from helpers import TOOLSETS, ZBRIDGE, fd_count, free_port, wait_until

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
        assert "accepting new connections again" in log.read_text()
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
