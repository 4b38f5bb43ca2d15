"""``zbridge-daemon --stdio-msgpack``: the pool's own frames over a pipe, for the fallback.

Hidden and internal: ``zbridge.fallback`` starts one of these per call so a call that falls
back gets the same values and the same errors as the pool (bytes, NaN, int map keys in
results, 64-bit ints; int map keys in arguments refused the same way). Each message on
stdin and stdout is its frames exactly as they travel on zmq (the protocol frame, then any
buffer frames: large arrays and bytes out of band), each after a 4-byte big-endian prefix:
bit 31 set when another frame of the same message follows (zmq's "more"), bits 0-30 the
frame's length. REQUEST in; PARTIAL items (for a stream request) and one REPLY out. The
seed-facing ``--stdio`` stays JSON lines.
"""

from __future__ import annotations

import sys

from zbridge.errors import BridgeError, InternalError, InvalidRequest
from zbridge.wire import read as read_message
from zbridge.wire import write as write_frame
from zbridge.execution import Executor, as_items
from zbridge.wire import oversized
from zbridge.protocol import (
    DEFAULT_MAX_MESSAGE,
    Kind,
    decode_request,
    encode_error,
    encode_partial,
    encode_result,
    read_header,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO, Sequence

def _encoded(what: str, encode: Any, max_message: int) -> tuple[bytes, list[Any]]:
    """Same wording as the zmq worker, so both paths fail alike."""
    buffers: list[Any] = []
    try:
        frame: bytes = encode(buffers)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InternalError(f"{what} cannot be encoded: {type(exc).__name__}: {exc}"[:500]) from None
    size = oversized(frame, buffers, max_message)
    if size is not None:
        raise InternalError(f"{what} is {size} bytes, over the {max_message}-byte limit")
    return frame, buffers



def answer(executor: Executor | BridgeError, frame: bytes, out: BinaryIO, max_message: int,
           buffers: Sequence[Any] = ()) -> None:
    """Write the replies to one REQUEST frame (and its buffer frames): its items if it
    streams, then one REPLY."""
    request_id = 0
    try:
        header = read_header(frame)
        request_id = header.id
        if header.kind is not Kind.REQUEST:
            raise InvalidRequest(f"expected a request, got {header.kind.name}")
        if isinstance(executor, BridgeError):  # tools failed to load: every call says why
            raise executor
        request = decode_request(frame, max_size=max_message, header=header, buffers=buffers)
        result = executor.run(request.method, request.params, stream=request.stream)
        if not request.stream:
            reply, reply_buffers = _encoded(f"result of {request.method!r}",
                                            lambda oob: encode_result(request_id, result, oob=oob),
                                            max_message)
            write_frame(out, reply, reply_buffers)
            return
        items = as_items(result)
        sent = 0
        try:
            for item in items:
                write_frame(out, *_encoded(f"item {sent} of {request.method!r}",
                                           lambda oob: encode_partial(request_id, item, oob=oob),
                                           max_message))
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
        message = read_message(inp, max_message + 4096)
        if message is None:
            return
        answer(executor, message[0], out, max_message, message[1])


def run(tools: tuple[str, ...] | list[str], out: BinaryIO, expose_tracebacks: bool) -> None:
    """Load the tools and serve; if they fail to load, every call is answered with why."""
    from .loading import executor_for
    serve(executor_for(tools, expose_tracebacks), out)
