"""The pool behind one pipe: ``zbridge serve --stdio``.

The process reads JSON-RPC 2.0 lines on stdin (the same lines ``zbridge-daemon --stdio``
reads, parsed by ``zbridge.jsonrpc``) and answers each request with one line on stdout
carrying its id, while an embedded ``Bridge`` runs the usual pool of warm daemons with its
guarantees: deadlines and kills, restarts with backoff, recycling, status, metrics. It is
built on the public embedded API only (``Bridge.call``/``stream``/``call_many``/``status``).

Replies are written as calls finish, so a client may pipeline (several requests written
before it reads) and match replies by id; a client that writes one request and reads one
line never sees any other line. Method ``zbridge.status`` answers the pool's status map.

Threads are leader/followers: one thread at a time reads the next line (holding the read
lock), then runs that line's call itself while another thread takes over reading. So a
line-per-request client pays no hand-over between threads on the call's path, and at most
``max_in_flight`` lines are in flight: beyond that, further lines wait in the pipe (the
writer blocks), which bounds what the front holds. EOF on stdin: every call in flight is
answered, then the pool stops. Nothing but reply lines is written to stdout: the real
stdout is moved to a private descriptor first, and fd 1 points at stderr.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from typing import Any, BinaryIO, Callable

from .client import Client
from .config import Settings
from .errors import BridgeError, InternalError
from .jsonrpc import (STREAM_METHOD, Call, Invalid, answer, encode_replies, parse_line, partial_line,
                      resolve_stream_call, resolve_tool_call)

STATUS_METHOD = "zbridge.status"  # the pool's status map, as `zbridge status --json` shows it
SHUTDOWN_WAIT = 5.0  # seconds to write the answers of calls a signal cut short

log = logging.getLogger("zbridge.pipe")
Emit = Callable[[bytes], None]


class PipeFront:
    """Serves the lines of ``inp`` with ``bridge``, writing reply lines to ``out``."""

    def __init__(self, bridge: Client, inp: BinaryIO, out: BinaryIO, limit: int) -> None:
        self.bridge, self._inp, self._out = bridge, inp, out
        self._limit = max(1, limit)
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._state = threading.Lock()
        self._threads = self._idle = self._busy = 0
        self._eof = False
        self.finished = threading.Event()  # set once input ended and every line is answered

    def start(self) -> None:
        self._add_thread()

    def stop_reading(self) -> None:
        """Take no further line (a signal): ``finished`` once those in flight are answered."""
        with self._state:
            self._eof = True
            if self._busy == 0:
                self.finished.set()

    # --- threads -------------------------------------------------------------------------

    def _add_thread(self) -> None:
        """One more follower thread (called with no lock held)."""
        with self._state:
            self._threads += 1
            self._idle += 1
        threading.Thread(target=self._follow, name="zbridge-pipe", daemon=True).start()

    def _follow(self) -> None:
        while True:
            with self._read_lock:
                line = self._next_line()
                if line is None:
                    with self._state:
                        self._threads -= 1
                        self._idle -= 1
                        if self._busy == 0:
                            self.finished.set()
                    return
                with self._state:
                    self._idle -= 1
                    self._busy += 1
                    grow = self._idle == 0 and self._threads < self._limit
            if grow:  # nobody left to read the next line while this one runs
                self._add_thread()
            try:
                self._handle(line)
            except Exception:  # noqa: BLE001 - a bug here must not cost the front a thread
                log.exception("a line could not be answered: %.200r", line)
            finally:
                with self._state:
                    self._busy -= 1
                    self._idle += 1
                    if self._eof and self._busy == 0:
                        self.finished.set()

    def _next_line(self) -> bytes | None:
        """The next non-blank line, or None at EOF (or once reading stopped)."""
        while not self._eof:
            try:
                line = self._inp.readline()
            except (OSError, ValueError) as exc:  # stdin closed under us
                log.warning("stdin failed: %s", exc)
                line = b""
            if not line:
                self.stop_reading()
                return None
            if line.strip():
                return line
        return None

    # --- one line ------------------------------------------------------------------------

    def _handle(self, line: bytes) -> None:
        items, is_batch = parse_line(line)
        if is_batch:
            replies = self._batch(items)
        else:
            replies = [answer(items[0], self._run)]
        reply = encode_replies(replies, is_batch)
        if reply is not None:
            self._emit(reply)

    def _run(self, call: Call) -> Any:
        """The result of one request; BridgeError for a failure the caller should see."""
        try:
            if call.method == STREAM_METHOD:
                return self._stream(call)
            if call.method == STATUS_METHOD:
                return dict(self.bridge.status())
            tool, args = resolve_tool_call(call.method, call.params)
            return self.bridge.call(tool, args)
        except BridgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad line must not end the front
            log.exception("request %r failed in the pipe front", call.id)
            raise InternalError(f"the pipe front failed: {type(exc).__name__}: {exc}"[:500]) from None

    def _stream(self, call: Call) -> dict[str, int]:
        """``zbridge.stream``: each item as a ``zbridge.partial`` line as it comes, then the
        count; the pipe paces the tool (a blocked write stops the credit)."""
        tool, args = resolve_stream_call(call.params)
        count = 0
        for item in self.bridge.stream(tool, args):
            if not call.notification:  # nobody to tie the items to: run, drop them
                self._emit(partial_line(call.id, count, item))
            count += 1
        return {"items": count}

    def _batch(self, items: list[Call | Invalid]) -> list[dict[str, Any] | None]:
        """A batch's replies in order: its plain calls run concurrently (``call_many``),
        the rest (streams, status, invalid items) one by one."""
        plain: dict[int, tuple[str, Any]] = {}
        for i, item in enumerate(items):
            if isinstance(item, Call) and item.method not in (STREAM_METHOD, STATUS_METHOD):
                try:
                    plain[i] = resolve_tool_call(item.method, item.params)
                except BridgeError:
                    pass  # answered below, by _run, with the same error
        try:
            results = self.bridge.call_many(list(plain.values()), return_exceptions=True)
        except BridgeError as exc:  # e.g. the pool is closing: every call gets why
            results = [exc] * len(plain)
        outcomes = dict(zip(plain, results))

        def run(i: int, call: Call) -> Any:
            if i not in outcomes:
                return self._run(call)
            if isinstance(outcomes[i], BaseException):
                raise outcomes[i]
            return outcomes[i]
        return [answer(item, functools.partial(run, i)) for i, item in enumerate(items)]

    def _emit(self, data: bytes) -> None:
        with self._write_lock:
            try:
                self._out.write(data)
                self._out.flush()
            except (OSError, ValueError) as exc:  # the reader is gone: nobody to answer
                if not self._eof:
                    log.warning("stdout closed (%s): no more replies can be written; stopping", exc)
                self.stop_reading()


def protocol_stdout() -> BinaryIO:
    """The real stdout, moved to a private descriptor, with fd 1 (and ``sys.stdout``) pointed
    at stderr: nothing this process prints, from Python or C, can reach a reply line."""
    sys.stdout.flush()
    private = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(private, "wb")


def serve_stdio(tools: list[str], settings: Settings, drain_timeout: float,
                inp: BinaryIO | None = None) -> None:
    """Run the pipe front until EOF on stdin (or SIGTERM/SIGINT; a second one stops at once)."""
    from .bridge import Bridge
    out = protocol_stdout()
    bridge = Bridge(tools, settings=settings)
    print(f"zbridge pipe front {os.getpid()}: JSON-RPC lines on stdin, replies on stdout (tools: "
          f"{', '.join(tools) or 'none'}, workers: {settings.workers})", file=sys.stderr, flush=True)
    front = PipeFront(bridge, inp or sys.stdin.buffer, out, settings.max_in_flight)
    signalled = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)  # a second signal ends the process at once
        signalled.set()
        front.stop_reading()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        front.start()
        while not front.finished.wait(0.5) and not signalled.is_set():
            pass  # a timeout, so that a signal is seen while calls are in flight
    finally:
        if signalled.is_set():
            log.info("signal: calls in flight get up to %.1f s to finish", drain_timeout)
        bridge.close(drain_timeout)  # after EOF nothing runs any more: this only stops the pool
        front.finished.wait(SHUTDOWN_WAIT)  # the answers of calls the close cut short
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            out.close()
        except OSError:
            pass
