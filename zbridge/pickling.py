"""Opt-in pickle bodies (``serializer="pickle"``): any Python object, for trusted local use.

Unpickling runs code chosen by the sender, so pickle stays on one host and one connection:

* **A client object** whose settings say ``serializer="pickle"`` (on a local endpoint)
  decodes a pickled reply only to a request it sent as pickle itself (``decode_reply_body(...,
  pickle=True)``); any other client, in the same process or not, refuses one. There is no
  process-wide opt-in for replies.
* **The hub** forwards a pickled reply or stream item only to a caller whose request was
  pickle (``foreign_pickle``, checked by the broker), and refuses ``serializer="pickle"``
  when any of its endpoints (frontend, daemon bind, heartbeat bind) is tcp.
* **A daemon** decodes pickle requests only when started with ``--allow-pickle`` (``allow()``:
  the daemon process's switch; its hub passes it only to its own local daemons, and the
  daemon refuses it with a tcp endpoint), and sends a pickled reply only then
  (``check_send``).

Protocol 5: with a
``buffers`` list, the pickle's out-of-band buffers (numpy arrays, bytearray: whatever offers
a ``PickleBuffer``) of at least ``OOB_THRESHOLD`` bytes go into it, at most ``MAX_BUFFERS``,
to travel as buffer frames; ``loads`` takes them back in the same order.
"""

from __future__ import annotations

import pickle
from typing import Any, Sequence

from .codec import MAX_BUFFERS, OOB_THRESHOLD
from .errors import InternalError, InvalidRequest

SERIALIZERS = ("msgpack", "pickle")
FLAG = 0x10  # protocol.FLAG_PICKLE (header byte 4)
REFUSED = ("a pickle body arrived but this side did not ask for pickle (only a daemon started "
           "with --allow-pickle takes pickle requests, and only the client object that sent "
           "a request as pickle takes a pickled reply to it)")
_allowed = False


def allow() -> None:
    """Let this daemon process decode pickle *requests* (and answer them in pickle). Called
    only by ``zbridge-daemon --allow-pickle``; clients opt in per object, never here."""
    global _allowed
    _allowed = True


def allowed() -> bool:
    return _allowed


def refuse_remote(serializer: str, *endpoints: str | None) -> None:
    """ValueError when pickle would cross a network: any of ``endpoints`` is tcp."""
    if serializer != "pickle":
        return
    for endpoint in endpoints:
        if endpoint and endpoint.startswith("tcp://"):
            raise ValueError(f"serializer='pickle' is refused with the tcp endpoint {endpoint}: "
                             "unpickling runs the sender's code, so pickle is for local (ipc/inproc) "
                             "bridges only; use the default msgpack (with zbridge.register_type "
                             "for your own types)")


def check_send(flags: int) -> None:
    """ValueError for a pickled reply or item from a process that did not opt in (a daemon
    without ``--allow-pickle``, so never one on tcp)."""
    if flags & FLAG and not _allowed:
        raise ValueError("this daemon does not send pickle: it was not started with "
                         "--allow-pickle (refused over tcp)")


def foreign_pickle(request: bytes | memoryview, reply: bytes | memoryview) -> bool:
    """Whether ``reply`` (a REPLY or PARTIAL frame) is pickle though ``request`` was not: the
    hub never forwards such a reply (a daemon's code would run in a caller that did not ask
    for pickle)."""
    return bool(reply[4] & FLAG) and not request[4] & FLAG


def dumps(obj: Any, buffers: list[Any] | None = None) -> bytes:
    """Pickle (large buffers into ``buffers`` when given, see above); any failure is a
    TypeError naming what could not be pickled."""
    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        """False (out of band) for a large buffer while there is room; True keeps it in."""
        assert buffers is not None
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: pickle copies it in band
            return True
        if raw.nbytes < OOB_THRESHOLD or len(buffers) >= MAX_BUFFERS:
            return True
        buffers.append(raw)
        return False

    try:
        if buffers is not None:
            return pickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
        return pickle.dumps(obj, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError, ValueError, RecursionError) as exc:
        raise TypeError(f"cannot pickle: {type(exc).__name__}: {exc}") from None


def remote_error() -> InvalidRequest:
    """What a pickle request gets from a hub that admits daemons from other hosts."""
    return InvalidRequest("pickle requests are refused by this hub: it admits daemons from other "
                          "hosts (daemon_bind), and pickle stays on one host; use msgpack")


def foreign_error() -> InternalError:
    """What a caller gets instead of a pickled reply it did not ask for."""
    return InternalError("the daemon answered this call with a pickle body though the call "
                         "was not sent as pickle: refused (pickle replies reach only callers "
                         "that sent their request as pickle)")


def loads(data: bytes | memoryview, buffers: Sequence[Any] = ()) -> Any:
    """Unpickle (``buffers``: its out-of-band buffers, in order); ValueError on any failure.
    The caller decided that this body may be unpickled (``protocol._body``)."""
    try:
        return pickle.loads(data, buffers=buffers)
    except Exception as exc:  # noqa: BLE001 - unpickling can raise anything
        raise ValueError(f"cannot unpickle: {type(exc).__name__}: {exc}"[:300]) from None
