"""The pipe protocol of `zbridge-daemon --stdio`, driven as a user's program would."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SEED_LINE = ('{"jsonrpc":"2.0","id":1,"method":"execute_tool",'
             '"params":{"tool_name":"health","args":{"action":"server"}}}')


def run_stdio(lines: list[str] | str, *tools: str, timeout: float = 30) -> subprocess.CompletedProcess:
    text = lines if isinstance(lines, str) else "".join(line + "\n" for line in lines)
    cmd = [sys.executable, "-m", "zbridge_daemon", "--stdio"]
    for spec in tools:
        cmd += ["--tools", spec]
    return subprocess.run(cmd, input=text.encode(), capture_output=True, timeout=timeout)


def replies(proc: subprocess.CompletedProcess) -> list:
    lines = proc.stdout.decode().splitlines()
    return [json.loads(line) for line in lines]


def test_seed_line_gives_exactly_one_valid_reply():
    proc = subprocess.run(f"echo '{SEED_LINE}' | zbridge-daemon --stdio", shell=True,
                          capture_output=True, timeout=30)
    assert proc.returncode == 0
    (reply,) = replies(proc)
    assert reply["jsonrpc"] == "2.0" and reply["id"] == 1
    assert reply["result"]["status"] == "ok"


def test_printing_tool_still_yields_one_valid_line(basic_tools):
    proc = run_stdio(['{"jsonrpc":"2.0","id":"a","method":"chatty","params":["x"]}'], basic_tools)
    assert replies(proc) == [{"jsonrpc": "2.0", "id": "a", "result": "x"}]
    assert b"tool says x" in proc.stderr and b"raw fd 1 write" in proc.stderr


def test_one_mib_result(basic_tools):
    size = 1024 * 1024
    proc = run_stdio([json.dumps({"jsonrpc": "2.0", "id": 7, "method": "big", "params": [size]})], basic_tools)
    (reply,) = replies(proc)
    assert reply["result"] == "x" * size


def test_one_mib_request_line(basic_tools):
    payload = "y" * (1024 * 1024)
    proc = run_stdio([json.dumps({"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [payload]})], basic_tools)
    assert replies(proc)[0]["result"] == payload


def test_many_calls_in_one_process_keep_state(basic_tools):
    lines = [json.dumps({"jsonrpc": "2.0", "id": i, "method": "cached", "params": ["k"]}) for i in range(5)]
    got = replies(run_stdio(lines, basic_tools))
    assert [r["id"] for r in got] == list(range(5))
    assert [r["result"]["hits"] for r in got] == [1, 2, 3, 4, 5]
    assert len({r["result"]["pid"] for r in got}) == 1


@pytest.mark.parametrize("line, code, id", [
    ("{not json", -32700, None),
    ('{"jsonrpc":"2.0","id":3,"method":"nope"}', -32601, 3),
    ('{"jsonrpc":"2.0","id":"s","method":"add","params":{"z":1}}', -32602, "s"),
    ('{"jsonrpc":"1.0","id":4,"method":"add"}', -32600, 4),
    ('{"jsonrpc":"2.0","id":5,"method":"boom"}', -32000, 5),
    ('{"jsonrpc":"2.0","id":6,"method":"unencodable"}', -32603, 6),
    ('[]', -32600, None),
    ('{"jsonrpc":"2.0","id":8,"method":"execute_tool","params":{"args":{}}}', -32602, 8),
])
def test_error_replies(basic_tools, line, code, id):
    (reply,) = replies(run_stdio([line], basic_tools))
    assert reply["error"]["code"] == code
    assert reply["id"] == id


def test_positional_named_notification_and_batch(basic_tools):
    lines = [
        '{"jsonrpc":"2.0","id":1,"method":"add","params":[1,2]}',
        '{"jsonrpc":"2.0","id":2,"method":"add","params":{"a":3,"b":4}}',
        '{"jsonrpc":"2.0","method":"add","params":[1,1]}',
        '[{"jsonrpc":"2.0","id":"x","method":"add","params":[5]},{"jsonrpc":"2.0","method":"pid"},1]',
        '[{"jsonrpc":"2.0","method":"pid"}]',
        '{"jsonrpc":"2.0","id":null,"method":"add","params":[0]}',
    ]
    got = replies(run_stdio(lines, basic_tools))
    assert got[0] == {"jsonrpc": "2.0", "id": 1, "result": 3}
    assert got[1] == {"jsonrpc": "2.0", "id": 2, "result": 7}
    assert got[2][0] == {"jsonrpc": "2.0", "id": "x", "result": 5}
    assert got[2][1]["error"]["code"] == -32600 and len(got[2]) == 2
    assert got[3] == {"jsonrpc": "2.0", "id": None, "result": 0}
    assert len(got) == 4


def test_load_failure_answers_every_call_with_the_cause(broken_tools):
    got = replies(run_stdio([SEED_LINE, SEED_LINE], broken_tools))
    assert len(got) == 2
    for reply in got:
        assert reply["error"]["code"] == -32004
        assert "zbridge_missing_dependency_xyz" in reply["error"]["message"]


def test_exits_on_eof_with_no_input():
    proc = run_stdio("")
    assert proc.returncode == 0 and proc.stdout == b""
