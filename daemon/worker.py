"""The zmq daemon loop: connect, announce, serve one call at a time, reconnect after a
lost link, leave cleanly."""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, cast

import zmq

from zbridge import __version__, stacks
from zbridge import context as call_context
from zbridge.errors import BridgeError, Cancelled, InternalError, Interrupted
from zbridge.execution import Executor, as_items
from zbridge.wire import Channel, oversized, recv_buffers, send
from zbridge.procinfo import rss_bytes
from zbridge.protocol import (
    DEFAULT_MAX_MESSAGE,
    FLAG_LONE,
    FLAG_PICKLE,
    FLAG_RETIRE,
    FLAG_STREAM,
    Header,
    Kind,
    Request,
    add_flags,
    decode_request,
    encode_error,
    encode_ready,
    encode_result,
    read_header,
)
from zbridge.security import make_client
from zbridge.tools import Registry

from .activity import Activity, finish, install_cancel_handler
from .heartbeat import start_heartbeat
from .link import HubLink, OnSilence, reconnect_delay
from .streaming import send_stream

log = logging.getLogger("zbridge.daemon")
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
LINK_CHECK_MS = 200  # how soon an idle reconnecting daemon notices that its link was lost
SPIN = 0.0001  # after an answer on the channel, how long to look for the next call awake
               # before sleeping (a wake-up costs more than that on a virtual machine)


@dataclass(frozen=True)
class WorkerOptions:
    endpoint: str
    identity: bytes | None = None
    max_message: int = DEFAULT_MAX_MESSAGE
    heartbeat: str | None = None
    heartbeat_interval: float = 1.0
    heartbeat_misses: int = 3
    max_rss_mb: int = 0
    curve: tuple[bytes, tuple[bytes, bytes]] | None = None  # (hub public key, (our public, our secret))
    expose_tracebacks: bool = True
    on_silence: OnSilence = OnSilence.RECONNECT
    channel: int | None = None  # fd of our end of the channel an embedded hub's callers use
    stacks_dir: str | None = None  # where SIGUSR2 dumps our stacks (zbridge/stacks.py)


def _dealer(context: zmq.Context[Any], options: WorkerOptions) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = context.socket(zmq.DEALER)
    sock.linger = 0
    if options.identity:
        sock.setsockopt(zmq.IDENTITY, options.identity)
    if options.curve:
        make_client(sock, *options.curve)
    return sock


Reply = tuple[bytes, list[Any]]  # a reply frame and its buffer frames


def handle_request(executor: Executor, frame: bytes, header: Header, max_message: int,
                   sock: zmq.Socket[Any] | None = None,
                   buffers: Sequence[Any] = ()) -> tuple[Reply, bool]:
    """Answer one request (``buffers``: its buffer frames): exactly one final reply (after
    any streamed items), and whether the hub asked this daemon to stop meanwhile."""
    request_id = header.id
    try:
        request = decode_request(frame, max_size=max_message, header=header, buffers=buffers)
    except BridgeError as exc:
        return (encode_error(request_id, exc), []), False
    # zbridge.current_call() for the tool, through its stream's last item too
    token = call_context.begin(call_context.CallInfo(
        request_id, request.method,
        time.time() + request.timeout_ms / 1000.0 if request.timeout_ms else None, request.trace))
    try:
        try:
            result = executor.run(request.method, request.params, stream=request.stream)
        except BridgeError as exc:
            return (encode_error(request_id, exc), []), False
        if request.stream and sock is not None:  # a plain result streams as one item
            final, stop = send_stream(sock, request, as_items(result), max_message)
            return (final, []), stop
        return _final_reply(request, result, max_message), False
    finally:
        call_context.end(token)


def _final_reply(request: Request, result: Any, max_message: int) -> Reply:
    request_id = request.id
    buffers: list[Any] = []
    try:  # pickle answers pickle; large arrays and bytes go out of band
        reply = encode_result(request_id, result, request.flags & FLAG_PICKLE, oob=buffers)
    except (TypeError, ValueError, OverflowError) as exc:
        return encode_error(request_id, InternalError(
            f"result of {request.method!r} cannot be encoded: {type(exc).__name__}: {exc}"[:500])), []
    size = oversized(reply, buffers, max_message)
    if size is not None:
        return encode_error(request_id, InternalError(
            f"result of {request.method!r} is {size} bytes, over the "
            f"{max_message}-byte limit")), []
    return reply, buffers


def serve_request(executor: Executor, activity: Activity, sock: zmq.Socket[Any] | None, frame: bytes,
                  header: Header, max_message: int, buffers: Sequence[Any] = ()) -> tuple[Reply, bool]:
    activity.begin(header.id)
    try:
        return handle_request(executor, frame, header, max_message, sock, buffers)
    except Interrupted as exc:  # raised in the tool, or landed just after it returned
        return (encode_error(header.id, Cancelled(str(exc) or "cancelled by the caller")), []), False
    finally:
        finish(activity)


def _over_rss(limit_mb: int) -> bool:
    rss = rss_bytes() if limit_mb else None
    return bool(rss and rss > limit_mb * 1024 * 1024)


def serve(registry: Registry, options: WorkerOptions, on_hub_lost: Callable[[str], None]) -> None:
    """Start, then serve connection after connection until told to go; a lost link is
    tried again with capped backoff (``OnSilence.RECONNECT``), or ends in ``on_hub_lost``."""
    stacks.arm(options.stacks_dir)  # (done already, unless this process was forked after it)
    executor = Executor(registry, options.expose_tracebacks)
    channel = open_channel(options.channel, options.max_message)
    activity = Activity()
    install_cancel_handler(activity)
    context = zmq.Context()
    failures = 0
    try:
        while True:
            # the backoff is spent with the fresh sockets open, not asleep: zmq keeps
            # dialling meanwhile, so a hub that comes back is found within its retry interval
            link = HubLink(patience=reconnect_delay(failures))
            if _connection(context, registry, executor, activity, options, link, on_hub_lost, channel):
                return
            failures = 1 if link.heard.is_set() else failures + 1
            log.warning("%s; reconnecting to %s", link.why, options.endpoint)
    finally:
        context.term()  # the heartbeat thread closes its socket on ETERM


def open_channel(fd: int | None, max_message: int) -> Channel | None:
    """Our end of the hub's channel (``--channel FD``), kept from processes tools start."""
    if fd is None:
        return None
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    return Channel(sock, max_message + 4096)


def _connection(context: zmq.Context[Any], registry: Registry, executor: Executor, activity: Activity,
                options: WorkerOptions, link: HubLink, on_hub_lost: Callable[[str], None],
                channel: Channel | None = None) -> bool:
    """Fresh sockets, READY, serve; True when the hub told us to stop, False when the link
    was lost. New sockets each time: the old connection may be half-open, and closing it
    (linger 0) drops anything the hub queued on it, so no request can arrive twice.
    Requests on the channel are answered on the channel, the hub's on its socket."""
    sock = _dealer(context, options)
    sock.setsockopt(zmq.MAXMSGSIZE, options.max_message + 4096)
    inbox = Inbox(sock, channel, link, options.on_silence)

    def lost(why: str) -> None:
        link.mark_lost(why)
        if link.streaming is not None:  # it waits for CREDIT that a dead link never brings
            activity.request_cancel(link.streaming)

    on_silence = {OnSilence.IGNORE: None, OnSilence.EXIT: on_hub_lost,
                  OnSilence.RECONNECT: lost}[options.on_silence]
    try:
        sock.connect(options.endpoint)
        if options.heartbeat:
            start_heartbeat(_dealer(context, options), options.heartbeat, activity,
                            options.heartbeat_interval, options.heartbeat_misses, on_silence,
                            link.heard.set, link.patience)
        sock.send(encode_ready(os.getpid(), registry.names(), __version__))
        while True:
            message = inbox.next()
            if message is None:
                return False
            frame, buffers, on_channel = message
            try:
                header = read_header(frame)
            except BridgeError as exc:
                log.warning("dropping malformed frame from hub: %s", exc)
                continue
            if header.kind is Kind.DISCONNECT:
                return True
            if header.kind is not Kind.REQUEST:
                continue
            # a call on the channel is never a stream: the channel carries no CREDIT or CANCEL
            link.streaming = header.id if header.flags & FLAG_STREAM and not on_channel else None
            (reply, reply_buffers), stop = serve_request(executor, activity, None if on_channel else sock,
                                                         frame, header, options.max_message, buffers)
            del buffers  # the request's frames may be freed once the call is done
            link.streaming = None
            if _over_rss(options.max_rss_mb):  # ask to be replaced, after answering
                reply = add_flags(reply, FLAG_RETIRE)
            if on_channel:
                inbox.answer(reply, reply_buffers, bool(header.flags & FLAG_LONE))
            else:  # after a lost link: dropped, or ignored as late
                send(sock, reply, reply_buffers)
                inbox.touched()
            if stop:
                return True
    finally:
        sock.close(0)


class Inbox:
    """The next message from the hub's data socket or from the channel: (frame, buffer
    frames, whether it came on the channel), or None once the link is lost. Only a daemon
    with a channel or a reconnecting one pays for a poll per message; others block in recv
    as before. The hub's messages come first (DISCONNECT).

    It polls file descriptors, not zmq sockets (``zmq_poll`` costs several system calls
    per socket): a zmq socket's fd only says that it has news (edge-triggered), so the
    socket is asked for ``ZMQ_EVENTS`` before a sleep when its fd fired, when a message was
    just taken from it (there may be more), or when we sent on it (a send may take its
    signal: ``touched``). A call on the channel costs one poll, one recv and one send."""

    def __init__(self, sock: zmq.Socket[Any], channel: Channel | None, link: HubLink,
                 on_silence: OnSilence) -> None:
        self.sock, self.channel, self.link = sock, channel, link
        self.check_link = on_silence is OnSilence.RECONNECT
        self.poller = select.poll()
        self.zmq_fd = cast(int, sock.getsockopt(zmq.FD))
        self.poller.register(self.zmq_fd, select.POLLIN)
        if channel is not None:
            self.poller.register(channel.fileno(), select.POLLIN)
        self.dirty = True  # ask the zmq socket before sleeping
        self.spin = False  # we just answered on the channel: look for the next call awake

    def touched(self) -> None:
        """We sent on the zmq socket: ask it for news before the next sleep."""
        self.dirty = True

    def answer(self, reply: bytes, buffers: Sequence[Any], lone: bool = False) -> None:
        """A reply on the channel (to its caller, or to the hub that took over its wait);
        ``lone``: its caller is the only one out, and likely to call again at once."""
        assert self.channel is not None
        try:
            self.channel.send(reply, buffers)
        except OSError as exc:  # the hub's end is gone: so is the hub (the lifeline says so)
            log.warning("cannot answer on the channel (%s)", exc)
            self._drop_channel()
            return
        self.spin = lone  # a lone caller making calls back to back sends the next one at once

    def _drop_channel(self) -> None:
        if self.channel is not None:
            self.poller.unregister(self.channel.fileno())
            self.channel = None

    def next(self) -> tuple[bytes, list[Any], bool] | None:
        sock = self.sock
        if not self.check_link and self.channel is None:
            frame = sock.recv()
            return frame, recv_buffers(sock), False
        while True:
            if self.channel is not None and (self.spin or self.channel.pending()):
                message = self._from_channel(self.channel, SPIN if self.spin else 0.0)
                self.spin = False
                if message is not None:
                    return message
            if self.dirty:  # the hub's messages first
                if cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
                    frame = sock.recv()
                    return frame, recv_buffers(sock), False
                self.dirty = False
            ready = self.poller.poll(LINK_CHECK_MS if self.check_link else None)
            channel = self.channel
            for fd, _ in ready:
                if fd == self.zmq_fd:
                    self.dirty = True
                elif channel is not None:
                    message = self._from_channel(channel)
                    if message is not None:
                        return message
            if self.check_link and self.link.lost.is_set():
                return None

    def _from_channel(self, channel: Channel, spin: float = 0.0) -> tuple[bytes, list[Any], bool] | None:
        """A message on the channel now (or within ``spin`` seconds, awake), if any."""
        try:
            message = channel.recv_soon(spin)
        except BlockingIOError:
            return None
        except EOFError as exc:
            log.warning("channel closed: %s", exc)
            self._drop_channel()
            return None
        return None if message is None else (message[0], message[1], True)
