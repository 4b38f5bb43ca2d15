"""How a typed handle's arguments become a request's params (pure: no process, no socket)."""

from __future__ import annotations

import functools

import pytest

import zbridge
from zbridge.handles import positional_names, wire_name, wire_params


def plain(a, b=1, *rest, c=2, **more): ...


def test_positional_or_keyword_alone_map_as_call_takes_them():
    names = positional_names(plain)
    assert wire_params("t", names, (1, 2), {}) == [1, 2]
    assert wire_params("t", names, (), {"a": 1}) == {"a": 1}
    assert wire_params("t", names, (), {}) is None
    assert wire_params("t", None, (1,), {}) == [1]  # a handle by name: no signature needed


def test_mixed_arguments_are_named_from_the_signature():
    names = positional_names(plain)
    assert names == ("a", "b")
    assert wire_params("t", names, (1,), {"c": 3}) == {"a": 1, "c": 3}
    assert wire_params("t", names, (1, 2), {"extra": 4}) == {"a": 1, "b": 2, "extra": 4}


@pytest.mark.parametrize("args, kwargs, names, message", [
    ((1,), {"a": 2}, ("a", "b"), "multiple values for argument 'a'"),
    ((1, 2, 3), {"c": 3}, ("a", "b"), "3 positional arguments with keywords"),
    ((1,), {"b": 2}, (None, "b"), "positional-only parameter 0"),
    ((1,), {"b": 2}, None, "all by position or all by keyword"),
])
def test_mixed_arguments_that_no_dict_can_carry_are_refused(args, kwargs, names, message):
    with pytest.raises(zbridge.InvalidParams, match=message):
        wire_params("t", names, args, kwargs)


def test_the_wire_name_is_the_registered_one():
    @zbridge.tool(name="served_as")
    def local_name() -> None: ...

    @functools.wraps(local_name)
    def wrapper() -> None: ...

    assert wire_name(local_name) == "served_as"
    assert wire_name(wrapper) == "served_as"  # functools.wraps keeps the mark
    assert wire_name(plain) == "plain"        # a module's public function: its own name
    with pytest.raises(TypeError):
        wire_name(object())  # type: ignore[arg-type]
