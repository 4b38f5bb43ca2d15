"""Tools for test_values.py: echo any value, describe what arrived, stream arrays, user types.

The module registers its user type at import, as users should: the daemon gets the codec by
loading this file, the test process by importing it too.
"""

from __future__ import annotations

import datetime as dt

import msgpack

import zbridge


class Point:
    def __init__(self, x: float, y: float) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)

    def __repr__(self) -> str:
        return f"Point({self.x!r}, {self.y!r})"


class DaemonOnly:
    """Registered here, but the test process unregisters it: its results cannot be decoded."""


class Unregistered:
    pass


# loaded by path, this module's name differs between processes: give the wire name explicitly
zbridge.register_type(Point, lambda p: [p.x, p.y], lambda v: Point(*v), name="zbridge-tests.Point")
zbridge.register_type(DaemonOnly, lambda _: None, lambda _: DaemonOnly(), name="zbridge-tests.DaemonOnly")


@zbridge.tool
def echo(value=None):
    return value


@zbridge.tool
def describe(value=None) -> dict:
    """What arrived in the daemon: its type, and for arrays their layout."""
    info = {"type": type(value).__qualname__}
    if hasattr(value, "dtype") and hasattr(value, "flags"):
        info.update(dtype=str(value.dtype), shape=list(value.shape),
                    f_contiguous=bool(value.flags.f_contiguous), writeable=bool(value.flags.writeable))
    return info


@zbridge.tool
def ramps(n: int, size: int, dtype: str = "float64"):
    """A generator of arrays, for stream()."""
    import numpy as np
    for i in range(n):
        yield np.arange(size, dtype=dtype) + i


@zbridge.tool
def scalar64(x: float):
    import numpy as np
    return {"f": np.float64(x), "i": np.int32(7), "b": np.bool_(True)}


@zbridge.tool
def now() -> dt.datetime:
    return dt.datetime(2026, 1, 2, 3, 4, 5, 6)


@zbridge.tool
def unregistered():
    return Unregistered()


@zbridge.tool
def daemon_only():
    return DaemonOnly()


@zbridge.tool
def unknown_ext():
    return msgpack.ExtType(99, b"?")
