"""True latencies through a real pool (issue 23): a 6 s call is reported as 6 s, and a call
that timed out is counted with the time it ran. The sketch's accuracy over the whole range
is tested without processes in test_stats.py."""

from __future__ import annotations

import pytest

import zbridge
from helpers import TOOLSETS

OPERATING = str(TOOLSETS / "operating.py")


def test_a_six_second_call_and_a_timeout_show_in_status_as_they_were(bridge_factory):
    bridge = bridge_factory([OPERATING], workers=2, kill_grace=0.5)
    bridge.wait_ready(timeout=30)
    six = bridge.submit("nap", [6.0])
    with pytest.raises(zbridge.CallTimeout):
        bridge.call("hang", [30.0], timeout=1.0)
    assert six.result(timeout=30) == 6.0
    tools = bridge.status()["tools"]
    nap = tools["nap"]["run_s"]
    for q in ("p50", "p90", "p99"):
        assert abs(nap[q] - 6.0) <= 0.05 * 6.0, nap
    hang = tools["hang"]
    assert hang["calls"] == 1 and hang["errors"] == {"-32001": 1}
    assert hang["run_s"]["count"] == 1 and abs(hang["run_s"]["p50"] - 1.0) <= 0.1, hang
