"""Values on the zmq wire: msgpack, plus extension types for what msgpack lacks.

Pure: no zmq, and numpy is imported only when an array is packed or an array arrives.
Packing uses ``strict_types`` so a tuple stays a tuple; subclasses of the plain types
(an ``IntEnum``, a ``str`` enum, an ``OrderedDict``, a namedtuple) are sent as their
plain base (int, str, dict, tuple).

=====  ===================  ==============================================================
code   Python value         extension body
=====  ===================  ==============================================================
 -1    aware ``datetime``   msgpack's own Timestamp, when the UTC offset is 0; arrives with
       (UTC)                ``tzinfo=timezone.utc``
  0    user type            msgpack ``[name, to_wire(obj)]`` (``zbridge.register_type``)
  1    aware ``datetime``   ISO 8601 text with its offset (``2026-01-02T03:04:05.000006+02:00``);
                            arrives with a fixed ``timezone(offset)``, same wall time and offset
  2    naive ``datetime``   ISO 8601 text without offset; arrives naive
  3    ``date``             ISO 8601 text (``2026-01-02``)
  4    ``time``             ISO 8601 text, with its offset if it has a fixed one
  5    ``Decimal``          its ``str()`` (exact: digits, exponent, sign, NaN, Infinity)
  6    ``UUID``             its 16 bytes
  7    ``tuple``            msgpack array of the items
  8    ``set``              msgpack array of the items
  9    ``frozenset``        msgpack array of the items
 10    numpy ``ndarray``    see ``zbridge.arrays``: dtype, shape, order, raw bytes
=====  ===================  ==============================================================

numpy scalars (``np.float64(1.5)``, ``np.int32``, ``np.bool_``) are sent as plain numbers.
Anything else is a TypeError that names the type and says what to do.
"""

from __future__ import annotations

import threading

import datetime as dt
import uuid
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any, Callable

import msgpack

from . import arrays, usertypes

EXT_TIMESTAMP = -1
EXT_USER = 0
EXT_DATETIME = 1
EXT_NAIVE_DATETIME = 2
EXT_DATE = 3
EXT_TIME = 4
EXT_DECIMAL = 5
EXT_UUID = 6
EXT_TUPLE = 7
EXT_SET = 8
EXT_FROZENSET = 9
EXT_NDARRAY = 10

_ZERO = dt.timedelta(0)


class ValueDecodeError(ValueError):
    """An extension value this process cannot rebuild (unknown code, unregistered user type,
    malformed body). Its message names the type."""


def packb(obj: Any) -> bytes:
    """msgpack with zbridge's extension types; TypeError names a type that cannot be sent."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True, strict_types=True, default=_default)
    return packed


def unpackb(data: bytes | memoryview, *, strict_map_key: bool = True) -> Any:
    """The value in ``data``; msgpack's own errors and ValueDecodeError propagate."""
    return msgpack.unpackb(data, raw=False, strict_map_key=strict_map_key, timestamp=3,
                           ext_hook=_HOOKS[strict_map_key])


# --- packing -----------------------------------------------------------------------------

def _datetime(value: dt.datetime) -> Any:
    offset = value.utcoffset()
    if offset is None:
        return msgpack.ExtType(EXT_NAIVE_DATETIME, value.isoformat().encode())
    if offset == _ZERO:
        return msgpack.Timestamp.from_datetime(value)
    return msgpack.ExtType(EXT_DATETIME, value.isoformat().encode())


def _items(code: int) -> Callable[[Any], msgpack.ExtType]:
    return lambda value: msgpack.ExtType(code, packb(list(value)))


_ENCODERS: dict[type, Callable[[Any], Any]] = {
    dt.datetime: _datetime,
    dt.date: lambda v: msgpack.ExtType(EXT_DATE, v.isoformat().encode()),
    dt.time: lambda v: msgpack.ExtType(EXT_TIME, v.isoformat().encode()),
    Decimal: lambda v: msgpack.ExtType(EXT_DECIMAL, str(v).encode()),
    uuid.UUID: lambda v: msgpack.ExtType(EXT_UUID, v.bytes),
    tuple: _items(EXT_TUPLE),
    set: _items(EXT_SET),
    frozenset: _items(EXT_FROZENSET),
    # subclasses of what msgpack packs natively: sent as the plain base
    int: int, float: float, str: str.__str__, bytes: bytes, dict: dict, list: list,
}


def _default(obj: Any) -> Any:
    """What msgpack cannot pack by itself, as something it can (or an ExtType)."""
    cls = type(obj)
    user = usertypes.for_type(cls)
    if user is not None:
        return msgpack.ExtType(EXT_USER, packb([user.name, user.to_wire(obj)]))
    for base in cls.__mro__:
        encode = _ENCODERS.get(base)
        if encode is not None:
            return encode(obj)
    np = arrays.numpy_if_loaded()
    if np is not None:
        if isinstance(obj, np.ndarray):
            return msgpack.ExtType(EXT_NDARRAY, arrays.pack(obj))
        if isinstance(obj, np.generic):
            return _numpy_scalar(obj)
    raise TypeError(unsupported(cls))


def _numpy_scalar(obj: Any) -> Any:
    value = obj.item()
    if type(value) is type(obj):  # no Python equivalent (e.g. longdouble): no silent loss
        raise TypeError(unsupported(type(obj)))
    return value


def unsupported(cls: type) -> str:
    name = f"{cls.__module__}.{cls.__qualname__}".removeprefix("builtins.")
    return (f"cannot send a value of type {name}: convert it to a supported value, or call "
            f"zbridge.register_type({cls.__qualname__}, to_wire, from_wire) in the caller and "
            "at import of the tools module (see the Values table in docs/PROTOCOL.md)")


# --- unpacking ---------------------------------------------------------------------------

def _text(data: bytes) -> str:
    return data.decode()


def _user(data: bytes, strict: bool) -> Any:
    value = unpackb(data, strict_map_key=strict)
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)):
        raise ValueDecodeError("a user type's body must be [name, value]")
    name, wire = value
    user = usertypes.for_name(name)
    if user is None:
        raise ValueDecodeError(
            f"unknown user type {name!r}: this process has no zbridge.register_type(..., "
            f"name={name!r}); register it here too (in a daemon: at import of the tools module)")
    try:
        return user.from_wire(wire)
    except Exception as exc:  # noqa: BLE001 - user code; reported with the type's name
        raise ValueDecodeError(f"from_wire of user type {name!r} failed: "
                               f"{type(exc).__name__}: {exc}") from None


_DECODERS: dict[int, tuple[str, Callable[[bytes, bool], Any]]] = {
    EXT_USER: ("user type", _user),
    EXT_DATETIME: ("datetime", lambda d, s: dt.datetime.fromisoformat(_text(d))),
    EXT_NAIVE_DATETIME: ("datetime", lambda d, s: dt.datetime.fromisoformat(_text(d))),
    EXT_DATE: ("date", lambda d, s: dt.date.fromisoformat(_text(d))),
    EXT_TIME: ("time", lambda d, s: dt.time.fromisoformat(_text(d))),
    EXT_DECIMAL: ("Decimal", lambda d, s: Decimal(_text(d))),
    EXT_UUID: ("UUID", lambda d, s: uuid.UUID(bytes=d)),
    EXT_TUPLE: ("tuple", lambda d, s: tuple(_array(d, s))),
    EXT_SET: ("set", lambda d, s: set(_array(d, s))),
    EXT_FROZENSET: ("frozenset", lambda d, s: frozenset(_array(d, s))),
    EXT_NDARRAY: ("numpy array", lambda d, s: arrays.unpack(d)),
}


def _array(data: bytes, strict: bool) -> list[Any]:
    items = unpackb(data, strict_map_key=strict)
    if not isinstance(items, list):
        raise ValueDecodeError("body must be a msgpack array")
    return items


MAX_EXT_DEPTH = 32  # each level decodes a copy of its body: bound the copies of one frame
_depth = threading.local()


def _ext_hook(code: int, data: bytes, *, strict: bool) -> Any:
    level = getattr(_depth, "level", 0)
    if level >= MAX_EXT_DEPTH:
        raise ValueDecodeError(f"extension values nested deeper than {MAX_EXT_DEPTH} levels")
    _depth.level = level + 1
    try:
        return _decode_ext(code, data, strict)
    finally:
        _depth.level = level


def _decode_ext(code: int, data: bytes, strict: bool) -> Any:
    known = _DECODERS.get(code)
    if known is None:
        raise ValueDecodeError(
            f"unknown msgpack extension type {code}: this zbridge knows -1 and 0 to "
            f"{max(_DECODERS)} (is the sender a newer zbridge?)")
    kind, decode = known
    try:
        return decode(data, strict)
    except ValueDecodeError:
        raise
    except (ValueError, TypeError, InvalidOperation, UnicodeDecodeError, RecursionError,
            msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueDecodeError(f"malformed {kind} (extension type {code}): "
                               f"{type(exc).__name__}: {exc}"[:300]) from None


_HOOKS = {flag: partial(_ext_hook, strict=flag) for flag in (True, False)}
