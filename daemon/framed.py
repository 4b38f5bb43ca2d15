"""``zbridge-daemon --stdio-msgpack``: the pool's own frames over a pipe, for the fallback.

Hidden and internal: ``zbridge.fallback`` starts one of these per call so a call that falls
back gets the same values and the same errors as the pool (bytes, NaN, int map keys in
results, 64-bit ints; int map keys in arguments refused the same way). Each message on
stdin and stdout is a 4-byte big-endian length, then one protocol frame exactly as it
travels on zmq: REQUEST in; PARTIAL items (for a stream request) and one REPLY out. The
seed-facing ``--stdio`` stays JSON lines.
"""

from __future__ import annotations

import struct
import sys
from types import GeneratorType

from zbridge.errors import BridgeError, InternalError, InvalidRequest
from zbridge.execution import Executor
from zbridge.protocol import (DEFAULT_MAX_MESSAGE, Kind, decode_request, encode_error, encode_partial,
                              encode_result, read_header)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO, Iterator

LENGTH = struct.Struct(">I")


def write_frame(out: BinaryIO, frame: bytes) -> None:
    out.write(LENGTH.pack(len(frame)) + frame)
    out.flush()


def read_frame(inp: BinaryIO, max_size: int) -> bytes | None:
    """The next frame, None at a clean EOF; a short read or an oversized length is an error."""
    head = inp.read(LENGTH.size)
    if not head:
        return None
    if len(head) < LENGTH.size:
        raise EOFError("pipe closed inside a length prefix")
    (size,) = LENGTH.unpack(head)
    if size > max_size:
        raise ValueError(f"frame of {size} bytes exceeds the {max_size}-byte limit")
    body = inp.read(size)
    if len(body) < size:
        raise EOFError("pipe closed inside a frame")
    return body


def _encoded(what: str, encode: Any, max_message: int) -> bytes:
    """Same wording as the zmq worker, so both paths fail alike."""
    try:
        frame = encode()
    except (TypeError, ValueError, OverflowError) as exc:
        raise InternalError(f"{what} cannot be encoded: {type(exc).__name__}: {exc}"[:500]) from None
    if len(frame) > max_message:
        raise InternalError(f"{what} is {len(frame)} bytes, over the {max_message}-byte limit")
    return frame


def _one(value: Any) -> Iterator[Any]:
    yield value


def answer(executor: Executor | BridgeError, frame: bytes, out: BinaryIO, max_message: int) -> None:
    """Write the replies to one REQUEST frame: its items if it streams, then one REPLY."""
    request_id = 0
    try:
        header = read_header(frame)
        request_id = header.id
        if header.kind is not Kind.REQUEST:
            raise InvalidRequest(f"expected a request, got {header.kind.name}")
        if isinstance(executor, BridgeError):  # tools failed to load: every call says why
            raise executor
        request = decode_request(frame, max_size=max_message, header=header)
        result = executor.run(request.method, request.params, stream=request.stream)
        if not request.stream:
            reply = _encoded(f"result of {request.method!r}",
                             lambda: encode_result(request_id, result), max_message)
            write_frame(out, reply)
            return
        items = result if isinstance(result, GeneratorType) else _one(result)
        sent = 0
        try:
            for item in items:
                write_frame(out, _encoded(f"item {sent} of {request.method!r}",
                                          lambda: encode_partial(request_id, item), max_message))
                sent += 1
        finally:
            items.close()
        write_frame(out, encode_result(request_id, {"items": sent}))
    except BridgeError as exc:
        write_frame(out, encode_error(request_id, exc))


def serve(executor: Executor | BridgeError, out: BinaryIO, inp: BinaryIO | None = None,
          max_message: int = DEFAULT_MAX_MESSAGE) -> None:
    """Answer frames until EOF on stdin."""
    inp = inp or sys.stdin.buffer
    while True:
        frame = read_frame(inp, max_message + 4096)
        if frame is None:
            return
        answer(executor, frame, out, max_message)


def run(tools: tuple[str, ...] | list[str], out: BinaryIO, expose_tracebacks: bool) -> None:
    """Load the tools and serve; if they fail to load, every call is answered with why."""
    from .loading import load, load_failure
    try:
        executor: Executor | BridgeError = Executor(load(tools), expose_tracebacks)
    except BaseException as exc:  # noqa: BLE001 - reported on every call instead
        import traceback
        traceback.print_exc()
        executor = load_failure(exc)
    serve(executor, out)
