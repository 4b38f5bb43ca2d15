"""How big a value will be on the wire, bounded from below before it is encoded. Pure.

A client refuses an argument that cannot fit ``max_message_size`` before it spends the time
and memory to encode it (500 MiB of text took 1.5 s and 1.4 GiB to encode only to be
refused). ``lower_bound`` walks the value cheaply: the length of each str and bytes-like, the
``nbytes`` of each array, one byte for every other item; it stops as soon as the bound
passes the limit, or after ``WALK_BUDGET`` values (what it has seen by then is still a lower
bound, and the encoded message is checked again after encoding, as before). Every count is
at most what msgpack (or pickle) writes for that value, so nothing that fits is refused.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

WALK_BUDGET = 10_000  # values visited at most (a few ms); beyond that the encoder decides

_SEQUENCES = (list, tuple, set, frozenset)


def lower_bound(value: Any, limit: int, budget: int = WALK_BUDGET) -> int:
    """At most the encoded size of ``value``; returns as soon as it exceeds ``limit``.

    Each value is counted as one byte by its container (the top one too) plus what it
    holds beyond that: a str or bytes-like its length, an array its ``nbytes``, a list its
    items, a map its keys and values."""
    total = 1
    stack = [value]
    while stack and budget > 0:
        budget -= 1
        obj = stack.pop()
        cls = type(obj)
        if cls is str or cls is bytes or cls is bytearray:
            total += len(obj)
            continue
        if cls is int or cls is float or cls is bool or obj is None:
            continue
        if cls is list or cls is tuple:
            total += len(obj)
            stack.extend(obj if len(obj) <= budget else obj[:budget])
        elif cls is dict:
            total += 2 * len(obj)
            stack.extend(islice(obj.keys(), budget))
            stack.extend(islice(obj.values(), budget))
        else:
            total += _other(obj, stack, budget)
        if total > limit:
            return total
    return total


def _other(obj: Any, stack: list[Any], budget: int) -> int:
    """Subclasses of the plain types, sets, memoryviews and arrays; 0 for the rest (a
    datetime, a user type: small, or counted when encoded)."""
    if isinstance(obj, (str, bytes, bytearray)):
        return len(obj)
    if isinstance(obj, memoryview):
        return obj.nbytes
    if isinstance(obj, _SEQUENCES):
        stack.extend(islice(obj, budget))
        return len(obj)
    if isinstance(obj, dict):
        stack.extend(islice(obj.keys(), budget))
        stack.extend(islice(obj.values(), budget))
        return 2 * len(obj)
    nbytes = getattr(obj, "nbytes", None)  # numpy arrays (and scalars: a few bytes)
    return nbytes if type(nbytes) is int and nbytes > 0 else 0
