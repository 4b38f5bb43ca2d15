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
 11    buffer frame         msgpack ``[index, kind, meta]``: the value is buffer frame
                            ``index`` of the message (out of band, ``pack_value``); kind
                            ``"a"`` = numpy array, meta ``[descr, shape, order]``; kind
                            ``"b"`` = bytes (also from bytearray / memoryview), meta nil
=====  ===================  ==============================================================

Out of band (``pack_value`` / ``unpack_value``): a numpy array or bytes-like value of at
least ``OOB_THRESHOLD`` bytes is not copied into the body; it becomes its own buffer (the
array's memory itself, made contiguous only if it was neither C- nor F-contiguous), and
the receiver rebuilds arrays with ``numpy.frombuffer`` over the received buffer. A
receiver never amplifies: each buffer frame may be referenced **once** per message (a
second reference is a ``BufferReferenceError``), so references are bounded by frames; an
array is a view of its frame, a bytes value is the frame itself when it arrived as
``bytes`` (the pipe paths) and one copy of it otherwise (a zmq frame).

One reading of a message: a map with the same key twice is refused (``DuplicateKeyError``)
at any depth, so no two readers can take different values from it (msgpack itself would
keep the last one). Arrays
are found by msgpack's ``default`` hook (no cost for values without arrays). msgpack packs
bytes itself, so large bytes are looked for: among a body's values and their items first
(cheap, every message), then, when the in-band body still came out at least
``OOB_THRESHOLD`` bytes long, by a walk of at most ``WALK_BUDGET`` values at any depth
(the body is then packed a second time).

numpy scalars (``np.float64(1.5)``, ``np.int32``, ``np.bool_``) are sent as plain numbers.
Anything else is a TypeError that names the type and says what to do.
"""

from __future__ import annotations

import threading

import datetime as dt
import uuid
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any, Callable, Sequence

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
EXT_BUFFER = 11

OOB_THRESHOLD = 65536   # buffers at least this large travel as their own frame
MAX_BUFFERS = 64        # buffer frames per message, at most (beyond: in band)
WALK_BUDGET = 10_000    # values a search for large bytes visits, at most

_ZERO = dt.timedelta(0)


class ValueDecodeError(ValueError):
    """An extension value this process cannot rebuild (unknown code, unregistered user type,
    malformed body). Its message names the type."""


class BufferReferenceError(ValueDecodeError):
    """A buffer reference to a frame the message lacks, or to one already referenced."""


class DuplicateKeyError(ValueError):
    """A msgpack map holds the same key twice."""


def unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """msgpack's ``object_pairs_hook``: the map as a dict, refused if a key repeats
    (~0.3 µs per map: a small request pays it once)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[Any] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(f"map key {key!r:.80} appears more than once")
            seen.add(key)
    return out


def packb(obj: Any) -> bytes:
    """msgpack with zbridge's extension types; TypeError names a type that cannot be sent."""
    return _pack(obj, None)


def unpackb(data: bytes | memoryview, *, strict_map_key: bool = True) -> Any:
    """The value in ``data``; msgpack's own errors, ValueDecodeError and DuplicateKeyError
    propagate."""
    return msgpack.unpackb(data, raw=False, strict_map_key=strict_map_key, timestamp=3,
                           ext_hook=_HOOKS[strict_map_key], object_pairs_hook=unique_keys)


def pack_value(obj: Any) -> tuple[bytes, list[Any]]:
    """``obj`` packed with its large arrays and bytes out of band: (body, buffers). Each
    buffer is an object with the buffer protocol (an array's own memory, or the bytes
    object itself) to send as one frame without copying; ``[]`` when nothing is large."""
    if _shallow_large_bytes(obj):  # the common places, found before a costly in-band pack
        obj = _lift_bytes(obj, [WALK_BUDGET])
    sink = _Sink()
    packed = _pack(obj, sink)
    if len(packed) >= OOB_THRESHOLD and len(sink.buffers) < MAX_BUFFERS:
        lifted = _lift_bytes(obj, [WALK_BUDGET])
        if lifted is not obj:  # large bytes found: pack again with them as buffers
            sink = _Sink()
            packed = _pack(lifted, sink)
    return packed, sink.buffers


def unpack_value(data: bytes | memoryview, buffers: Sequence[Any], *,
                 strict_map_key: bool = True) -> Any:
    """The value in ``data`` whose buffer references point into ``buffers`` (objects with
    the buffer protocol, e.g. ``zmq.Frame.buffer``); arrays view them without a copy, and
    each buffer may be referenced once."""
    if not buffers:
        return unpackb(data, strict_map_key=strict_map_key)
    return _unpack(data, strict_map_key, _Refs(buffers))


class _Refs:
    """One message's buffer frames and which of them a reference already took."""
    __slots__ = ("buffers", "taken")

    def __init__(self, buffers: Sequence[Any]) -> None:
        self.buffers = buffers
        self.taken = bytearray(len(buffers))

    def take(self, index: int) -> Any:
        if not 0 <= index < len(self.buffers):
            raise BufferReferenceError(f"buffer reference {index} but the message has "
                                       f"{len(self.buffers)} buffer frame(s)")
        if self.taken[index]:
            raise BufferReferenceError(f"buffer frame {index} is referenced more than once: "
                                       "each buffer frame may be referenced once per message")
        self.taken[index] = 1
        return self.buffers[index]


_NO_REFS = _Refs(())


def _unpack(data: bytes | memoryview, strict: bool, refs: _Refs) -> Any:
    hook = _HOOKS[strict] if refs is _NO_REFS else partial(_ext_hook, strict=strict, refs=refs)
    return msgpack.unpackb(data, raw=False, strict_map_key=strict, timestamp=3,
                           ext_hook=hook, object_pairs_hook=unique_keys)


class _Sink:
    """Where one ``pack_value`` collects its out-of-band buffers."""
    __slots__ = ("buffers",)

    def __init__(self) -> None:
        self.buffers: list[Any] = []

    def take(self, buffer: Any, kind: str, meta: Any) -> msgpack.ExtType:
        self.buffers.append(buffer)
        return msgpack.ExtType(EXT_BUFFER, msgpack.packb([len(self.buffers) - 1, kind, meta]))

    def room(self) -> bool:
        return len(self.buffers) < MAX_BUFFERS


class _Bytes:
    """A large bytes-like value found by ``_lift_bytes``, to go out of band."""
    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data


def _is_large_bytes(obj: Any) -> bool:
    """A bytes, bytearray or contiguous memoryview of at least OOB_THRESHOLD bytes."""
    cls = type(obj)
    if cls is memoryview:
        return bool(obj.contiguous and obj.nbytes >= OOB_THRESHOLD)
    return (cls is bytes or cls is bytearray) and len(obj) >= OOB_THRESHOLD


_BYTES = (bytes, bytearray, memoryview)


def _shallow_large_bytes(body: Any) -> bool:
    """Whether a large bytes value is one of a body map's values or their items (an
    argument, a keyword argument, a result, an item of a returned list or map). A few
    hundred nanoseconds: run on every message."""
    if type(body) is not dict:
        return False
    for value in body.values():
        cls = type(value)
        if cls in _BYTES:
            if _is_large_bytes(value):
                return True
        elif cls is list or cls is tuple:
            for item in value:
                if type(item) in _BYTES and _is_large_bytes(item):
                    return True
        elif cls is dict:
            for item in value.values():
                if type(item) in _BYTES and _is_large_bytes(item):
                    return True
    return False


def _lift_bytes(obj: Any, budget: list[int]) -> Any:
    """``obj`` with large bytes values wrapped in ``_Bytes`` (containers on their way
    rebuilt, the rest shared); ``obj`` itself when there is none. Visits at most
    ``budget[0]`` values in all: what lies beyond stays in band."""
    budget[0] -= 1
    if _is_large_bytes(obj):
        return _Bytes(obj)
    cls = type(obj)
    if cls not in (list, tuple, dict):
        return obj
    values = list(obj.values()) if cls is dict else obj
    out: list[Any] | None = None
    for i, value in enumerate(values):
        if budget[0] <= 0:
            break
        new = _lift_bytes(value, budget)
        if new is not value:
            if out is None:
                out = list(values)
            out[i] = new
    if out is None:
        return obj
    if cls is dict:
        return dict(zip(obj.keys(), out))
    return out if cls is list else tuple(out)


def _pack(obj: Any, sink: _Sink | None) -> bytes:
    default = _default if sink is None else partial(_default, sink=sink)
    packed: bytes = msgpack.packb(obj, use_bin_type=True, strict_types=True, default=default)
    return packed


# --- packing -----------------------------------------------------------------------------

def _datetime(value: dt.datetime) -> Any:
    offset = value.utcoffset()
    if offset is None:
        return msgpack.ExtType(EXT_NAIVE_DATETIME, value.isoformat().encode())
    if offset == _ZERO:
        return msgpack.Timestamp.from_datetime(value)
    return msgpack.ExtType(EXT_DATETIME, value.isoformat().encode())


def _items(code: int) -> Callable[[Any, _Sink | None], msgpack.ExtType]:
    return lambda value, sink: msgpack.ExtType(code, _pack(list(value), sink))


def _plain(convert: Callable[[Any], Any]) -> Callable[[Any, _Sink | None], Any]:
    return lambda value, sink: convert(value)


_ENCODERS: dict[type, Callable[[Any, _Sink | None], Any]] = {
    dt.datetime: _plain(_datetime),
    dt.date: _plain(lambda v: msgpack.ExtType(EXT_DATE, v.isoformat().encode())),
    dt.time: _plain(lambda v: msgpack.ExtType(EXT_TIME, v.isoformat().encode())),
    Decimal: _plain(lambda v: msgpack.ExtType(EXT_DECIMAL, str(v).encode())),
    uuid.UUID: _plain(lambda v: msgpack.ExtType(EXT_UUID, v.bytes)),
    tuple: _items(EXT_TUPLE),
    set: _items(EXT_SET),
    frozenset: _items(EXT_FROZENSET),
    # subclasses of what msgpack packs natively: sent as the plain base
    int: _plain(int), float: _plain(float), str: _plain(str.__str__), bytes: _plain(bytes),
    dict: _plain(dict), list: _plain(list),
}


def _default(obj: Any, sink: _Sink | None = None) -> Any:
    """What msgpack cannot pack by itself, as something it can (or an ExtType); with a
    ``sink``, large arrays and lifted bytes go out of band into it."""
    cls = type(obj)
    if cls is _Bytes:
        if sink is not None and sink.room():
            return sink.take(obj.data, "b", None)
        return bytes(obj.data)
    user = usertypes.for_type(cls)
    if user is not None:
        return msgpack.ExtType(EXT_USER, _pack([user.name, user.to_wire(obj)], sink))
    for base in cls.__mro__:
        encode = _ENCODERS.get(base)
        if encode is not None:
            return encode(obj, sink)
    np = arrays.numpy_if_loaded()
    if np is not None:
        if isinstance(obj, np.ndarray):
            if sink is not None and obj.nbytes >= OOB_THRESHOLD and sink.room():
                header, data = arrays.out_of_band(obj)
                return sink.take(data, "a", header)
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


def _user(data: bytes, strict: bool, refs: _Refs) -> Any:
    value = _unpack(data, strict, refs)
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


def _buffer(data: bytes, refs: _Refs) -> Any:
    """The value of a buffer reference ``[index, kind, meta]``: the frame itself (bytes
    that arrived as bytes), one copy of it (bytes from a zmq frame), or a view (arrays)."""
    ref = msgpack.unpackb(data, raw=False)
    if not (isinstance(ref, list) and len(ref) == 3 and type(ref[0]) is int and ref[1] in ("a", "b")):
        raise ValueDecodeError("a buffer reference must be [index, 'a'|'b', meta]")
    index, kind, meta = ref
    buffer = refs.take(index)
    if kind == "b":
        return buffer if type(buffer) is bytes else bytes(buffer)
    return arrays.from_buffer(meta, buffer)


_DECODERS: dict[int, tuple[str, Callable[[bytes, bool, _Refs], Any]]] = {
    EXT_USER: ("user type", _user),
    EXT_DATETIME: ("datetime", lambda d, s, b: dt.datetime.fromisoformat(_text(d))),
    EXT_NAIVE_DATETIME: ("datetime", lambda d, s, b: dt.datetime.fromisoformat(_text(d))),
    EXT_DATE: ("date", lambda d, s, b: dt.date.fromisoformat(_text(d))),
    EXT_TIME: ("time", lambda d, s, b: dt.time.fromisoformat(_text(d))),
    EXT_DECIMAL: ("Decimal", lambda d, s, b: Decimal(_text(d))),
    EXT_UUID: ("UUID", lambda d, s, b: uuid.UUID(bytes=d)),
    EXT_TUPLE: ("tuple", lambda d, s, b: tuple(_array(d, s, b))),
    EXT_SET: ("set", lambda d, s, b: set(_array(d, s, b))),
    EXT_FROZENSET: ("frozenset", lambda d, s, b: frozenset(_array(d, s, b))),
    EXT_NDARRAY: ("numpy array", lambda d, s, b: arrays.unpack(d)),
    EXT_BUFFER: ("buffer", lambda d, s, b: _buffer(d, b)),
}


def _array(data: bytes, strict: bool, refs: _Refs) -> list[Any]:
    items = _unpack(data, strict, refs)
    if not isinstance(items, list):
        raise ValueDecodeError("body must be a msgpack array")
    return items


MAX_EXT_DEPTH = 32  # each level decodes a copy of its body: bound the copies of one frame
_depth = threading.local()


def _ext_hook(code: int, data: bytes, *, strict: bool, refs: _Refs = _NO_REFS) -> Any:
    level = getattr(_depth, "level", 0)
    if level >= MAX_EXT_DEPTH:
        raise ValueDecodeError(f"extension values nested deeper than {MAX_EXT_DEPTH} levels")
    _depth.level = level + 1
    try:
        return _decode_ext(code, data, strict, refs)
    finally:
        _depth.level = level


def _decode_ext(code: int, data: bytes, strict: bool, refs: _Refs) -> Any:
    known = _DECODERS.get(code)
    if known is None:
        raise ValueDecodeError(
            f"unknown msgpack extension type {code}: this zbridge knows -1 and 0 to "
            f"{max(_DECODERS)} (is the sender a newer zbridge?)")
    kind, decode = known
    try:
        return decode(data, strict, refs)
    except (ValueDecodeError, DuplicateKeyError):
        raise
    except (ValueError, TypeError, InvalidOperation, UnicodeDecodeError, RecursionError,
            msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueDecodeError(f"malformed {kind} (extension type {code}): "
                               f"{type(exc).__name__}: {exc}"[:300]) from None


_HOOKS = {flag: partial(_ext_hook, strict=flag) for flag in (True, False)}
