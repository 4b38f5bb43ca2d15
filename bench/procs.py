"""Child processes that are always cleaned up, private ipc directories, and RSS."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterator, TypeVar

PACKAGE = __package__ or "zbridge_bench"  # "bench" run from a clone, "zbridge_bench" installed
SERVERS = f"{PACKAGE}.servers"              # the far side of the floor and zerorpc cases
# a clone's root, where `python -m bench.servers` finds the package; an installed package
# is found from anywhere
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) if PACKAGE == "bench" else None
STOP_TIMEOUT = 10.0
T = TypeVar("T")


@contextlib.contextmanager
def child(argv: list[str], *, stdin: int | None = subprocess.DEVNULL,
          stdout: int | None = subprocess.DEVNULL, pass_fds: tuple[int, ...] = ()) -> Iterator[subprocess.Popen]:
    """Run ``argv`` in its own session (Ctrl-C reaches only us; we stop it in ``finally``).

    stderr goes to a temporary file so a failure can say why (``stderr_tail``).
    """
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=errors, pass_fds=pass_fds,
                            cwd=CHECKOUT, start_new_session=True)
    proc.errors = errors  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        stop(proc)
        errors.close()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def stop(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """TERM the process group, KILL it if it lingers, close our ends of its pipes."""
    for stream in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            if stream is not None:
                stream.close()
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stderr_tail(proc: subprocess.Popen, lines: int = 5) -> str:
    errors = getattr(proc, "errors", None)
    if errors is None:
        return ""
    errors.seek(0)
    text = errors.read().decode(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:])


def check_alive(proc: subprocess.Popen, what: str) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited with {proc.returncode}: {stderr_tail(proc) or 'no stderr'}")


def wait_until(probe: Callable[[], T | None], what: str, timeout: float = 60.0,
               proc: subprocess.Popen | None = None) -> T:
    """Call ``probe`` until it returns something other than None (exceptions count as None)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if proc is not None:
            check_alive(proc, what)
        try:
            value = probe()
        except Exception as exc:  # noqa: BLE001 - not ready yet
            last, value = exc, None
        if value is not None:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s" + (f": {last}" if last else ""))


@contextlib.contextmanager
def private_dir() -> Iterator[str]:
    """A fresh 0700 directory for ipc endpoints (never a shared or world-visible path)."""
    with tempfile.TemporaryDirectory(prefix="zbridge-bench-") as path:
        os.chmod(path, 0o700)
        yield path


def ipc(directory: str, name: str) -> str:
    return f"ipc://{os.path.join(directory, name)}"


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` from /proc (Linux), or None if unavailable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None
