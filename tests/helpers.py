"""Helpers shared by tests (imported, unlike conftest's fixtures): real servers and raw peers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import zmq

from zbridge import protocol

TOOLSETS = Path(__file__).parent / "toolsets"
ZBRIDGE = [sys.executable, "-m", "zbridge.cli"]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@contextlib.contextmanager
def served(directory: Path, *args: str, endpoint: str | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``zbridge serve`` on a private ipc endpoint (or ``endpoint``); stopped with SIGTERM
    (then SIGKILL) after."""
    import zbridge
    endpoint = endpoint or f"ipc://{directory / 'hub.sock'}"
    proc = subprocess.Popen(ZBRIDGE + ["serve", "--bind", endpoint, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def up() -> bool:
            try:
                with zbridge.Client(endpoint, fallback=False, connect_timeout=1.0) as client:
                    client.status(timeout=1.0)
                return True
            except zbridge.BridgeError:
                return proc.poll() is not None
        assert wait_until(up, timeout=20) and proc.poll() is None, proc.stderr.read().decode()
        yield endpoint, proc
    finally:
        stop(proc)
        proc.stderr.close()


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; returns its status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


@contextlib.contextmanager
def raw_dealer(endpoint: str, context: zmq.Context | None = None,
               identity: bytes | None = None) -> Iterator[zmq.Socket]:
    """A bare DEALER, as a client in another language would hold."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.sndtimeo = 5000
    sock.rcvtimeo = 10000
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(0)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def processes_matching(needle: bytes) -> set[int]:
    """Pids of live processes whose command line contains ``needle``."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle in f.read():
                        found.add(int(entry))
            except OSError:
                continue
    return found


class PeakSampler:
    """Samples a count in a background thread; ``peak`` is the largest value seen."""

    def __init__(self, sample: Callable[[], int], interval: float = 0.005) -> None:
        self.peak = 0
        self._sample, self._interval = sample, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self._interval)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def status_request(id: int) -> bytes:
    return protocol.encode_status_request(id)
