"""zbridge errors as HTTP responses (zbridge/httperrors.py, the table in docs/WEB.md). Pure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import zbridge
from zbridge.errors import InternalError, InvalidRequest
from zbridge.httperrors import http_error, status_for

WEB_MD = Path(__file__).parent.parent / "docs" / "WEB.md"


@pytest.mark.parametrize("error, status", [
    (zbridge.InvalidParams("bad arguments for tool 'f'"), 422),
    (zbridge.CallTimeout("deadline"), 504),
    (zbridge.WorkerLost("died"), 502),
    (zbridge.ConnectionLost("dropped"), 502),
    (zbridge.Overloaded("queue full"), 503),
    (zbridge.PoolUnavailable("no daemon", {"cause": "start_failed"}), 503),
    (zbridge.Cancelled("closing"), 503),
    (zbridge.ToolError("ValueError: no", {"type": "ValueError", "traceback": "..."}), 500),
    (zbridge.ToolNotFound("unknown tool"), 500),
    (InvalidRequest("bad"), 500),
    (InternalError("oops"), 500),
])
def test_each_error_has_its_status(error, status):
    assert status_for(error) == status


def test_the_guide_states_the_same_table():
    """docs/WEB.md's table (| `Error` | status | ...) is what status_for does."""
    rows = re.findall(r"^\| `(\w+)`[^|]*\| (\d{3})", WEB_MD.read_text(), re.M)
    assert len(rows) >= 10
    for name, status in rows:
        cls = getattr(zbridge, name, None) or {"InvalidRequest": InvalidRequest,
                                                "InternalError": InternalError}[name]
        data = {"type": "X"} if cls is zbridge.ToolError else None
        assert status_for(cls("x", data)) == int(status), name


def test_retry_after_only_when_waiting_helps():
    assert http_error(zbridge.Overloaded("full")).headers == {"Retry-After": "1"}
    assert http_error(zbridge.Overloaded("full"), retry_after=5).headers == {"Retry-After": "5"}
    unreachable = zbridge.PoolUnavailable("hub gone", {"cause": "unreachable"})
    assert http_error(unreachable).headers == {"Retry-After": "1"}
    broken = zbridge.PoolUnavailable("tools fail to import", {"cause": "load_failed"})
    assert http_error(broken).status == 503 and http_error(broken).headers == {}
    assert http_error(zbridge.CallTimeout("late")).headers == {}


def test_the_body_names_the_error_but_never_the_traceback():
    error = zbridge.ToolError("KeyError: 'x'", {"type": "KeyError", "message": "'x'",
                                                "traceback": "Traceback (most recent call last): ..."})
    body = http_error(error).body
    assert body == {"error": {"code": -32000, "type": "ToolError", "message": "KeyError: 'x'",
                              "tool_error": "KeyError"}}


def test_tool_errors_named_as_bad_input_are_the_clients_fault():
    value_error = zbridge.ToolError("ValueError: no", {"type": "ValueError"})
    assert http_error(value_error, bad_input=("ValueError",)).status == 422
    assert http_error(value_error, bad_input=("KeyError",)).status == 500
    assert http_error(zbridge.CallTimeout("late"), bad_input=("ValueError",)).status == 504
