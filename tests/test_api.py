"""The public surface: exactly these names, each importable (httpx's test_exported_members)."""

from __future__ import annotations

import zbridge

EXPORTED = {
    "__version__", "tool", "startup", "current_call", "register_type", "Bridge", "Client", "AsyncBridge", "AsyncClient",
    "BridgeError", "DidNotRun", "MayHaveRun", "Interrupted",
    "CallTimeout", "Cancelled", "ConnectionLost", "InternalError", "InvalidParams",
    "InvalidRequest", "Overloaded", "ParseError", "PoolUnavailable", "ReloadFailed", "ToolError",
    "ToolNotFound", "WorkerLost",
}


def test_exported_names_are_pinned():
    assert set(zbridge.__all__) == EXPORTED
    assert len(zbridge.__all__) == len(set(zbridge.__all__))


def test_every_exported_name_resolves():
    for name in zbridge.__all__:
        assert getattr(zbridge, name) is not None, name
    assert isinstance(zbridge.__version__, str)


def test_every_public_class_says_where_it_lives():
    for name in zbridge.__all__:
        value = getattr(zbridge, name)
        if isinstance(value, type):
            assert value.__module__.startswith("zbridge."), name
