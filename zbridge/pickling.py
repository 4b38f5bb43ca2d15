"""Opt-in pickle bodies (``serializer="pickle"``): any Python object, for trusted local use.

Unpickling runs code chosen by the sender, so a process decodes pickle bodies only after it
opted in (``allow()``): a client whose settings say ``serializer="pickle"`` on a local
endpoint, or a daemon started with ``--allow-pickle`` (its hub passes that only when its own
frontend is not tcp). Everyone else refuses a body flagged as pickle. Protocol 5: with a
``buffers`` list, the pickle's out-of-band buffers (numpy arrays, bytearray: whatever offers
a ``PickleBuffer``) of at least ``OOB_THRESHOLD`` bytes go into it, at most ``MAX_BUFFERS``,
to travel as buffer frames; ``loads`` takes them back in the same order.
"""

from __future__ import annotations

import pickle
from typing import Any, Sequence

from .codec import MAX_BUFFERS, OOB_THRESHOLD

SERIALIZERS = ("msgpack", "pickle")
_allowed = False


def allow() -> None:
    """Let this process decode pickle bodies (it trusts every peer it talks to)."""
    global _allowed
    _allowed = True


def allowed() -> bool:
    return _allowed


def refuse_remote(serializer: str, endpoint: str | None) -> None:
    """ValueError when pickle would cross a network."""
    if serializer == "pickle" and endpoint and endpoint.startswith("tcp://"):
        raise ValueError(f"serializer='pickle' is refused on the tcp endpoint {endpoint}: unpickling "
                         "runs the sender's code, so pickle is for local (ipc/inproc) bridges only; "
                         "use the default msgpack (with zbridge.register_type for your own types)")


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


def loads(data: bytes | memoryview, buffers: Sequence[Any] = ()) -> Any:
    """Unpickle (``buffers``: its out-of-band buffers, in order); refused unless ``allow()``
    was called. ValueError on any failure."""
    if not _allowed:
        raise PermissionError("a pickle body arrived but this process did not opt in to pickle "
                              "(serializer='pickle' on a local bridge, or zbridge-daemon --allow-pickle)")
    try:
        return pickle.loads(data, buffers=buffers)
    except Exception as exc:  # noqa: BLE001 - unpickling can raise anything
        raise ValueError(f"cannot unpickle: {type(exc).__name__}: {exc}"[:300]) from None
