"""JSON-RPC line parsing, without processes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from zbridge import errors, jsonrpc
from zbridge.jsonrpc import Call, Invalid


def test_notification_vs_null_id():
    (call,), _ = jsonrpc.parse_line('{"jsonrpc":"2.0","method":"m"}')
    assert call == Call(None, "m", None, True)
    (call,), _ = jsonrpc.parse_line('{"jsonrpc":"2.0","method":"m","id":null}')
    assert call.notification is False


def test_invalid_ids_and_members():
    for line in ('{"jsonrpc":"2.0","method":"m","id":true}', '{"jsonrpc":"2.0","method":"m","id":[1]}',
                 '{"jsonrpc":"2.0","method":1,"id":1}', '{"jsonrpc":"2.0","method":"m","params":1,"id":1}',
                 '{"method":"m","id":1}', '"string"'):
        (item,), _ = jsonrpc.parse_line(line)
        assert isinstance(item, Invalid) and isinstance(item.error, errors.InvalidRequest), line


def test_deep_nesting_is_a_parse_error_not_a_crash():
    (item,), _ = jsonrpc.parse_line("[" * 100000 + "]" * 100000)
    assert isinstance(item, Invalid)


def test_seed_envelope():
    assert jsonrpc.resolve_tool_call("execute_tool", {"tool_name": "t", "args": {"a": 1}}) == ("t", {"a": 1})
    assert jsonrpc.resolve_tool_call("t", [1]) == ("t", [1])


@given(st.binary(max_size=300))
def test_arbitrary_lines_never_raise(data):
    items, _ = jsonrpc.parse_line(data)
    assert items and all(isinstance(i, (Call, Invalid)) for i in items)
