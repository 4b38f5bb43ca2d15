"""Helpers shared by tests (imported, unlike conftest's fixtures): real servers and raw peers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import zmq

from zbridge import protocol

TOOLSETS = Path(__file__).parent / "toolsets"
ZBRIDGE = [sys.executable, "-m", "zbridge.cli"]

# Every process this test session starts inherits this tag, so the leak check sees our
# daemons (even orphaned ones) and never another program's.
SESSION_TAG = f"ZBRIDGE_TEST_SESSION={uuid.uuid4().hex}".encode()
os.environ["ZBRIDGE_TEST_SESSION"] = SESSION_TAG.split(b"=", 1)[1].decode()


def daemon_pids() -> set[int]:
    """Pids of live zbridge daemon processes started by this test session."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            if b"zbridge_daemon" not in cmdline:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if SESSION_TAG in environ and state != "Z":
            pids.add(int(entry))
    return pids


def child_pids() -> set[int]:
    """Live (not zombie) direct children of this test process: serve hubs, pipes, embedders."""
    me = str(os.getpid())
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            pids.add(int(entry))
    return pids


def leftovers(before: set[int]) -> set[int]:
    return (daemon_pids() | child_pids()) - before






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
    # a file, not a pipe nobody reads: a long test's log must never fill a pipe and stop the hub
    log = open(directory / "serve.log", "w+b")
    proc = subprocess.Popen(ZBRIDGE + ["serve", "--bind", endpoint, *args],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        def up() -> bool:
            try:
                with zbridge.Client(endpoint, fallback=False, connect_timeout=1.0) as client:
                    client.status(timeout=1.0)
                return True
            except zbridge.BridgeError:
                return proc.poll() is not None
        assert wait_until(up, timeout=20) and proc.poll() is None, (directory / "serve.log").read_text()
        yield endpoint, proc
    finally:
        stop(proc)
        log.close()


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


def default_sigint() -> None:
    """preexec_fn for children a test interrupts: a CI runner may start us with SIGINT
    ignored (a background job), and a child inherits that; Ctrl-C must reach it."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def status_kib(pid: int, field: str, file: str = "status") -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM...), or of another such file
    (``smaps_rollup``: Pss, Private_Dirty...)."""
    with open(f"/proc/{pid}/{file}") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def reset_peak_rss(pid: int) -> None:
    """Set VmHWM back to the current RSS, so a later VmHWM is the peak from now on."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def processes_matching(needle: bytes) -> set[int]:
    """Pids of live processes started by this test session whose command line contains
    ``needle`` (other programs running zbridge beside the tests are never counted)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle not in f.read():
                        continue
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if SESSION_TAG in f.read().split(b"\0"):
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
