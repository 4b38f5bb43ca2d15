"""The zmq daemon loop: connect, announce, serve one call at a time, leave cleanly."""

from __future__ import annotations

import logging
import os

import zmq

from zbridge import __version__
from zbridge.errors import BridgeError, InternalError
from zbridge.execution import Executor
from zbridge.protocol import (DEFAULT_MAX_MESSAGE, Kind, decode_request, encode_error,
                              encode_ready, encode_result, read_header)
from zbridge.tools import Registry

log = logging.getLogger("zbridge.daemon")


def handle_request(executor: Executor, frame: bytes, request_id: int, max_message: int) -> bytes:
    """Turn one request frame into exactly one reply frame, whatever happens."""
    try:
        request = decode_request(frame, max_size=max_message)
        result = executor.run(request.method, request.params)
    except BridgeError as exc:
        return encode_error(request_id, exc)
    try:
        reply = encode_result(request_id, result)
    except (TypeError, ValueError, OverflowError) as exc:
        return encode_error(request_id, InternalError(
            f"result of {request.method!r} cannot be encoded: {type(exc).__name__}: {exc}"[:500]))
    if len(reply) > max_message:
        return encode_error(request_id, InternalError(
            f"result of {request.method!r} is {len(reply)} bytes, over the {max_message}-byte limit"))
    return reply


def serve(endpoint: str, registry: Registry, *, identity: bytes | None = None,
          max_message: int = DEFAULT_MAX_MESSAGE) -> None:
    executor = Executor(registry)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, max_message + 4096)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity)
    try:
        sock.connect(endpoint)
        sock.send(encode_ready(os.getpid(), registry.names(), __version__))
        while True:
            frame = sock.recv()
            try:
                header = read_header(frame)
            except BridgeError as exc:
                log.warning("dropping malformed frame from hub: %s", exc)
                continue
            if header.kind is Kind.DISCONNECT:
                break
            if header.kind is Kind.REQUEST:
                sock.send(handle_request(executor, frame, header.id, max_message))
    finally:
        sock.close(0)
        context.term()
