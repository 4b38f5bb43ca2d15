"""`zbridge-daemon --stdio` as a pipe client sees it: one line in, one line out, streaming
only on request, lenient arguments by choice, and a lean start. Real processes throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import zbridge
from zbridge.execution import Executor
from zbridge.tools import REGISTRY, Registry
from zbridge_daemon.entry import parse_pipe_args

TOOLSETS = Path(__file__).parent / "toolsets"
PIPE_TOOLS = str(TOOLSETS / "pipe.py")
MIB = 1024 * 1024


class SeedClient:
    """Drives the daemon the way the seed's Go pool does: write one line, read one line."""

    def __init__(self, *tools: str, argv: list[str] | None = None) -> None:
        cmd = argv or [sys.executable, "-m", "zbridge_daemon", "--stdio"]
        for spec in tools:
            cmd += ["--tools", spec]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.next_id = 0

    def send(self, method: str, params=None) -> int:
        self.next_id += 1
        request = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            request["params"] = params
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        return self.next_id

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"daemon closed stdout: {self.proc.stderr.read()[-2000:]!r}"
        return json.loads(line)

    def ask(self, method: str, params=None) -> dict:
        """One request, exactly one line back, and it must be this request's reply."""
        sent = self.send(method, params)
        reply = self.read()
        assert "method" not in reply, f"a line nobody asked for: {str(reply)[:200]}"
        assert reply["id"] == sent
        return reply

    def close(self) -> tuple[bytes, bytes]:
        """EOF ends the daemon; whatever it still wrote is returned (should be nothing)."""
        out, err = self.proc.communicate(timeout=30)
        return out, err


@pytest.fixture
def client(basic_tools):
    made = SeedClient(basic_tools, PIPE_TOOLS)
    yield made
    if made.proc.poll() is None:
        made.proc.kill()
        made.proc.communicate()


def test_one_line_per_request_never_drifts(client):
    assert client.ask("count", [3])["result"] == [0, 1, 2]              # generator: one list
    assert client.ask("acount", [2])["result"] == [{"i": 0}, {"i": 1}]  # async generator too
    assert client.ask("noisy_items", [2])["result"] == [{"i": 0}, {"i": 1}]
    assert client.ask("chatty", ["x"])["result"] == "x"                 # prints go to stderr
    assert client.ask("execute_tool", {"tool_name": "count", "args": {"n": 2}})["result"] == [0, 1]
    assert client.ask("boom", ["no"])["error"]["code"] == -32000
    assert client.ask("count", [5, 2])["error"]["data"]["type"] == "RuntimeError"  # fails mid-way
    assert client.ask("nope")["error"]["code"] == -32601
    assert client.ask("add", {"a": 1, "zz": 2})["error"]["code"] == -32602
    assert client.ask("big", [MIB])["result"] == "x" * MIB
    assert client.ask("echo", ["y" * MIB])["result"] == "y" * MIB
    assert client.ask("execute_tool", {"tool_name": "echo", "args": {"value": None}})["result"] is None
    assert client.ask("add", [2, 3])["result"] == 5                     # still in step
    out, err = client.close()
    assert out == b"", out[:200]
    assert b"tool says x" in err and b"item 1 coming" in err


def test_stream_opt_in_sends_each_item_then_the_count(client):
    sent = client.send("zbridge.stream", {"tool": "count", "args": [3]})
    lines = [client.read() for _ in range(4)]
    assert lines[:3] == [{"jsonrpc": "2.0", "method": "zbridge.partial",
                          "params": {"id": sent, "seq": i, "item": i}} for i in range(3)]
    assert lines[3] == {"jsonrpc": "2.0", "id": sent, "result": {"items": 3}}
    assert client.ask("add", [1, 1])["result"] == 2   # the stream left the pipe in step


def test_stream_opt_in_for_a_plain_tool_is_one_item(client):
    sent = client.send("zbridge.stream", {"tool": "add", "args": {"a": 4}})
    assert client.read()["params"] == {"id": sent, "seq": 0, "item": 4}
    assert client.read() == {"jsonrpc": "2.0", "id": sent, "result": {"items": 1}}


def test_stream_error_mid_way_ends_with_the_error(client):
    sent = client.send("zbridge.stream", {"tool": "count", "args": [5, 2]})
    assert [client.read()["params"]["item"] for _ in range(2)] == [0, 1]
    final = client.read()
    assert final["id"] == sent and final["error"]["code"] == -32000


@pytest.mark.parametrize("params", [None, [], {"args": [1]}, {"tool": 3}, {"tool": "count", "args": 5}])
def test_stream_with_bad_params_is_one_invalid_params_reply(client, params):
    assert client.ask("zbridge.stream", params)["error"]["code"] == -32602


def test_extra_args_ignore_through_the_pipe(client):
    assert client.ask("lenient", {"a": 1, "b": 2, "unknown": 3})["result"] == 3
    assert client.ask("execute_tool", {"tool_name": "lenient",
                                       "args": {"a": 5, "session": "s", "trace": [1]}})["result"] == 5
    assert client.ask("lenient", [1, 2])["result"] == 3
    assert client.ask("lenient_kwargs", {"a": 1, "x": 2})["result"] == {"a": 1, "rest": {"x": 2}}
    assert client.ask("lenient", {"b": 2, "c": 3})["error"]["code"] == -32602  # a is still required
    assert client.ask("add", {"a": 1, "c": 3})["error"]["code"] == -32602      # strict by default


def test_extra_args_ignore_in_the_executor():
    def lenient(a, b=0):
        return a + b

    def strict(a, b=0):
        return a + b

    def positional_only(a, /, b=0):
        return [a, b]

    registry = Registry()
    registry.add(lenient, extra_args="ignore")
    registry.add(strict)
    registry.add(positional_only, extra_args="ignore")
    registry.add(len, extra_args="ignore")  # no signature to read: every argument passes on
    executor = Executor(registry)
    assert executor.run("lenient", {"a": 1, "b": 2, "junk": 3}) == 3
    assert registry.tools["lenient"].accepted == frozenset({"a", "b"})
    assert registry.tools["strict"].accepted is None
    with pytest.raises(zbridge.InvalidParams, match="junk"):
        executor.run("strict", {"a": 1, "junk": 3})
    assert executor.run("positional_only", [5]) == [5, 0]
    with pytest.raises(zbridge.InvalidParams):  # a positional-only name is no keyword: dropped
        executor.run("positional_only", {"a": 5})
    assert executor.run("len", [[1, 2]]) == 2


def test_extra_args_is_checked_at_decoration_and_the_function_is_returned_unchanged():
    with pytest.raises(ValueError, match="'error', 'ignore'"):
        zbridge.tool(extra_args="drop")

    def seed_style(path: str = "") -> str:
        return path
    try:
        assert zbridge.tool(seed_style, extra_args="ignore") is seed_style
        assert zbridge.tool(name="seed_style_2", extra_args="error")(seed_style) is seed_style
    finally:
        REGISTRY.tools.pop("seed_style", None)
        REGISTRY.tools.pop("seed_style_2", None)


def _console_script() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "zbridge-daemon")
    if not os.path.exists(path):
        pytest.skip("zbridge-daemon console script not installed next to this python")
    return path


@pytest.mark.parametrize("how", ["module", "console_script"])
def test_stdio_start_imports_no_click_zmq_asyncio_or_msgpack(how):
    argv = None if how == "module" else [_console_script(), "--stdio"]
    pipe = SeedClient(PIPE_TOOLS, argv=argv)
    try:
        assert pipe.ask("heavy_modules")["result"] == []
    finally:
        pipe.close()


def test_other_command_lines_still_go_to_click():
    base = [sys.executable, "-m", "zbridge_daemon"]
    help_text = subprocess.run(base + ["--help"], capture_output=True, text=True, timeout=30)
    assert help_text.returncode == 0 and "--connect" in help_text.stdout
    both = subprocess.run(base + ["--stdio", "--connect", "ipc:///nowhere"], capture_output=True,
                          text=True, timeout=30)
    assert both.returncode == 2 and "exactly one" in both.stderr
    # an option the lean path does not know takes the full path, which serves the pipe too
    full = subprocess.run(base + ["--stdio", "--log-level", "DEBUG", "--tools", PIPE_TOOLS],
                          input='{"jsonrpc":"2.0","id":1,"method":"heavy_modules"}\n',
                          capture_output=True, text=True, timeout=30)
    assert "click" in json.loads(full.stdout)["result"]


def test_parse_pipe_args(monkeypatch):
    monkeypatch.delenv("ZBRIDGE_TOOLS", raising=False)
    monkeypatch.delenv("ZBRIDGE_CONNECT", raising=False)
    monkeypatch.delenv("ZBRIDGE_EXPOSE_TRACEBACKS", raising=False)
    assert parse_pipe_args(["--stdio", "--tools", "a", "--tools=b.py", "--no-expose-tracebacks"]) \
        == ("--stdio", ("a", "b.py"), False)
    assert parse_pipe_args(["--stdio"]) == ("--stdio", (), True)
    assert parse_pipe_args(["--stdio-msgpack", "--tools", "a"]) == ("--stdio-msgpack", ("a",), True)
    for other in (["--connect", "x"], ["--stdio", "-h"], ["--stdio", "--tools"], ["--stdio", "--bogus"],
                  ["--stdio", "--stdio-msgpack"]):
        assert parse_pipe_args(other) is None
    monkeypatch.setenv("ZBRIDGE_TOOLS", "m1 m2")
    monkeypatch.setenv("ZBRIDGE_EXPOSE_TRACEBACKS", "off")
    assert parse_pipe_args(["--stdio"]) == ("--stdio", ("m1", "m2"), False)
    assert parse_pipe_args(["--stdio", "--tools", "x", "--expose-tracebacks"]) == ("--stdio", ("x",), True)
    monkeypatch.setenv("ZBRIDGE_EXPOSE_TRACEBACKS", "auto")
    assert parse_pipe_args(["--stdio"]) == ("--stdio", ("m1", "m2"), True)
    monkeypatch.setenv("ZBRIDGE_EXPOSE_TRACEBACKS", "maybe")
    assert parse_pipe_args(["--stdio"]) is None  # click reports the bad value
    monkeypatch.setenv("ZBRIDGE_CONNECT", "ipc:///x")
    assert parse_pipe_args(["--stdio", "--expose-tracebacks"]) is None


def test_fallback_gives_generator_lists_and_streams_plain_tools(bridge_factory, basic_tools):
    piped = bridge_factory(basic_tools, pool_enabled=False)
    assert piped.call("count", [3]) == [0, 1, 2]
    assert list(piped.stream("add", [1, 2])) == [3]
    assert list(piped.stream("count", [0])) == []
    with pytest.raises(zbridge.ToolNotFound):
        list(piped.stream("nope"))
