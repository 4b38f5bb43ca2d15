"""The pipe fallback: one ``zbridge-daemon --stdio-msgpack`` subprocess for one call.

Slow (a fresh interpreter and fresh imports every call) but independent of the pool; used
when the pool is disabled or cannot serve a call that never ran. It speaks the pool's own
frames (length-prefixed on the pipe, see ``zbridge.wire``), built and read by the
same functions as the pool's, so it answers with the same values and the same errors.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Any, Generator

from .config import Settings
from .daemonlog import forward
from .errors import BridgeError, CallTimeout, PoolUnavailable, WorkerLost, error_from_wire
from .protocol import Kind, decode_partial, decode_reply_body, read_header
from .state import describe_exit

REQUEST_ID = 1


def stdio_command(settings: Settings, tools: list[str]) -> list[str]:
    cmd = [settings.python or sys.executable, "-m", "zbridge_daemon", "--stdio-msgpack",
           "--no-expose-tracebacks" if settings.expose_tracebacks == "false" else "--expose-tracebacks"]
    for spec in tools:
        cmd += ["--tools", spec]
    return cmd


def _request(settings: Settings, tool: str, args: Any, timeout: float, stream: bool) -> bytes:
    """The request as written on the pipe (its frame and buffer frames, each with its
    prefix); InvalidParams/InvalidRequest as the pool raises."""
    from .wire import chunks

    from .calls import build_request  # calls imports this module
    buffers: list[Any] = []
    frame = build_request(settings, REQUEST_ID, tool, args, timeout, False,
                          window=1 if stream else 0, oob=buffers)
    return b"".join(chunks(frame, buffers))


def _start(settings: Settings, tools: list[str], stderr: Any) -> subprocess.Popen[bytes]:
    command = stdio_command(settings, tools)
    try:
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr, start_new_session=True)
    except OSError as exc:  # e.g. a `python` setting naming no interpreter: the call never ran
        raise PoolUnavailable(f"cannot start the one-shot pipe daemon {command[0]!r}: {exc}",
                              {"cause": "start_failed"}) from None


def call_once(settings: Settings, tools: list[str], tool: str, args: Any, timeout: float) -> Any:
    data = _request(settings, tool, args, timeout, stream=False)
    proc = _start(settings, tools, subprocess.PIPE)
    try:
        out, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise CallTimeout(f"call timed out after {timeout}s (pipe fallback)") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for text in (err or b"").decode(errors="replace").splitlines():
        forward(b"stdio", proc.pid, text)
    return _answer(settings, out, err, proc.returncode)


def _answer(settings: Settings, out: bytes, err: bytes, returncode: int) -> Any:
    import io
    try:
        kind, body = _read_message(settings, io.BytesIO(out))
    except WorkerLost as exc:
        tail = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise WorkerLost(f"{exc} ({describe_exit(returncode)}): {tail[0]}") from None
    if kind is not Kind.REPLY:
        raise WorkerLost(f"pipe daemon answered a call with {kind.name}")
    return _outcome(body)


def _read_message(settings: Settings, stream: Any) -> tuple[Kind, Any]:
    """(kind, body) of the next frame: the reply map, or a streamed item."""
    from .wire import read as read_message
    try:
        message = read_message(stream, settings.max_message_size + 4096)
    except (EOFError, ValueError) as exc:
        raise WorkerLost(f"pipe daemon gave a broken frame: {exc}") from None
    if message is None:
        raise WorkerLost("pipe daemon gave no reply")
    frame, buffers = message
    try:
        header = read_header(frame)
        if header.kind is Kind.PARTIAL:
            return header.kind, decode_partial(frame, max_size=settings.max_message_size,
                                               buffers=buffers)
        return header.kind, decode_reply_body(frame, max_size=settings.max_message_size,
                                              buffers=buffers)
    except BridgeError as exc:
        raise WorkerLost(f"pipe daemon gave a malformed frame: {exc}") from None


def _outcome(body: dict[str, Any]) -> Any:
    if "error" in body:
        raise error_from_wire(body["error"])
    return body["result"]


def stream_once(settings: Settings, tools: list[str], tool: str, args: Any,
                timeout: float) -> Generator[Any, None, None]:
    """A tool's items from a one-shot pipe daemon, as they are written."""
    data = _request(settings, tool, args, timeout, stream=True)
    proc = _start(settings, tools, None)  # stderr straight through: nothing to buffer
    timer = threading.Timer(timeout, _kill_group, args=(proc,))
    timer.start()
    assert proc.stdin is not None and proc.stdout is not None  # spawned with pipes
    try:
        try:
            proc.stdin.write(data)
        except BrokenPipeError:  # it exited before reading: the loop below reports how
            pass
        proc.stdin.close()
        streamed = 0
        while True:
            try:
                kind, body = _read_message(settings, proc.stdout)
            except WorkerLost:
                if not timer.is_alive():  # cut short by our kill
                    raise CallTimeout(f"stream timed out after {timeout}s (pipe fallback)") from None
                raise WorkerLost("pipe daemon ended the stream without a reply "
                                 f"({describe_exit(proc.wait())})") from None
            if kind is Kind.PARTIAL:
                streamed += 1
                yield body
                continue
            if kind is not Kind.REPLY:
                raise WorkerLost(f"pipe daemon sent {kind.name} in a stream")
            _check_count(_outcome(body), streamed)
            return
    finally:
        timer.cancel()
        _kill_group(proc)
        proc.stdout.close()
        proc.wait()


def _check_count(result: Any, streamed: int) -> None:
    """The final reply counts the items sent; a mismatch means frames were lost or mixed up."""
    if not isinstance(result, dict) or result.get("items") != streamed:
        raise WorkerLost(f"pipe daemon ended a stream of {streamed} item(s) with {str(result)[:200]}")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
