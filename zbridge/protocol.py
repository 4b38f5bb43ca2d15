"""The zmq wire format: a frame with a fixed binary header, then msgpack; a REQUEST, REPLY
or PARTIAL may be followed by up to MAX_BUFFERS buffer frames (large arrays and bytes out
of band, referenced from the body by extension type 11, see ``codec``).

Pure and socket-free. Layout (network byte order), 20 bytes::

    0  2s magic     b"ZB"
    2  B  version   2 (VERSION); bytes 0-2 keep this meaning in every version
    3  B  kind      Kind
    4  B  flags     bit 0: idempotent, bit 2: stream (request); bit 1: retire me (reply);
                    bit 3: prewarm (status); bit 4: the body is pickle (request, reply, partial)
    5  3x reserved  zero
    8  I  timeout   milliseconds, requests only (0 = hub default)
    12 Q  id        request id chosen by the client, echoed in the reply

The body after the header is msgpack: a request is ``{"method": str, "params": list|map|nil}``,
a reply ``{"result": any}`` or ``{"error": {"code", "message", "data"?}}``, ready
``{"pid", "tools", "version"}``, a status reply carries the status map as ``result``.
The hub reads only the header, so tool arguments are never decoded on the way.
Values beyond msgpack's own (datetime, tuple, numpy arrays, user types...) are msgpack
extension types, listed in ``codec``; control messages and errors use plain msgpack.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Sequence

import msgpack

from . import codec, pickling
from .errors import BridgeError, InvalidParams, InvalidRequest, ParseError

MAGIC = b"ZB"
VERSION = 2             # docs/PROTOCOL.md "Changes" says what each version changed
VERSIONS = (VERSION,)   # the versions this side serves (STATUS and version refusals name them)
HEADER = struct.Struct("!2sBBB3xIQ")
HEADER_SIZE = HEADER.size
FLAG_IDEMPOTENT = 0x01  # requests: the caller allows a retry
FLAG_RETIRE = 0x02      # replies: the daemon asks to be replaced (e.g. over max_rss_mb)
FLAG_STREAM = 0x04      # requests: the caller takes a generator tool's items one by one
FLAG_PREWARM = 0x08     # status requests: start every daemon up to `workers` now
FLAG_PICKLE = pickling.FLAG  # 0x10 requests, replies, partials: the body is pickle, not msgpack (local only)
FLAG_LONE = 0x20        # requests on a daemon's channel only: the caller is the only one out, so
                        # the daemon may wait for its next request awake (never sent to a hub)
REQUEST_FLAGS = FLAG_IDEMPOTENT | FLAG_STREAM | FLAG_PICKLE  # every other bit of a request must be zero
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
DEFAULT_MAX_QUEUE_BYTES = 256 * 1024 * 1024
DEFAULT_WINDOW = 64     # stream items a daemon may send ahead of the consumer's credit
MAX_WINDOW = 1024       # bounded so a stream's items always fit the sockets' queues (HWM 1000 each side)
EXIT_LOAD_FAILED = 3    # a daemon's exit status when its tools or start-up hooks failed
MAX_ID = 2**64 - 1
MAX_TIMEOUT_MS = 2**32 - 1
MAX_BUFFERS = codec.MAX_BUFFERS      # buffer frames after a REQUEST/REPLY/PARTIAL frame, at most
OOB_THRESHOLD = codec.OOB_THRESHOLD  # bytes from which an array or bytes value is its own frame


class Kind(IntEnum):
    REQUEST = 1     # client -> hub -> daemon
    REPLY = 2       # daemon -> hub -> client (also hub -> client for hub-made errors)
    READY = 3       # daemon -> hub, once, after tools loaded and start-up hooks ran
    HEARTBEAT = 4   # hub <-> daemon on the separate heartbeat socket
    DISCONNECT = 5  # hub -> daemon: exit now; daemon -> hub: I am leaving
    STATUS = 6      # client -> hub; answered with a REPLY whose result is the status map
    CANCEL = 7      # client -> hub: cancel request `id`; hub -> daemon (heartbeat socket): interrupt it
    PARTIAL = 8     # daemon -> hub -> client: one item of a streamed result
    CREDIT = 9      # client -> hub -> daemon: the consumer can take `n` more items
    LEASE = 10      # hub -> a local borrower (the lease desk): a daemon's channel is yours for call `id`
    CONTROL = 11    # client -> hub: scale, reload or stacks (capability "control"); one REPLY


_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", re.IGNORECASE)
_KINDS = {k.value: k for k in Kind}  # a dict lookup is ~10x cheaper than Kind(value)


@dataclass(frozen=True, slots=True)
class Header:
    kind: Kind
    id: int
    timeout_ms: int = 0
    flags: int = 0

    @property
    def idempotent(self) -> bool:
        return bool(self.flags & FLAG_IDEMPOTENT)


def add_flags(frame: bytes, flags: int) -> bytes:
    """The same frame with more header flags set."""
    return frame[:4] + bytes([frame[4] | flags]) + frame[5:]


def pack_header(kind: Kind, id: int, timeout_ms: int = 0, flags: int = 0) -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, flags, timeout_ms, id)


def read_header(frame: bytes | memoryview) -> Header:
    """Parse the fixed header; raises ParseError/InvalidRequest on anything else."""
    if len(frame) < HEADER_SIZE:
        raise ParseError(f"frame of {len(frame)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, version, kind, flags, timeout_ms, id = HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise ParseError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:  # before the reserved bytes: another version may use them
        raise version_error(version)
    if frame[5:8] != b"\0\0\0":
        raise InvalidRequest("reserved header bytes 5-7 must be zero")
    known = _KINDS.get(kind)
    if known is None:
        raise InvalidRequest(f"unknown message kind {kind}")
    return Header(known, id, timeout_ms, flags)


# --- versions and capabilities -----------------------------------------------------------

def version_error(version: int) -> InvalidRequest:
    """The error for a message in a protocol version this side does not serve."""
    served = " and ".join(str(v) for v in VERSIONS)
    return InvalidRequest(
        f"protocol version {version} is not served here: this hub speaks version {served} "
        f"(see 'Changes' in docs/PROTOCOL.md for what changed)", {"versions": list(VERSIONS)})


def refusal(frame: bytes | memoryview, error: BridgeError) -> bytes:
    """The one reply frame for a message ``read_header`` refused with ``error``.

    A message in another version is answered in that version's layout: bytes 0-2 (magic,
    version) mean the same in every version, and versions 1 and 2 share the 20-byte header,
    so the reply is a REPLY header carrying the sender's own version byte and request id
    (its call gets the error instead of waiting for a reply that never comes), then a plain
    msgpack error naming the versions served. Anything else unreadable gets the error with
    id 0 in this version, as the sender cannot be matched to a call.
    """
    if len(frame) >= HEADER_SIZE and bytes(frame[:2]) == MAGIC and frame[2] != VERSION:
        _, version, _, _, _, id = HEADER.unpack_from(frame)
        head = HEADER.pack(MAGIC, version, Kind.REPLY, 0, 0, id)
        return head + _packb_plain({"error": version_error(version).to_wire()})
    return encode_error(0, error)


def capabilities(pickle: bool = False, lease: bool = False) -> list[str]:
    """What a client of this version may ask for, per message (STATUS ``capabilities``):
    ``stream`` (REQUEST flag bit 2 and CREDIT), ``prewarm`` (STATUS flag bit 3), ``trace``
    (a REQUEST's ``trace`` member), ``control`` (the CONTROL message, kind 11: scale,
    reload, stacks, which an older hub refuses), ``pickle`` (REQUEST flag bit 4) only where
    the daemons decode pickle bodies, ``lease`` where a lease desk lends daemons to local
    clients (PROTOCOL.md §15). A later feature that changes what a client receives is listed
    here and takes effect only for a client that asks for it."""
    return ["stream", "prewarm", "trace", "control"] + (["pickle"] if pickle else []) + (["lease"] if lease else [])


def packb(obj: Any) -> bytes:
    """Values (tool arguments, results, stream items): msgpack with zbridge's extension types."""
    return codec.packb(obj)


def _packb_plain(obj: Any) -> bytes:
    """Control messages and errors: plain msgpack, as any msgpack library reads it."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def unpackb(data: bytes | memoryview, *, max_size: int = DEFAULT_MAX_MESSAGE,
            strict_map_key: bool = True, values: bool = True, buffers: Sequence[Any] = ()) -> Any:
    """Decode msgpack with size limits; a malformed body is a ParseError, a map with a
    repeated key an InvalidRequest, an extension value this side cannot rebuild (e.g. an
    unregistered user type, a second reference to a buffer frame) an InvalidParams naming
    it. ``values=False`` (control messages) leaves extension values undecoded.
    ``buffers``: the message's buffer frames, which buffer references point into;
    ``max_size`` bounds the body and its buffer frames together (``message_size``).

    unpackb already bounds every declared length by the size of the input, so a lying
    length prefix cannot make it allocate more than the frame it was given.
    """
    size = message_size(data, buffers) if buffers else len(data)
    if size > max_size:
        raise too_large(size, max_size, len(buffers))
    try:
        if buffers:
            return codec.unpack_value(data, buffers, strict_map_key=strict_map_key)
        if values:
            return codec.unpackb(data, strict_map_key=strict_map_key)
        return msgpack.unpackb(data, raw=False, strict_map_key=strict_map_key,
                               object_pairs_hook=codec.unique_keys)
    except codec.ValueDecodeError as exc:
        raise InvalidParams(f"cannot decode a value: {exc}"[:500]) from None
    except codec.DuplicateKeyError as exc:
        raise InvalidRequest(f"ambiguous body: {exc}"[:300]) from None
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            TypeError, UnicodeDecodeError, RecursionError, OverflowError) as exc:
        raise ParseError(f"undecodable msgpack body: {type(exc).__name__}: {exc}"[:300]) from None


def message_size(body: Any, buffers: Sequence[Any] = ()) -> int:
    """Bytes of a body (or frame) and its buffer frames together: what ``max_message_size``
    bounds."""
    return len(body) + sum(memoryview(b).nbytes for b in buffers)


def too_large(size: int, max_size: int, buffers: int = 0) -> ParseError:
    """The error for a message whose body and ``buffers`` buffer frames hold ``size`` bytes
    in all, over ``max_size``: every receiver (hub, daemon, client) refuses such a message,
    whatever each frame's size."""
    return ParseError(f"message of {size} bytes exceeds the {max_size}-byte limit"
                      + (f" (body and {buffers} buffer frames)" if buffers else ""))


def _unpickle(data: bytes | memoryview, max_size: int, buffers: Sequence[Any], allowed: bool) -> Any:
    """A pickle body (and its out-of-band buffers), only where this very decode may take
    pickle (``allowed``); InvalidRequest otherwise."""
    size = message_size(data, buffers)
    if size > max_size:
        raise too_large(size, max_size, len(buffers))
    if not allowed:
        raise InvalidRequest(pickling.REFUSED)
    try:
        return pickling.loads(data, buffers)
    except ValueError as exc:
        raise InvalidParams(str(exc)) from None


def _body(frame: bytes, max_size: int, strict_map_key: bool, buffers: Sequence[Any] = (),
          pickle: bool = False) -> Any:
    """The body of a value-carrying frame, pickle or msgpack as its header flag says;
    pickle only when ``pickle`` (this side asked for it)."""
    if len(frame) > 4 and frame[4] & FLAG_PICKLE:
        return _unpickle(body_of(frame), max_size, buffers, pickle)
    return unpackb(body_of(frame), max_size=max_size, strict_map_key=strict_map_key,
                   buffers=buffers)


def _pack_body(obj: Any, flags: int, oob: list[Any] | None = None) -> bytes:
    """The body; with an ``oob`` list, large arrays and bytes are appended to it as buffer
    frames to send after this one (``codec.pack_value``) instead of going in band."""
    if flags & FLAG_PICKLE:
        return pickling.dumps(obj, oob)
    if oob is None:
        return packb(obj)
    body, buffers = codec.pack_value(obj)
    oob.extend(buffers)
    return body


def body_of(frame: bytes | memoryview) -> memoryview:
    return memoryview(frame)[HEADER_SIZE:]


# --- requests ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Request:
    id: int
    method: str
    params: list[Any] | dict[str, Any] | None = None
    timeout_ms: int = 0
    flags: int = 0
    window: int = 0  # streams: items the daemon may send before it waits for CREDIT
    trace: str | None = None  # the caller's W3C traceparent, if it sent one

    @property
    def stream(self) -> bool:
        return bool(self.flags & FLAG_STREAM)

    @property
    def pickled(self) -> bool:
        return bool(self.flags & FLAG_PICKLE)


def check_traceparent(trace: str) -> str:
    """A W3C traceparent, checked loosely (shape only): ``00-<32 hex>-<16 hex>-<2 hex>``."""
    if not (isinstance(trace, str) and _TRACEPARENT.fullmatch(trace)):
        raise ValueError(f"not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>): {trace!r:.80}")
    return trace


def encode_request(id: int, method: str, params: Any = None, *, timeout_ms: int = 0,
                   idempotent: bool = False, window: int = 0, trace: str | None = None,
                   pickle: bool = False, oob: list[Any] | None = None) -> bytes:
    """A request; ``window`` > 0 asks for a stream with that many items of credit;
    ``trace`` is a W3C traceparent the daemon shows the tool (``zbridge.current_call()``);
    ``pickle`` sends the body as pickle (the daemon must allow it); ``oob``: a list that
    receives the buffer frames to send after this frame (without it, all in band)."""
    flags = ((FLAG_IDEMPOTENT if idempotent else 0) | (FLAG_STREAM if window else 0)
             | (FLAG_PICKLE if pickle else 0))
    if isinstance(params, tuple):  # positional arguments, not a tuple value
        params = list(params)
    body: dict[str, Any] = {"method": method, "params": params}  # "method" first: the hub peeks at it
    if window:
        body["window"] = window
    if trace is not None:
        body["trace"] = check_traceparent(trace)
    return pack_header(Kind.REQUEST, id, timeout_ms, flags) + _pack_body(body, flags, oob)


def decode_request(frame: bytes, *, max_size: int = DEFAULT_MAX_MESSAGE,
                   header: Header | None = None, buffers: Sequence[Any] = ()) -> Request:
    """The request in ``frame`` (and its ``buffers``, the frames after it); pass ``header``
    when it was already read, to skip a parse."""
    header = header or read_header(frame)
    if header.kind is not Kind.REQUEST:
        raise InvalidRequest(f"expected a request, got {header.kind.name}")
    # pickle requests: only in a daemon started with --allow-pickle (never over tcp)
    body = _body(frame, max_size, strict_map_key=True, buffers=buffers, pickle=pickling.allowed())
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a map")
    method = body.get("method")
    params = body.get("params")
    if not isinstance(method, str):
        raise InvalidRequest("request 'method' must be a string")
    if params is not None and not isinstance(params, (list, dict)):
        raise InvalidRequest("request 'params' must be an array, a map or nil")
    window = body.get("window", 0)
    if not isinstance(window, int) or isinstance(window, bool) or not 0 <= window <= MAX_WINDOW:
        raise InvalidRequest(f"request 'window' must be an integer from 0 (the default window) to {MAX_WINDOW}")
    trace = body.get("trace")
    if trace is not None and not (isinstance(trace, str) and _TRACEPARENT.fullmatch(trace)):
        raise InvalidRequest("request 'trace' must be a W3C traceparent string")
    return Request(header.id, method, params, header.timeout_ms, header.flags, window, trace)


# --- peeking (the hub's per-tool numbers; never a full decode) ----------------------------

_METHOD_KEY = b"\xa6method"
_ERROR_KEY = b"\xa5error"
_CODE_KEY = b"\xa4code"


def _map_start(frame: bytes | memoryview, at: int) -> int:
    """Offset just past a msgpack map header at ``at``, or -1."""
    tag = frame[at]
    if 0x80 <= tag <= 0x8F:
        return at + 1
    if tag == 0xDE:
        return at + 3
    if tag == 0xDF:
        return at + 5
    return -1


def peek_method(frame: bytes | memoryview) -> str | None:
    """The "method" of a request frame, read from the start of its body (a map whose first
    key is "method", as every encoder here writes it); None for anything else. (Peeks work
    on a memoryview too: the hub forwards a large frame without copying it.)"""
    try:
        at = _map_start(frame, HEADER_SIZE)
        if at < 0 or frame[at:at + len(_METHOD_KEY)] != _METHOD_KEY:
            return None
        at += 7
        tag = frame[at]
        if 0xA0 <= tag <= 0xBF:
            n, at = tag & 0x1F, at + 1
        elif tag == 0xD9:
            n, at = frame[at + 1], at + 2
        elif tag == 0xDA:
            n, at = int.from_bytes(frame[at + 1:at + 3], "big"), at + 3
        else:
            return None
        if n > 256 or at + n > len(frame):
            return None
        return bytes(frame[at:at + n]).decode()
    except (IndexError, UnicodeDecodeError):
        return None


def peek_error_code(frame: bytes | memoryview) -> int | None:
    """The error code of a REPLY frame whose body is ``{"error": {"code": ...}}``; None for
    a result. An error whose code cannot be read counts as -32603 (internal)."""
    try:
        at = _map_start(frame, HEADER_SIZE)
        if at < 0 or frame[at:at + len(_ERROR_KEY)] != _ERROR_KEY:
            return None
        at = _map_start(frame, at + 6)
        if at < 0 or frame[at:at + len(_CODE_KEY)] != _CODE_KEY:
            return -32603
        at += 5
        tag = frame[at]
        if tag <= 0x7F or tag >= 0xE0:
            return tag if tag <= 0x7F else tag - 0x100
        size = {0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}.get(tag)
        if size is None or at + 1 + size > len(frame):
            return -32603
        return int.from_bytes(frame[at + 1:at + 1 + size], "big", signed=tag >= 0xD0)
    except IndexError:
        return -32603


# --- replies -----------------------------------------------------------------------------

def encode_result(id: int, result: Any, flags: int = 0, oob: list[Any] | None = None) -> bytes:
    """Raises TypeError/ValueError/OverflowError if the result cannot be encoded; with
    FLAG_PICKLE in ``flags`` (the answer to a pickle request) the body is pickle, which
    only a daemon that opted in (``--allow-pickle``, never over tcp) sends; ``oob`` as for
    ``encode_request``."""
    flags &= ~FLAG_IDEMPOTENT & ~FLAG_STREAM  # only reply bits travel back
    pickling.check_send(flags & FLAG_PICKLE)
    return pack_header(Kind.REPLY, id, 0, flags) + _pack_body({"result": result}, flags, oob)


def encode_error(id: int, error: BridgeError) -> bytes:
    return pack_header(Kind.REPLY, id) + _packb_plain({"error": error.to_wire()})


def decode_reply_body(frame: bytes, *, max_size: int = DEFAULT_MAX_MESSAGE,
                      buffers: Sequence[Any] = (), pickle: bool = False) -> dict[str, Any]:
    """Body of a REPLY frame (``buffers``: the frames after it); the caller already
    checked the header. ``pickle``: the caller sent this very request as pickle, so a
    pickled reply may be decoded (every other caller refuses one)."""
    body = _body(frame, max_size, strict_map_key=False, buffers=buffers, pickle=pickle)
    if not isinstance(body, dict) or ("result" not in body and "error" not in body):
        raise ParseError("reply body must be a map with 'result' or 'error'")
    return body


# --- control messages --------------------------------------------------------------------

def encode_ready(pid: int, tools: list[str], version: str) -> bytes:
    return pack_header(Kind.READY, 0) + _packb_plain({"pid": pid, "tools": tools, "version": version})


def decode_ready(frame: bytes) -> dict[str, Any]:
    body = unpackb(body_of(frame), max_size=1024 * 1024, values=False)
    if not isinstance(body, dict) or not isinstance(body.get("pid"), int):
        raise InvalidRequest("ready body must be a map with an integer 'pid'")
    return body


def encode_heartbeat(info: dict[str, Any] | None = None) -> bytes:
    return pack_header(Kind.HEARTBEAT, 0) + _packb_plain(info or {})


def decode_heartbeat(frame: bytes) -> dict[str, Any]:
    body = unpackb(body_of(frame), max_size=64 * 1024, values=False)
    if not isinstance(body, dict):
        raise InvalidRequest("heartbeat body must be a map")
    return body


def encode_disconnect(reason: str = "") -> bytes:
    return pack_header(Kind.DISCONNECT, 0) + _packb_plain({"reason": reason})


def encode_partial(id: int, item: Any, flags: int = 0, oob: list[Any] | None = None) -> bytes:
    """Raises TypeError/ValueError/OverflowError if the item cannot be encoded; ``oob``
    as for ``encode_request``."""
    flags &= FLAG_PICKLE
    pickling.check_send(flags)
    return pack_header(Kind.PARTIAL, id, 0, flags) + _pack_body({"item": item}, flags, oob)


def decode_partial(frame: bytes, *, max_size: int = DEFAULT_MAX_MESSAGE,
                   buffers: Sequence[Any] = (), pickle: bool = False) -> Any:
    body = _body(frame, max_size, strict_map_key=False, buffers=buffers, pickle=pickle)
    if not isinstance(body, dict) or "item" not in body:
        raise ParseError("partial body must be a map with 'item'")
    return body["item"]


def encode_lease(id: int, daemon: str, send: bool) -> bytes:
    """LEASE for call ``id`` (the daemon's channel travels beside it, SCM_RIGHTS); ``send``:
    the borrower writes the request itself (else the hub already did)."""
    return pack_header(Kind.LEASE, id) + _packb_plain({"daemon": daemon, "send": send})


def decode_lease(frame: bytes) -> dict[str, Any]:
    body = unpackb(body_of(frame), max_size=1024, values=False)
    if not isinstance(body, dict) or not isinstance(body.get("send"), bool):
        raise InvalidRequest("lease body must be a map with a boolean 'send'")
    return body


def encode_credit(id: int, n: int) -> bytes:
    return pack_header(Kind.CREDIT, id) + _packb_plain({"n": n})


def decode_credit(frame: bytes) -> int:
    body = unpackb(body_of(frame), max_size=1024, values=False)
    n = body.get("n") if isinstance(body, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InvalidRequest("credit body must be a map with a positive integer 'n'")
    return n


def encode_cancel(id: int, flags: int = 0) -> bytes:
    """Cancel request ``id``; honoured only from the connection that sent the request."""
    return pack_header(Kind.CANCEL, id, 0, flags) + _packb_plain({})


def without_flags(frame: bytes | memoryview, flags: int) -> bytes:
    """The same frame with some header flags cleared."""
    return b"".join((frame[:4], bytes([frame[4] & ~flags & 0xFF]), frame[5:]))


def encode_status_request(id: int, prewarm: bool = False) -> bytes:
    return pack_header(Kind.STATUS, id, 0, FLAG_PREWARM if prewarm else 0) + _packb_plain(None)


# --- live control (capability "control") --------------------------------------------------

CONTROL_OPS = ("scale", "reload", "stacks")
MAX_WORKERS = 1024  # a typo in `zbridge scale` must not start thousands of processes


@dataclass(frozen=True, slots=True)
class Control:
    """A CONTROL message: ``scale`` to ``workers`` daemons, ``reload`` the tools, or dump
    the ``stacks`` of ``daemon`` (its status id, "w3", or its pid)."""
    id: int
    op: str
    workers: int = 0
    daemon: str | int = ""


def encode_control(id: int, op: str, *, workers: int | None = None,
                   daemon: str | int | None = None) -> bytes:
    body: dict[str, Any] = {"op": op}
    if workers is not None:
        body["workers"] = workers
    if daemon is not None:
        body["daemon"] = daemon
    return pack_header(Kind.CONTROL, id) + _packb_plain(body)


def decode_control(frame: bytes, header: Header) -> Control:
    """The CONTROL in ``frame``: InvalidRequest for a body that is not one, InvalidParams
    for an op's argument of the right type but out of range."""
    body = unpackb(body_of(frame), max_size=64 * 1024, values=False)
    op = body.get("op") if isinstance(body, dict) else None
    if op not in CONTROL_OPS:
        raise InvalidRequest(f"a control body is a map whose 'op' is one of {', '.join(CONTROL_OPS)}, "
                             f"not {op!r:.40}")
    if op == "scale":
        workers = body.get("workers")
        if not isinstance(workers, int) or isinstance(workers, bool):
            raise InvalidRequest("scale needs 'workers', an integer")
        if not 0 <= workers <= MAX_WORKERS:
            raise InvalidParams(f"workers must be from 0 to {MAX_WORKERS}, not {workers}")
        return Control(header.id, op, workers=workers)
    if op == "stacks":
        daemon = body.get("daemon")
        if isinstance(daemon, bool) or not isinstance(daemon, (str, int)) or daemon == "":
            raise InvalidRequest("stacks needs 'daemon': a daemon's status id (\"w3\") or its pid")
        return Control(header.id, op, daemon=daemon)
    return Control(header.id, op)
