"""Client logic shared by the sync and asyncio twins: building requests, reading replies,
setting up a DEALER. No I/O happens here."""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any, Generator, Sequence

import zmq

from . import fallback, pickling, presence, shield
from .wire import oversized
from .config import Settings, load_settings
from .endpoints import check_endpoint, default_endpoint
from .errors import (
    BridgeError,
    Cancelled,
    InternalError,
    InvalidParams,
    InvalidRequest,
    PoolUnavailable,
    error_from_wire,
)
from .protocol import (
    DEFAULT_WINDOW,
    FLAG_PICKLE,
    MAX_TIMEOUT_MS,
    MAX_WINDOW,
    check_traceparent,
    Kind,
    body_of,
    decode_partial,
    decode_reply_body,
    encode_request,
    message_size,
    read_header,
)
from .security import client_keys, make_client
from .sizing import lower_bound
from .tools import tool_specs

HUB_GRACE = 1.0       # how long past a deadline to wait for the hub's own CallTimeout
POLL_SLICE_MS = 250   # how often a waiting call notices close()


STREAM_WINDOW = DEFAULT_WINDOW  # items a stream may run ahead of its consumer


def closed_error() -> PoolUnavailable:
    """A call on a closed client: it never left."""
    return PoolUnavailable("client is closed", {"closing": True, "cause": "closing"})


def closed_while_waiting() -> Cancelled:
    """A call whose client was closed while it waited: it may have run."""
    return Cancelled("client closed while the call was waiting")


def build_request(settings: Settings, request_id: int, tool: str, args: Any, timeout: float,
                  idempotent: bool, window: int = 0, trace: str | None = None,
                  oob: list[Any] | None = None) -> bytes:
    """The request frame, or InvalidRequest/InvalidParams before anything is sent;
    ValueError for a ``trace`` that is not a W3C traceparent. With an ``oob`` list, large
    arrays and bytes are appended to it as buffer frames to send after the frame."""
    if not isinstance(tool, str) or not tool:
        raise InvalidRequest("tool name must be a non-empty string")
    if args is not None and not isinstance(args, (list, tuple, dict)):
        raise InvalidParams("args must be a list, a tuple, a dict or None")
    if window and not (isinstance(window, int) and 1 <= window <= MAX_WINDOW):
        raise ValueError(f"window must be an integer from 1 to {MAX_WINDOW}, not {window!r}")
    if trace is not None:
        check_traceparent(trace)
    timeout_ms = max(1, min(MAX_TIMEOUT_MS, int(timeout * 1000)))
    limit = settings.max_message_size
    least = lower_bound(args, limit)
    if least > limit:  # fail fast: never spend the time and memory to encode it
        raise InvalidRequest(f"arguments of at least {least} bytes cannot fit max_message_size="
                             f"{limit} (refused before encoding them)")
    try:
        frame = encode_request(request_id, tool, args, timeout_ms=timeout_ms, idempotent=idempotent,
                               window=window, trace=trace, pickle=settings.serializer == "pickle",
                               oob=oob)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidParams(f"arguments cannot be encoded: {exc}") from None
    size = message_size(body_of(frame), oob or ())
    if size > limit:  # the whole message (body and buffer frames) is bounded
        raise InvalidRequest(f"request is {size} bytes" + (f" (body and {len(oob)} buffer frames)" if oob else "")
                             + f", over max_message_size={limit}")
    return frame


def asked_pickle(request: bytes) -> bool:
    """Whether ``request`` was sent as pickle: only then may its reply be one."""
    return bool(request[4] & FLAG_PICKLE)


def reply_id(frame: bytes, any_kind: bool = False) -> int | None:
    """The request id a REPLY answers (with ``any_kind``: of any frame), or None; the one
    place a client reads a frame's request id."""
    try:
        header = read_header(frame)
    except BridgeError:
        return None
    return header.id if any_kind or header.kind is Kind.REPLY else None


def result_of(reply: bytes, max_size: int, buffers: Sequence[Any] = (), pickle: bool = False) -> Any:
    """The result in a REPLY (``buffers``: its buffer frames), or its error raised;
    ``pickle``: this reply answers a request sent as pickle (else a pickled one is refused)."""
    try:
        body = decode_reply_body(reply, max_size=max_size, buffers=buffers, pickle=pickle)
    except BridgeError as exc:
        raise InternalError(f"undecodable reply: {exc}") from None
    if "error" in body:
        raise error_from_wire(body["error"])
    return body["result"]


def configure_dealer(sock: zmq.Socket[Any], settings: Settings, curve: Any, connect_timeout: float) -> None:
    sock.linger = 0
    sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue a request for a hub we are not connected to
    sock.setsockopt(zmq.SNDTIMEO, int(connect_timeout * 1000))
    sock.setsockopt(zmq.RCVTIMEO, POLL_SLICE_MS)  # lets a waiting call notice close()
    sock.setsockopt(zmq.MAXMSGSIZE, settings.max_message_size + 4096)
    if curve:
        make_client(sock, *curve)


class ClientCore:
    """What every client twin holds: settings, endpoint, tools for the fallback, ids, keys."""

    def _init_core(self, endpoint: str | None, tools: Any, settings: Settings | None,
                   connect_timeout: float, overrides: dict[str, Any]) -> None:
        self.settings = settings or load_settings(**overrides)
        # no endpoint: the one `zbridge serve` listens on by default
        self.endpoint = endpoint or (default_endpoint() if self.settings.pool_enabled else None)
        check_endpoint(self.endpoint)  # before zmq, which only says "Invalid argument"
        # this object (not the process) decodes the pickled replies to its pickle requests
        self.pickle = self.settings.serializer == "pickle"
        pickling.refuse_remote(self.settings.serializer, self.endpoint)  # ValueError over tcp
        self.tools = tool_specs(tools)
        self.connect_timeout = connect_timeout
        self._ids = itertools.count(1)
        self._closed = False
        self._pid = os.getpid()
        self._curve = client_keys(self.settings.curve_server_key, self.settings.curve_secret) \
            if self.settings.curve_server_key else None
        # one-shot subprocesses are slow and heavy: never more of them at once than daemons
        self._fallback_slots = threading.BoundedSemaphore(max(1, self.settings.workers))

    def _forked(self) -> bool:
        return os.getpid() != self._pid

    def _check(self) -> None:
        """Raise why this client cannot take a call now: closed, a forked child's copy,
        or called from inside one of this thread's own calls."""
        if self._forked():
            raise PoolUnavailable(
                f"this client was made in process {self._pid}; a forked child ({os.getpid()}) "
                "cannot use it: make a new one after the fork", {"cause": "forked"})
        if self._closed:
            raise closed_error()
        if shield.inside():
            raise PoolUnavailable(
                "called from inside one of this thread's own calls (a signal or logging "
                "handler?): it would wait for itself", {"cause": "reentrant"})

    def timeout_of(self, timeout: float | None) -> float:
        """A call's timeout in seconds: the given one, or the ``timeout`` setting."""
        if timeout is None:
            return self.settings.timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        return float(timeout)

    def _unreachable(self) -> PoolUnavailable:
        """A call that could not be sent: no hub, a stopped one, or one that does not answer."""
        return PoolUnavailable(presence.unreachable(self.endpoint), {"cause": "unreachable"})

    def _can_fallback(self) -> bool:
        """The pipe fallback needs to know the tools: a bare Client of a served hub cannot."""
        return (self.settings.fallback and not self._closed and bool(self.tools)
                and self.settings.serializer != "pickle")  # the one-shot pipe carries msgpack only

    def _one_shot_call(self, tool: str, args: Any, timeout: float) -> Any:
        with self._fallback_slots:
            return fallback.call_once(self.settings, self.tools, tool, args, timeout)

    def _one_shot_stream(self, tool: str, args: Any, timeout: float) -> Generator[Any, None, None]:
        with self._fallback_slots:
            items = fallback.stream_once(self.settings, self.tools, tool, args, timeout)
            try:
                yield from items
            finally:
                items.close()


def credit_due(consumed: int, window: int) -> bool:
    """Return credit once half the window is consumed: the producer never stalls on a
    consumer that keeps up, and never runs more than a window ahead of one that does not."""
    return consumed >= max(1, window // 2)


def read_stream_message(frame: bytes, request_id: int, max_size: int,
                        buffers: Sequence[Any] = (), pickle: bool = False) -> tuple[str, Any] | None:
    """A message for stream ``request_id`` as ("item", value), ("end", None) or
    ("error", BridgeError); None when it belongs to something else. ``pickle`` as for
    ``result_of``."""
    try:
        header = read_header(frame)
    except BridgeError:
        return None
    if header.id != request_id:
        return None
    if header.kind is Kind.PARTIAL:
        try:
            return "item", decode_partial(frame, max_size=max_size, buffers=buffers, pickle=pickle)
        except BridgeError as exc:
            return "error", InternalError(f"undecodable stream item: {exc}")
    if header.kind is Kind.REPLY:
        try:
            result_of(frame, max_size, buffers, pickle)
        except BridgeError as exc:
            return "error", exc
        return "end", None
    return None


def ready_count(status: dict[str, Any]) -> int:
    """Daemons that can take a call now or after their current one."""
    return sum(1 for d in status.get("daemons", []) if d.get("state") in ("idle", "busy"))


def readiness(status: dict[str, Any], wanted: int, settings: Settings) -> str:
    """"ready", "wait", or "failed" (starts keep failing: waiting longer will not help)."""
    if status.get("pool_enabled") is False or ready_count(status) >= wanted:
        return "ready"
    starting = any(d.get("state") == "starting" for d in status.get("daemons", []))
    failed = status.get("counters", {}).get("start_failures", 0) >= settings.start_retries
    return "failed" if failed and not starting and status.get("last_start_error") else "wait"


def not_ready_error(status: dict[str, Any], wanted: int, timeout: float) -> PoolUnavailable:
    cause = status.get("last_start_error")
    why = f": {cause.strip().splitlines()[0]}" if cause else ""
    data = {"cause": status.get("last_start_cause") or "start_failed"}
    if cause:
        data["stderr"] = cause
    return PoolUnavailable(f"{ready_count(status)} of {wanted} daemons ready after {timeout}s{why}", data)
