"""The pipe fallback: one ``zbridge-daemon --stdio`` subprocess for one call.

Slow (a fresh interpreter and fresh imports every call) but independent of the pool; used
when the pool is disabled or cannot serve a call that never ran. Answers with the same
results and error codes as the pool.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

from .config import Settings
from .errors import CallTimeout, InvalidParams, WorkerLost, error_from_wire
from .jsonrpc import encode_line, request_object
from .supervisor import _emit, describe_exit


def stdio_command(settings: Settings, tools: list[str]) -> list[str]:
    cmd = [settings.python or sys.executable, "-m", "zbridge_daemon", "--stdio"]
    for spec in tools:
        cmd += ["--tools", spec]
    return cmd


def call_once(settings: Settings, tools: list[str], tool: str, args: Any, timeout: float) -> Any:
    try:
        line = encode_line(request_object(1, tool, args))
    except (TypeError, ValueError) as exc:
        raise InvalidParams(f"arguments cannot be encoded as JSON: {exc}") from None
    proc = subprocess.Popen(stdio_command(settings, tools), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(line, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise CallTimeout(f"call timed out after {timeout}s (pipe fallback)") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for text in (err or b"").decode(errors="replace").splitlines():
        _emit(b"stdio", proc.pid, text)
    return _answer(out, err, proc.returncode)


def _answer(out: bytes, err: bytes, returncode: int) -> Any:
    first = out.split(b"\n", 1)[0]
    try:
        reply = json.loads(first)
    except ValueError:
        tail = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise WorkerLost(f"pipe daemon gave no reply ({describe_exit(returncode)}): {tail[0]}") from None
    if isinstance(reply, dict) and "error" in reply:
        raise error_from_wire(reply["error"])
    if not isinstance(reply, dict) or "result" not in reply:
        raise WorkerLost(f"pipe daemon gave a malformed reply: {first[:200]!r}")
    return reply["result"]
