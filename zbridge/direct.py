"""Embedded direct calls: the calling thread sends its request straight to the daemon the
broker picked, and gets the reply straight back; the hub thread only supervises.

The broker stays the one source of truth. A calling thread holds ``Hub.lock`` while it
calls the broker itself, under a *direct client id* (``DIRECT_PREFIX`` + a number: a
routing id no zmq peer can have, since user-set ids never start with a zero byte). The
broker's actions are routed here, still under the lock, so each caller sees its own
events in the broker's order:

* a ``ToDaemon`` carrying a direct caller's request, to a daemon with a direct socket,
  becomes a ``Lease`` in that caller's mailbox: the request goes on the caller's own
  connection to that daemon (a Unix stream socket, ``zbridge.framing``; the asyncio
  twin's zmq DEALER);
* a ``ToClient`` for a direct caller becomes its ``Answer`` (the reply, or the error the
  broker decided: timeout, lost daemon, cancel, overload);
* everything else is carried out by the hub thread (``Hub.post``).

A lease is always honoured (the request is sent even when the call was answered in the
meantime), so a daemon the broker reserved always gets its request and always answers;
a socket whose reply is still due when its call ends is handed to the hub thread
(``Hub.adopt``), which reads that reply and reports it, so the daemon comes back warm.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import struct
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .actions import Action, ToClient, ToDaemon
from .calls import HUB_GRACE, POLL_SLICE_MS
from . import framing
from .errors import BridgeError
from .protocol import Header, Kind, read_header

if TYPE_CHECKING:
    from .hub import Hub

DIRECT_PREFIX = b"\x00direct-"
SEND_NOW = 64 * 1024  # a request up to this size is sent by the thread that routes its lease
Out = tuple[socket.socket, "select.poll", bytes]  # a request's socket, its poller, its daemon
_ID = struct.Struct("!Q")  # a frame's request id, at offset 12 of the header (PROTOCOL.md)


def request_id_of(frame: bytes) -> int:
    """The request id of a frame the broker already parsed (no checks again)."""
    return int(_ID.unpack_from(frame, 12)[0])


class Closed(Exception):
    """The client was closed while the call waited."""


class NoVerdict(Exception):
    """Nothing answered the call even after its deadline plus grace (the hub thread is stuck)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """Request ``id`` (``frame`` and its buffer frames ``extra``) goes to ``daemon``.
    ``sent``: None if the caller is to send it; True once it was sent on the caller's
    socket to that daemon (by whichever thread routed it); False if that send failed."""
    id: int
    daemon: bytes
    endpoint: str
    frame: bytes
    extra: tuple[Any, ...]
    sent: bool | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """The one answer to request ``id``: a REPLY frame and its buffer frames."""
    id: int
    frame: bytes
    extra: tuple[Any, ...]


Entry = Lease | Answer


class Waker:
    """A pipe another thread writes a byte to, so a zmq poll wakes up."""

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._w, False)

    def wake(self) -> None:
        try:
            os.write(self._w, b"!")
        except BlockingIOError:
            pass  # already full of wake-ups

    def clear(self) -> None:
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._w)


class Slot:
    """One calling thread's direct client: its id, mailbox, waker and sockets to daemons.

    A blocking caller's slot (``blocking``) talks to each daemon over a Unix stream socket
    (``zbridge.framing``: no zmq I/O thread on either side of the round trip). A lease is
    sent by the thread that routes it, under the hub's lock, when the request is small
    enough to go without blocking: so a daemon the broker reserved has its request as soon
    as the broker says so (a stall of the caller's thread cannot hold it back), and a daemon
    freed by one caller's reply gets the next queued request without waiting for the next
    caller to wake up. That is safe: a caller waiting for a lease never touches its sockets,
    and the lock is a full memory barrier. A large request the caller sends itself, after
    the lock. The asyncio twin's slot only holds the mailbox (it has its own zmq sockets)."""

    def __init__(self, ident: bytes, blocking: bool = False, max_message: int = 0) -> None:
        self.ident = ident
        self.blocking = blocking
        self.max_message = max_message
        self.owner = threading.get_ident()
        self.thread = weakref.ref(threading.current_thread())
        self.mailbox: deque[Entry] = deque()
        self.waker = Waker()
        self.sockets: dict[bytes, tuple[socket.socket, select.poll]] = {}
        self.idle = select.poll()  # the mailbox alone, while no request is out
        self.idle.register(self.waker.fd, select.POLLIN)

    def deliver(self, entry: Entry) -> None:
        self.mailbox.append(entry)
        if threading.get_ident() != self.owner:
            self.waker.wake()

    def deliver_lease(self, lease: Lease) -> None:
        # sent now, under the lock, if it goes at once (see the class docstring)
        if self.blocking and not lease.extra and len(lease.frame) <= SEND_NOW:
            lease = Lease(lease.id, lease.daemon, lease.endpoint, lease.frame, lease.extra,
                          self._send_now(lease))
        self.deliver(lease)

    def _send_now(self, lease: Lease) -> bool | None:
        """True once sent, None if the owner must send it, False if the daemon is gone."""
        data = framing.LENGTH.pack(len(lease.frame)) + lease.frame
        try:
            sock, _ = self.socket(lease.daemon, lease.endpoint)
            sent = sock.send(data, socket.MSG_DONTWAIT)
            if 0 < sent < len(data):  # rare for a small message: finish it
                sock.sendall(data[sent:])
            return True
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return False

    def socket(self, daemon: bytes, path: str) -> tuple[socket.socket, select.poll]:
        """This caller's connection to ``daemon``'s Unix socket, and a poller for it and
        the mailbox. Raises OSError if the daemon cannot be reached."""
        known = self.sockets.get(daemon)
        if known is not None:
            return known
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(self.waker.fd, select.POLLIN)
        self.sockets[daemon] = (sock, poller)
        return sock, poller

    def forget(self, daemon: bytes) -> None:
        known = self.sockets.pop(daemon, None)
        if known is not None:
            known[0].close()

    def take(self) -> list[Entry]:
        entries = []
        while self.mailbox:
            entries.append(self.mailbox.popleft())
        return entries

    def alive(self) -> bool:
        thread = self.thread()
        return thread is not None and thread.is_alive()

    def close(self) -> None:
        for sock, _ in self.sockets.values():
            sock.close()
        self.sockets.clear()
        self.waker.close()


class Directory:
    """The direct callers of one hub, by id, and the routing of broker actions to them.
    Used only while holding the hub's lock."""

    def __init__(self, daemons: dict[bytes, Any]) -> None:
        self.slots: dict[bytes, Slot] = {}
        self.daemons = daemons  # the broker's, to close sockets to daemons that are gone
        self.reporting: set[bytes] = set()  # callers between reading a reply and reporting it
        self._numbers = itertools.count(1)

    def new_slot(self, blocking: bool = False, max_message: int = 0) -> Slot:
        """A slot for the calling thread (``blocking``: a sync caller, see Slot)."""
        for ident, slot in list(self.slots.items()):  # threads that ended leave their slots
            if not slot.alive():
                del self.slots[ident]
                slot.close()
        slot = Slot(DIRECT_PREFIX + str(next(self._numbers)).encode(), blocking, max_message)
        self.slots[slot.ident] = slot
        return slot

    def route(self, actions: list[Action]) -> list[Action]:
        """Deliver what is for direct callers; return the rest, for the hub thread."""
        rest: list[Action] = []
        slots = self.slots
        for action in actions:
            if type(action) is ToClient:
                if action.client in slots:
                    slots[action.client].deliver(Answer(request_id_of(action.frame), action.frame,
                                                        action.extra))
                    continue
                if action.client.startswith(DIRECT_PREFIX):
                    continue  # a direct caller whose thread ended: nobody to answer
            elif type(action) is ToDaemon and action.client in slots:
                slot = slots[action.client]
                daemon = self.daemons.get(action.daemon)
                endpoint = None if daemon is None else daemon.unix if slot.blocking else daemon.direct
                if slot.blocking and framing.message_size(action.frame, action.extra) > framing.STREAM_MAX:
                    endpoint = None  # a large request goes through the hub, zero-copy
                if endpoint is not None:
                    if action.daemon not in slot.sockets:
                        for gone in [d for d in slot.sockets if d not in self.daemons]:
                            slot.forget(gone)
                    slot.deliver_lease(Lease(request_id_of(action.frame), action.daemon, endpoint,
                                             action.frame, action.extra))
                    continue
            rest.append(action)  # a daemon without a direct socket gets it from the hub
        return rest

    def replies_waiting(self) -> bool:
        """Whether a blocking caller holds a reply it has not reported yet: read and on its
        way to the broker, or unread in its connection (polled, not read)."""
        if self.reporting:
            return True
        poller = select.poll()
        for slot in list(self.slots.values()):
            for sock, _ in list(slot.sockets.values()):
                try:
                    poller.register(sock.fileno(), select.POLLIN)
                except ValueError:  # closed meanwhile
                    continue
        return any(events & select.POLLIN and not events & select.POLLHUP for _, events in poller.poll(0))

    def close(self) -> None:
        for slot in self.slots.values():
            slot.close()
        self.slots.clear()


def run_event(hub: Hub, event: Callable[..., list[Action]], *args: Any) -> None:
    """One broker event from a calling thread, under the hub's lock: deliveries to direct
    callers now (in the broker's order), the rest to the hub thread."""
    with hub.lock:
        rest = hub.route_direct(event(*args))
    if rest:
        hub.post(rest)


class DirectCaller:
    """What an embedded client does for one plain call on the direct path."""

    def __init__(self, hub: Hub, max_message: int) -> None:
        self.hub = hub
        self.broker = hub.broker
        self.max_message = max_message
        self._local = threading.local()

    # --- the broker, under the hub's lock ----------------------------------------------

    def _run(self, event: Callable[..., list[Action]], *args: Any) -> None:
        run_event(self.hub, event, *args)

    def slot(self) -> Slot:
        slot: Slot | None = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = self.hub.new_slot(True, self.max_message)
        return slot

    def cancel(self, slot: Slot, request_id: int) -> None:
        self._run(self.broker.cancel, slot.ident, request_id, time.monotonic())

    # --- one call ----------------------------------------------------------------------

    def roundtrip(self, frame: bytes, buffers: Sequence[Any], timeout: float,
                  closed: Callable[[], bool], on_submit: Callable[[Slot, int], None] | None = None,
                  ) -> tuple[bytes, tuple[Any, ...]]:
        """The answer to the request ``frame``: a REPLY frame and its buffer frames.
        Raises ``NoVerdict`` if no verdict came even after the deadline plus grace (the hub
        thread is stuck), ``Closed`` when the client closed meanwhile."""
        slot = self.slot()
        header = read_header(frame)
        request_id = header.id
        extra = tuple(_bytes_view(b) for b in buffers) if buffers else ()
        now = time.monotonic()
        self._run(self.broker.submit, slot.ident, header, frame, now, extra)
        self.hub.timer_at(now + timeout)
        if on_submit is not None:
            on_submit(slot, request_id)
        backstop = now + timeout + HUB_GRACE
        out: Out | None = None  # a request awaiting its reply
        try:
            while True:
                answer = None
                for entry in slot.take():
                    if isinstance(entry, Lease):
                        sent = self._sent(slot, entry)
                        if entry.id == request_id:
                            out = sent
                        elif sent is not None:  # an abandoned call's lease: the hub reads its reply
                            self._adopt(slot, sent, entry.id)
                    elif entry.id == request_id:
                        answer = entry
                if answer is not None:
                    if out is not None:  # answered while its reply is still due
                        self._adopt(slot, out, request_id)
                        out = None
                    return answer.frame, answer.extra
                out = self._wait(slot, out, request_id, backstop, closed)
        except BaseException:  # Ctrl-C, close: the call must not be left running or reserved
            self.cancel(slot, request_id)
            if out is not None:
                self._adopt(slot, out, request_id)
            raise

    def _wait(self, slot: Slot, out: Out | None, request_id: int, backstop: float,
              closed: Callable[[], bool]) -> Out | None:
        """Wait for the reply (if a request is out) or a mailbox entry; report a reply to
        the broker, whose answer then lands in the mailbox. Returns what is still out."""
        poller = out[1] if out is not None else slot.idle
        ready = poller.poll(POLL_SLICE_MS)
        if out is not None and any(fd != slot.waker.fd for fd, _ in ready):
            return self._read_reply(slot, out, request_id)
        if ready:
            slot.waker.clear()
            return out
        if closed():
            raise Closed()
        now = time.monotonic()
        if now >= backstop:  # the hub thread gave no verdict: judge the deadline here
            self._run(self.broker.expire_call, slot.ident, request_id, now)
            if not slot.mailbox:
                raise NoVerdict()
        return out

    def _read_reply(self, slot: Slot, out: Out, request_id: int) -> Out | None:
        reporting = self.hub.reporting
        reporting.add(slot.ident)  # until the broker has it (see Hub._let_callers_report)
        try:
            return self._report_reply(slot, out, request_id)
        finally:
            reporting.discard(slot.ident)

    def _report_reply(self, slot: Slot, out: Out, request_id: int) -> Out | None:
        sock, _, daemon = out
        try:
            reply = read_reply(sock, self.max_message, request_id)
        except EOFError:  # the daemon is gone: the hub answers the call (WorkerLost)
            slot.forget(daemon)
            return None
        if reply is None:
            return out
        header, frame, buffers = reply
        self._run(self.broker.daemon_reply, daemon, header, frame, time.monotonic(), buffers)
        return None

    def _sent(self, slot: Slot, lease: Lease) -> Out | None:
        """What a lease left out: the socket its reply will come on, or None if it could not
        be sent (then the daemon is given up, as the hub does with one refusing a message)."""
        if lease.sent is None:  # ours to send, now
            try:
                sock, poller = slot.socket(lease.daemon, lease.endpoint)
                framing.send_message(sock, lease.frame, lease.extra)
                return sock, poller, lease.daemon
            except OSError:
                pass
        elif lease.sent:
            sock, poller = slot.sockets[lease.daemon]
            return sock, poller, lease.daemon
        slot.forget(lease.daemon)
        self._run(self.broker.daemon_unreachable, lease.daemon, lease.frame, time.monotonic(),
                  lease.extra)
        return None

    def _adopt(self, slot: Slot, out: Out, request_id: int) -> None:
        """Hand a socket whose reply is still due to the hub thread, which reports it."""
        sock, _, daemon = out
        slot.sockets.pop(daemon, None)
        self.hub.adopt(sock, daemon, slot.ident, request_id)


def read_reply(sock: socket.socket, max_message: int,
               request_id: int) -> tuple[Header, bytes, tuple[Any, ...]] | None:
    """The next message on a direct connection, as ``daemon_reply``'s (header, frame,
    buffer frames) if it is the REPLY to ``request_id``, else None (nothing else is ever
    sent there). Raises EOFError when the connection ended or broke."""
    try:
        message = framing.read_message(framing.SocketReader(sock), max_message + 4096)
    except (OSError, ValueError) as exc:
        raise EOFError(str(exc)) from None
    if message is None:
        raise EOFError("connection closed")
    frame, buffers = message
    try:
        header = read_header(frame)
    except BridgeError:
        return None
    if header.kind is not Kind.REPLY or header.id != request_id:
        return None
    return header, frame, tuple(buffers)


def _bytes_view(buffer: Any) -> Any:
    """A buffer frame whose len() is its size in bytes, as the broker counts it."""
    try:
        return memoryview(buffer).cast("B")
    except TypeError:  # not C-contiguous: zmq copies it when sending anyway
        return bytes(memoryview(buffer))
