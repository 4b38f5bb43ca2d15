"""Tools for the conformance vectors' value cases (docs/conformance): what arrived in the
daemon, described with plain msgpack types only, and canonical values of every extension
type to send back. Loaded beside basic.py, so its names differ from basic.py's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from decimal import Decimal

import zbridge


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


zbridge.register_type(Point, lambda p: [p.x, p.y], lambda v: Point(*v), name="conformance.Point")

UTC = dt.timezone.utc
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))


def ramp(n: int, start: int = 0) -> bytes:
    """Bytes start, start+1, ... modulo 256: large values a vector can describe briefly."""
    return bytes((start + i) % 256 for i in range(n))


def _array(kind: str):
    import numpy as np
    if kind == "array":
        return np.arange(6, dtype="<i4").reshape(2, 3)
    if kind == "array_f":
        return np.asfortranarray(np.arange(6, dtype="<i4").reshape(2, 3))
    if kind == "array_be":
        return np.array([1.5, -2.0], dtype=">f8")
    if kind == "big_array":
        return np.frombuffer(ramp(76800), dtype=np.uint8).reshape(300, 256)
    raise KeyError(kind)


SAMPLES = {
    "utc": lambda: dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    "offset": lambda: dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=IST),
    "naive": lambda: dt.datetime(2026, 1, 2, 3, 4, 5, 6),
    "date": lambda: dt.date(2026, 1, 2),
    "time": lambda: dt.time(3, 4, 5, 6),
    "time_offset": lambda: dt.time(3, 4, 5, tzinfo=IST),
    "decimal": lambda: Decimal("-1.50E+3"),
    "uuid": lambda: uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "tuple": lambda: (1, "a"),
    "set": lambda: {1, 2},
    "frozenset": lambda: frozenset({"x"}),
    "point": lambda: Point(1, 2),
    "nested": lambda: {"when": dt.date(2026, 1, 2), "pair": (Decimal("1.0"), {3})},
    "big_bytes": lambda: ramp(76800),
    "two_big_bytes": lambda: [ramp(70144), ramp(70144, 128)],
    "small_bytes": lambda: ramp(16),
}


@zbridge.tool
def sample(kind: str):
    """A canonical value of one extension type, for the daemon-to-client direction."""
    if kind.startswith(("array", "big_array")):
        return _array(kind)
    return SAMPLES[kind]()


@zbridge.tool
def blobs(count: int, size: int):
    """A generator of large bytes values: PARTIALs with buffer frames."""
    for i in range(count):
        yield ramp(size, i)


def _offset(value) -> int | None:
    offset = value.utcoffset()
    return None if offset is None else int(offset.total_seconds())


def describe(value):
    """What arrived, with plain types only (the client-to-daemon direction)."""
    kind = type(value).__qualname__
    if isinstance(value, (dt.datetime, dt.time)):
        return {"type": kind, "iso": value.isoformat(), "utcoffset": _offset(value)}
    if isinstance(value, dt.date):
        return {"type": kind, "iso": value.isoformat()}
    if isinstance(value, (Decimal, uuid.UUID)):
        return {"type": kind, "text": str(value)}
    if isinstance(value, (tuple, list)):
        return {"type": kind, "items": [describe(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"type": kind, "items": sorted((describe(v) for v in value), key=repr)}
    if isinstance(value, dict):
        return {"type": kind, "items": {str(k): describe(v) for k, v in value.items()}}
    if isinstance(value, bytes):
        return {"type": kind, "len": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, Point):
        return {"type": kind, "x": value.x, "y": value.y}
    if hasattr(value, "dtype") and hasattr(value, "flags"):
        import numpy as np
        return {"type": kind, "descr": np.lib.format.dtype_to_descr(value.dtype),
                "shape": list(value.shape), "tolist": value.tolist() if value.size <= 16 else None,
                "sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest(),
                "writeable": bool(value.flags.writeable)}
    return {"type": kind, "value": value}


@zbridge.tool
def inspect(value=None):
    return describe(value)


@zbridge.tool
def inspect_all(*values):
    return [describe(v) for v in values]
