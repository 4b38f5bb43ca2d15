"""One value model: the pool and the one-shot pipe fallback give the same results and the
same errors for the same values (issue 10)."""

from __future__ import annotations

import math

import pytest

import zbridge

VALUES = [
    ("bytes", "echo", [b"\x00\xffraw"]),
    ("nan", "echo", [float("nan")]),
    ("int-keys-in-result", "echo", [[1, 2]]),  # placeholder, replaced below
    ("big-int", "echo", [2**64 - 1]),
    ("negative-int", "echo", [-(2**63)]),
    ("nested", "echo", [{"a": [1, {"b": [None, True, 2.5, "é"]}], "c": {}}]),
    ("none", "echo", [None]),
    ("none-args", "echo", None),
    ("tuple-args", "add", (2, 3)),
    ("int-keys-in-args", "echo", [{1: "x"}]),
    ("too-big-int", "echo", [2**64]),
    ("unencodable-args", "echo", [object()]),
    ("unencodable-result", "unencodable", None),
    ("tool-error", "boom", {"message": "same"}),
    ("unknown-tool", "no_such_tool", None),
    ("bad-params", "add", {"q": 1}),
    ("stream-int-keys", "stream:count", [3]),
]
VALUES[2] = ("int-keys-in-result", "int_keys", None)


def outcome(bridge: zbridge.Bridge, tool: str, args):
    try:
        if tool.startswith("stream:"):
            return ("result", list(bridge.stream(tool[7:], args)))
        return ("result", bridge.call(tool, args))
    except zbridge.BridgeError as exc:
        data = exc.data if isinstance(exc.data, dict) else {}
        return ("error", type(exc).__name__, exc.code, data.get("type"), data.get("message"))


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def tools_file(tmp_path_factory) -> str:
    from helpers import TOOLSETS
    path = tmp_path_factory.mktemp("values") / "values_tools.py"
    path.write_text((TOOLSETS / "basic.py").read_text() + "\n\n@zbridge.tool\ndef int_keys():\n"
                    "    return {1: 'x', 2: {3: b'y'}}\n")
    return str(path)


@pytest.fixture
def both(bridge_factory, tools_file):
    return bridge_factory(tools_file), bridge_factory(tools_file, pool_enabled=False)


@pytest.mark.parametrize("label,tool,args", VALUES, ids=[v[0] for v in VALUES])
def test_pool_and_fallback_agree(both, label, tool, args):
    pooled, piped = both
    expected = outcome(pooled, tool, args)
    got = outcome(piped, tool, args)
    assert same(got, expected), (label, expected, got)
