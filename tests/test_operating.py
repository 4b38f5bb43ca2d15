"""An operator's logs and start errors (issue 23): with --log-format json every stderr line
of a hub is a JSON record (banners, calls, a crash, a tool error, daemon output, stop); a
tool error is logged once on the server, rate-limited per tool; a tools module that cannot
load gives one short error naming the file and line, its traceback only at DEBUG."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import pytest

import zbridge
from helpers import TOOLSETS, ZBRIDGE, raw_dealer, served, wait_until
from zbridge import protocol
from zbridge.protocol import encode_request
from zbridge.ratelimit import RateLimit

OPERATING = str(TOOLSETS / "operating.py")
TYPO = textwrap.dedent("""\
    import zbridge

    @zbridge.tool
    def f(x):
        return x +* 2
""")


def records(path):
    """Every line of the log as JSON: fails on the first line that is not one object."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        record = json.loads(line)
        assert isinstance(record, dict), (number, line)
        out.append(record)
    return out


# --- logs ----------------------------------------------------------------------------

@pytest.mark.parametrize("level", ["INFO", "WARNING"])
def test_every_stderr_line_of_a_json_hub_is_a_record(tmp_path, level):
    with served(tmp_path, "--tools", OPERATING, "--log-format", "json", "--log-level", level) as (endpoint, _):
        with raw_dealer(endpoint) as sock:
            sock.send(encode_request(77, "boom", ["no\nforged line"]))
            assert protocol.decode_reply_body(sock.recv())["error"]["code"] == -32000
        with zbridge.Client(endpoint, fallback=False) as client:
            with pytest.raises(zbridge.WorkerLost):
                client.call("crash", [9])
            assert client.call("chatty", ["hi"]) == "hi"   # said by the next daemon, w2
        log = tmp_path / "serve.log"
        assert wait_until(lambda: len([r for r in records(log) if r.get("stream") == "stderr"]) >= 2)
    everything = records(tmp_path / "serve.log")
    events = [r.get("event") for r in everything]
    assert events[0] == "hub_start" and events[-1] == "hub_stop"
    (error,) = [r for r in everything if r.get("event") == "tool_error"]
    assert (error["tool"], error["request_id"], error["error_type"], error["error"]) == \
        ("boom", 77, "ValueError", "no\nforged line")
    assert error["level"] == "WARNING" and error["logger"] == "zbridge.daemon" and error["daemon"] == "w1"
    (crash,) = [r for r in everything if r.get("event") == "daemon_exit"]
    assert crash["reason"] == "crashed" and crash["detail"] == "exited with code 9"  # not the tool error
    said = [r for r in everything if r.get("stream") == "stderr"]
    assert {"tool says hi", "tool warns hi"} <= {r["msg"] for r in said}  # tool output, whatever the level
    assert all(r["daemon"] == "w2" and isinstance(r["pid"], int) for r in said)


def test_tool_errors_are_logged_once_each_then_rate_limited(bridge_factory, caplog):
    caplog.set_level(logging.DEBUG, logger="zbridge")
    bridge = bridge_factory([OPERATING])
    for i in range(12):
        with pytest.raises(zbridge.ToolError):
            bridge.call("boom", [f"n{i}"])

    def logged(level):
        return [r for r in caplog.records if getattr(r, "event", None) == "tool_error" and r.levelno == level]
    assert wait_until(lambda: len(logged(logging.DEBUG)) >= 5)
    warnings = logged(logging.WARNING)
    assert [r.error for r in warnings] == [f"n{i}" for i in range(5)]
    assert all(r.tool == "boom" and r.daemon == "w1" and r.error_type == "ValueError" for r in warnings)
    assert "Traceback" in logged(logging.DEBUG)[0].getMessage()
    assert len(logged(logging.WARNING)) == 5  # the other seven were counted, not written


def test_rate_limit_counts_what_it_drops_and_forgets_old_keys():
    limit = RateLimit(burst=2, window=10.0, max_keys=2)
    assert [limit.allow("a", t) for t in (0, 1, 2, 3)] == [0, 0, None, None]
    assert limit.allow("b", 4) == 0                     # another key has its own budget
    assert limit.allow("a", 10.5) == 2                  # a new window: says what it dropped
    limit.allow("c", 11)                                # three keys: the oldest is forgotten
    assert len(limit._keys) == 2


# --- start errors ----------------------------------------------------------------------

def test_a_typo_in_the_tools_prints_a_dozen_lines_naming_file_and_line(tmp_path):
    (tmp_path / "typo_tools.py").write_text(TYPO)
    out = subprocess.run([sys.executable, "-c", "import zbridge; zbridge.Bridge(tools='typo_tools').call('f',[1])"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    assert out.returncode == 1 and len(lines) <= 12, out.stderr
    assert "SyntaxError" in lines[-1] and f"{tmp_path / 'typo_tools.py'}, line 5" in lines[-1], lines[-1]
    assert "importlib" not in out.stderr


def test_zbridge_call_and_serve_say_it_in_a_few_lines_too(tmp_path):
    typo = tmp_path / "typo_tools.py"
    typo.write_text(TYPO)
    out = subprocess.run(ZBRIDGE + ["call", "f", "--args", "[1]", "--tools", str(typo)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and len(out.stderr.splitlines()) <= 12, out.stderr
    error = json.loads(out.stderr.splitlines()[-1])
    assert f"{typo}, line 5" in error["message"] and "stderr" not in error["data"]
    with served(tmp_path, "--tools", str(typo), "--log-format", "json", "--log-level", "DEBUG") as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:
            with pytest.raises(zbridge.PoolUnavailable, match="line 5"):
                client.call("f", [1])
    everything = records(tmp_path / "serve.log")
    exits = [r for r in everything if r.get("event") == "daemon_exit"]
    assert exits and all(f"{typo}, line 5" in r["detail"] for r in exits)
    debug = [r for r in everything if r["level"] == "DEBUG" and "Traceback" in r.get("exc", "")]
    assert debug and all(r["daemon"].startswith("w") for r in debug)  # the full story, at DEBUG


def test_a_failure_deeper_in_user_code_names_its_last_user_frame(tmp_path, bridge_factory):
    (tmp_path / "helper_mod.py").write_text("def load_model():\n    return undefined_name\n")
    (tmp_path / "deep_tools.py").write_text(
        "import zbridge\nimport helper_mod\nMODEL = helper_mod.load_model()\n\n"
        "@zbridge.tool\ndef f():\n    return MODEL\n")
    bridge = bridge_factory([f"deep_tools@{tmp_path}"], start_retries=1)
    with pytest.raises(zbridge.PoolUnavailable) as info:
        bridge.call("f")
    message = str(info.value)
    assert "NameError: name 'undefined_name' is not defined" in message
    assert f"in load_model, {tmp_path / 'helper_mod.py'}, line 2" in message, message


# --- the benchmark, installed ------------------------------------------------------------

def test_the_benchmark_runs_from_the_installed_package_anywhere(tmp_path):
    out = subprocess.run(ZBRIDGE + ["bench", "--list"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "zbridge.embedded.w1" in out.stdout, out.stderr
    # a floor case: its far side runs as `python -m zbridge_bench.servers`, outside any clone
    out = subprocess.run([sys.executable, "-m", "zbridge_bench", "--only", "floor.pipe", "--repeats", "1",
                          "--calls", "20"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "floor.pipe" in out.stdout, out.stderr
