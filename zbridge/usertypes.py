"""User codecs: ``zbridge.register_type`` and the per-process table it fills.

A registered type travels as the extension type ``EXT_USER`` (see ``codec``), whose body is
``[name, to_wire(obj)]``. Only the name crosses the wire, so both sides must register the same
name: the caller in its own process, a daemon by importing the tools module (register at the
module's top level, next to the tools). Pure: no msgpack, no zmq.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

# types msgpack packs by itself: a registration for them would never be consulted
_NATIVE = (type(None), bool, int, float, str, bytes, bytearray, memoryview, list, dict)


class UserType(NamedTuple):
    cls: type
    name: str
    to_wire: Callable[[Any], Any]
    from_wire: Callable[[Any], Any]


_by_type: dict[type, UserType] = {}
_by_name: dict[str, UserType] = {}


def register_type(cls: type, to_wire: Callable[[Any], Any], from_wire: Callable[[Any], Any], *,
                  name: str | None = None) -> None:
    """Send instances of ``cls`` as ``to_wire(obj)`` (any value zbridge can send) and rebuild
    them with ``from_wire(value)`` on the other side.

    ``name`` (default ``module.QualName``) is what identifies the type on the wire; give it
    explicitly when the defining module is loaded by path, since its module name then differs
    between processes. Registering a name again replaces the earlier codec (module reloads).
    Subclasses of ``cls`` without a registration of their own are sent with this codec too.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_type needs a class, not {cls!r}")
    if cls in _NATIVE:
        raise ValueError(f"{cls.__name__} is sent natively by msgpack and cannot be re-registered")
    if not callable(to_wire) or not callable(from_wire):
        raise TypeError("register_type needs callables to_wire(obj) and from_wire(value)")
    name = name or f"{cls.__module__}.{cls.__qualname__}"
    if not isinstance(name, str) or not name:
        raise ValueError("a user type's name must be a non-empty string")
    old = _by_name.get(name)
    if old is not None:
        _by_type.pop(old.cls, None)
    entry = UserType(cls, name, to_wire, from_wire)
    _by_type[cls] = entry
    _by_name[name] = entry


def unregister_type(cls: type) -> None:
    """Forget ``cls`` (tests, plugins that unload)."""
    entry = _by_type.pop(cls, None)
    if entry is not None and _by_name.get(entry.name) is entry:
        del _by_name[entry.name]


def for_type(cls: type) -> UserType | None:
    """The codec for ``cls`` or its nearest registered base class."""
    if not _by_type:
        return None
    for base in cls.__mro__:
        entry = _by_type.get(base)
        if entry is not None:
            return entry
    return None


def for_name(name: str) -> UserType | None:
    return _by_name.get(name)
