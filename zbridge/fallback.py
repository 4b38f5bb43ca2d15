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
import threading
from typing import Any, Iterator

from .config import Settings
from .errors import CallTimeout, InvalidParams, WorkerLost, error_from_wire
from .jsonrpc import PARTIAL_METHOD, STREAM_METHOD, encode_line, request_object
from .supervisor import _emit, describe_exit


def stdio_command(settings: Settings, tools: list[str]) -> list[str]:
    cmd = [settings.python or sys.executable, "-m", "zbridge_daemon", "--stdio"]
    for spec in tools:
        cmd += ["--tools", spec]
    return cmd


def _request_line(method: str, params: Any) -> bytes:
    try:
        return encode_line(request_object(1, method, params))
    except (TypeError, ValueError) as exc:
        raise InvalidParams(f"arguments cannot be encoded as JSON: {exc}") from None


def _start(settings: Settings, tools: list[str], stderr: Any) -> subprocess.Popen:
    return subprocess.Popen(stdio_command(settings, tools), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)


def call_once(settings: Settings, tools: list[str], tool: str, args: Any, timeout: float) -> Any:
    line = _request_line(tool, args)
    proc = _start(settings, tools, subprocess.PIPE)
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


def stream_once(settings: Settings, tools: list[str], tool: str, args: Any,
                timeout: float) -> Iterator[Any]:
    """A tool's items from a one-shot pipe daemon, as they are written (``zbridge.stream``)."""
    line = _request_line(STREAM_METHOD, {"tool": tool, "args": args})
    proc = _start(settings, tools, None)  # stderr straight through: nothing to buffer
    timer = threading.Timer(timeout, _kill_group, args=(proc,))
    timer.start()
    try:
        proc.stdin.write(line)
        proc.stdin.close()
        streamed = 0
        for raw in proc.stdout:
            message = _decode(raw)
            if message is None:
                if not timer.is_alive():  # the line was cut short by our kill
                    break
                raise WorkerLost(f"pipe daemon gave a malformed line: {raw[:200]!r}")
            if message.get("method") == PARTIAL_METHOD:
                streamed += 1
                yield message["params"]["item"]
            elif "error" in message:
                raise error_from_wire(message["error"])
            elif "result" in message:
                _check_count(message["result"], streamed)
                return
        if not timer.is_alive():
            raise CallTimeout(f"stream timed out after {timeout}s (pipe fallback)")
        raise WorkerLost(f"pipe daemon ended the stream without a reply ({describe_exit(proc.wait())})")
    finally:
        timer.cancel()
        _kill_group(proc)
        proc.stdout.close()
        proc.wait()


def _decode(raw: bytes) -> dict | None:
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _check_count(result: Any, streamed: int) -> None:
    """The final reply counts the items sent; a mismatch means lines were lost or mixed up."""
    if not isinstance(result, dict) or result.get("items") != streamed:
        raise WorkerLost(f"pipe daemon ended a stream of {streamed} item(s) with {str(result)[:200]}")


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
