"""Instant "no hub" (issue 23): a client whose endpoint has no hub fails at once with a
did-not-run PoolUnavailable saying so and what to run, instead of waiting its
connect_timeout; a hub that exists but does not answer is named, with its pid.

No timing thresholds: the clients here get a 30 s connect_timeout, so a call that fails
at all before the test's own timeout did not wait for it (the old code waited it out)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess

import pytest

import zbridge
from helpers import TOOLSETS, ZBRIDGE, free_port, served, stop
from zbridge import presence

OPERATING = str(TOOLSETS / "operating.py")
PATIENT = 30.0  # connect_timeout: the old code waited this long before failing


def _fails_at_once(endpoint: str, match: str) -> zbridge.PoolUnavailable:
    with zbridge.Client(endpoint, fallback=False, connect_timeout=PATIENT) as client:
        with pytest.raises(zbridge.PoolUnavailable, match=match) as info:
            client.call("nap", [0])
    assert info.value.data["cause"] == "unreachable"
    assert isinstance(info.value, zbridge.errors.DidNotRun)
    return info.value


@pytest.mark.timeout(20)
def test_no_socket_file_fails_at_once_and_says_what_to_run(tmp_path):
    endpoint = f"ipc://{tmp_path}/hub.sock"
    error = _fails_at_once(endpoint, "no socket file")
    assert f"zbridge serve --tools MODULE --bind {endpoint}" in str(error)


@pytest.mark.timeout(20)
def test_a_socket_left_by_a_dead_hub_fails_at_once(tmp_path):
    path = tmp_path / "hub.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(path))  # bound, never listening: connections are refused, as after a crash
    try:
        _fails_at_once(f"ipc://{path}", "nothing listens")
    finally:
        left.close()


@pytest.mark.timeout(20)
def test_a_refused_loopback_port_fails_at_once():
    _fails_at_once(f"tcp://127.0.0.1:{free_port()}", "connection refused")


@pytest.mark.timeout(20)
def test_the_async_client_fails_at_once_too(tmp_path):
    async def main() -> None:
        async with zbridge.AsyncClient(f"ipc://{tmp_path}/hub.sock", fallback=False,
                                       connect_timeout=PATIENT) as client:
            with pytest.raises(zbridge.PoolUnavailable, match="no socket file"):
                await client.call("nap", [0])
    asyncio.run(main())


@pytest.mark.timeout(30)
def test_with_the_tools_known_the_call_falls_back_at_once(tmp_path):
    with zbridge.Client(f"ipc://{tmp_path}/hub.sock", tools=[OPERATING],
                        connect_timeout=PATIENT) as client:
        assert client.call("nap", [0]) == 0  # it never left, so the one-shot pipe may run it


@pytest.mark.timeout(30)
def test_zbridge_call_and_status_without_a_hub_fail_at_once(tmp_path):
    endpoint = f"ipc://{tmp_path}/hub.sock"
    out = subprocess.run(ZBRIDGE + ["call", "ping", "--endpoint", endpoint, "--connect-timeout", str(PATIENT)],
                         capture_output=True, text=True, timeout=25)
    assert out.returncode == 1 and "no socket file" in out.stderr and "zbridge serve" in out.stderr
    out = subprocess.run(ZBRIDGE + ["status", "--endpoint", endpoint], capture_output=True, text=True, timeout=25)
    assert out.returncode == 1 and "no hub at" in out.stderr


def test_a_hub_once_it_appears_is_used_by_the_same_client(tmp_path):
    endpoint = f"ipc://{tmp_path}/hub.sock"
    with zbridge.Client(endpoint, fallback=False) as client:
        with pytest.raises(zbridge.PoolUnavailable):
            client.status()
        with served(tmp_path, "--tools", OPERATING, endpoint=endpoint):
            assert client.call("nap", [0]) == 0  # the same thread's socket connected meanwhile


def test_wait_ready_waits_for_a_hub_that_is_still_starting(tmp_path):
    endpoint = f"ipc://{tmp_path}/hub.sock"
    proc = subprocess.Popen(ZBRIDGE + ["serve", "--tools", OPERATING, "--bind", endpoint],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # the hub has not bound its socket yet: a call would fail at once, wait_ready waits
        with zbridge.Client(endpoint, fallback=False) as client:
            assert client.wait_ready(timeout=30)["daemons"]
    finally:
        stop(proc)


def test_a_stopped_hub_is_named_with_its_pid(tmp_path):
    with served(tmp_path, "--tools", OPERATING) as (endpoint, proc):
        assert presence.hub_pid(endpoint) == proc.pid and presence.absent(endpoint) is None
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            with zbridge.Client(endpoint, fallback=False, connect_timeout=1.0) as client:
                with pytest.raises(zbridge.PoolUnavailable) as info:
                    client.status(timeout=1.0)
            text = str(info.value)
            assert f"hub pid {proc.pid}" in text and "stopped" in text and "kill -CONT" in text
        finally:
            os.kill(proc.pid, signal.SIGCONT)


def test_a_silent_hub_is_named_from_the_socket_owner(tmp_path):
    path = tmp_path / "hub.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)  # accepts (the kernel does), never answers
    try:
        endpoint = f"ipc://{path}"
        assert presence.absent(endpoint) is None and presence.hub_pid(endpoint) == os.getpid()
        said = presence.silent(endpoint, 5.0)
        assert f"hub pid {os.getpid()}" in said and "within 5s" in said and "running but not answering" in said
    finally:
        listener.close()
