"""`zbridge serve --stdio`: the whole pool behind one pipe, as pipe clients drive it.

A line-per-request client (the seed's Go pool: write one line, read one line) and a
pipelining client (many lines written, replies matched by id as calls finish), against
real daemons, with the pool's guarantees: a daemon killed mid-call, a hung call past its
deadline, EOF draining. Nothing but reply lines may ever reach stdout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from helpers import TOOLSETS, ZBRIDGE, free_port, wait_until

BASIC = str(TOOLSETS / "basic.py")


class Front:
    """One `zbridge serve --stdio` process; stderr goes to a file nobody has to drain."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.stderr_path = tmp_path / f"front-{uuid.uuid4().hex[:8]}.err"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(ZBRIDGE + ["serve", "--stdio", "--tools", BASIC, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self.ids = 0

    def send(self, method: str, params=None, id=None) -> object:
        if id is None:
            self.ids += 1
            id = self.ids
        request = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            request["params"] = params
        self.write(json.dumps(request))
        return id

    def write(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read(self) -> object:
        line = self.proc.stdout.readline()
        assert line, f"the front closed stdout; its stderr: {self.stderr()[-3000:]}"
        return json.loads(line)  # every stdout line must be JSON: nothing else reaches it

    def ask(self, method: str, params=None, id=None) -> dict:
        """One request, one line back, and it is this request's reply."""
        sent = self.send(method, params, id)
        reply = self.read()
        assert isinstance(reply, dict) and "method" not in reply, f"a line nobody asked for: {reply}"
        assert reply["id"] == sent
        return reply

    def status(self) -> dict:
        return self.ask("zbridge.status")["result"]

    def wait_idle(self, count: int) -> None:
        assert wait_until(lambda: sum(d["state"] == "idle" for d in self.status()["daemons"]) >= count,
                          timeout=30), self.status()

    def finish(self, timeout: float = 30) -> tuple[bytes, int]:
        """EOF on stdin: what was still written, and the exit status."""
        out, _ = self.proc.communicate(timeout=timeout)
        return out, self.proc.returncode

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        self._stderr.close()


@pytest.fixture
def front(tmp_path):
    made: list[Front] = []

    def start(*args: str) -> Front:
        made.append(Front(tmp_path, *args))
        return made[-1]
    yield start
    for f in made:
        f.close()


def test_a_line_per_request_client_keeps_working(front):
    f = front("--workers", "2", "--log-level", "INFO")
    seed = {"jsonrpc": "2.0", "id": "req-1768325715211", "method": "execute_tool",
            "params": {"tool_name": "add", "args": {"a": 2, "b": 5}}}
    f.write(json.dumps(seed))
    assert f.read() == {"jsonrpc": "2.0", "id": "req-1768325715211", "result": 7}
    assert f.ask("add", [1, 2])["result"] == 3
    assert f.ask("execute_tool", {"tool_name": "echo", "args": None})["result"] is None
    assert f.ask("count", [3])["result"] == [0, 1, 2]           # a generator: one list, one line
    assert f.ask("chatty", ["quiet"])["result"] == "quiet"      # its prints go to stderr
    assert f.ask("boom", ["no"])["error"]["data"]["type"] == "ValueError"
    assert f.ask("nope")["error"]["code"] == -32601
    assert f.ask("execute_tool", {"args": [1]})["error"]["code"] == -32602
    assert f.ask("echo", [{"k": [1, None, "é"]}], id=None)["result"] == {"k": [1, None, "é"]}
    f.write("{not json")
    assert f.read()["error"]["code"] == -32700
    status = f.status()
    assert status["protocol"] == 2 and status["counters"]["completed"] >= 6
    assert len(status["daemons"]) >= 1
    f.write(json.dumps({"jsonrpc": "2.0", "method": "add", "params": [1, 1]}))  # a notification
    assert f.ask("add", [2, 2])["result"] == 4  # ... got no line: the next line is this reply
    out, code = f.finish()
    assert (out, code) == (b"", 0)
    err = f.stderr()
    assert "tool says quiet" in err and "zbridge pipe front" in err  # logs and prints: stderr


def test_a_pipelining_client_gets_replies_as_calls_finish(front):
    f = front("--workers", "3", "--prewarm")
    f.wait_idle(3)
    slow = [f.send("span", [1.0, f"slow-{i}"]) for i in range(3)]
    replies = {}
    for _ in slow:
        reply = f.read()
        replies[reply["id"]] = reply["result"]
    assert sorted(replies) == sorted(slow)
    spans = list(replies.values())
    assert len({s["pid"] for s in spans}) == 3                     # three daemons ...
    assert max(s["start"] for s in spans) < min(s["end"] for s in spans)  # ... at the same time
    # completion order, not request order: a quick call overtakes a slow one
    first = f.send("span", [1.0, "slow"])
    second = f.send("add", [1, 2])
    assert [f.read()["id"] for _ in range(2)] == [second, first]
    assert f.finish()[1] == 0


def test_a_batch_runs_its_calls_concurrently_and_answers_in_one_line(front):
    f = front("--workers", "2", "--prewarm")
    f.wait_idle(2)
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "span", "params": [0.5, "a"]},
             {"jsonrpc": "2.0", "id": 2, "method": "span", "params": [0.5, "b"]},
             {"jsonrpc": "2.0", "method": "add", "params": [1, 1]},
             {"jsonrpc": "2.0", "id": 3, "method": "zbridge.status"},
             {"jsonrpc": "2.0", "id": 4, "method": "execute_tool", "params": {"tool_name": 5}},
             {"jsonrpc": "2.0", "id": 5, "method": "zbridge.stream", "params": {"tool": "count", "args": [2]}},
             {"jsonrpc": "2.0", "id": 6, "method": "nope"}]
    f.write(json.dumps(batch))
    partials = [f.read(), f.read()]
    assert [p["params"] for p in partials] == [{"id": 5, "seq": 0, "item": 0}, {"id": 5, "seq": 1, "item": 1}]
    replies = f.read()
    assert [r["id"] for r in replies] == [1, 2, 3, 4, 5, 6]
    a, b = replies[0]["result"], replies[1]["result"]
    assert a["pid"] != b["pid"] and max(a["start"], b["start"]) < min(a["end"], b["end"])
    assert replies[2]["result"]["protocol"] == 2
    assert replies[3]["error"]["code"] == -32602
    assert replies[4]["result"] == {"items": 2}
    assert replies[5]["error"]["code"] == -32601
    assert f.finish()[1] == 0


def test_a_daemon_killed_mid_call_fails_that_call_only(front, tmp_path):
    f = front("--workers", "2", "--prewarm")
    f.wait_idle(2)
    marker = str(tmp_path / "victim")
    victim = f.send("interruptible", [30, marker])
    assert wait_until(lambda: os.path.exists(marker + ".started"), timeout=10)
    others = [f.send("span", [0.3, f"other-{i}"]) for i in range(3)]
    os.kill(int(open(marker + ".started").read()), signal.SIGKILL)
    replies = {}
    for _ in range(4):
        reply = f.read()
        replies[reply["id"]] = reply
    assert replies[victim]["error"]["code"] == -32002              # one error line for that id
    assert all(replies[i]["result"]["nonce"] == f"other-{n}" for n, i in enumerate(others))
    assert f.ask("add", [2, 3])["result"] == 5                      # and the pool carries on
    assert wait_until(lambda: f.status()["counters"]["lost"] >= 1, timeout=10)
    assert f.finish()[1] == 0


def test_a_hung_call_gets_its_deadline_and_its_daemon_is_killed(front):
    f = front("--workers", "2", "--prewarm", "--timeout", "0.5", "--kill-grace", "0.5")
    f.wait_idle(2)
    hung = f.send("spin", [3600])
    quick = f.send("add", [1, 2])
    replies = {}
    for _ in range(2):
        reply = f.read()
        replies[reply["id"]] = reply
    assert replies[quick]["result"] == 3
    assert replies[hung]["error"]["code"] == -32001
    assert wait_until(lambda: f.status()["counters"]["kills"] >= 1, timeout=15)
    assert f.ask("add", [3, 4])["result"] == 7
    assert f.finish()[1] == 0


def test_eof_answers_every_call_in_flight_then_stops(front):
    f = front("--workers", "2")
    ids = [f.send("span", [0.5, f"drain-{i}"]) for i in range(3)]
    out, code = f.finish()
    replies = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["id"] for r in replies) == ids and all("result" in r for r in replies)
    assert code == 0


def test_sigterm_drains_the_calls_in_flight(front):
    f = front("--workers", "1", "--prewarm")
    f.wait_idle(1)
    running = f.send("span", [0.5, "finishing"])
    assert wait_until(lambda: f.status()["daemons"][0]["state"] == "busy", timeout=10)
    f.proc.send_signal(signal.SIGTERM)
    reply = f.read()
    assert reply["id"] == running and reply["result"]["nonce"] == "finishing"
    assert f.finish()[1] == 0


def test_the_pool_behind_the_pipe_exports_metrics(front):
    port = free_port()
    f = front("--workers", "1", "--metrics", f"127.0.0.1:{port}", "--metrics-allow-anyone")
    assert f.ask("add", [1, 2])["result"] == 3

    def scraped() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as page:
                return page.read().decode()
        except OSError:
            return ""
    assert wait_until(lambda: 'zbridge_calls_total{outcome="ok",tool="add"} 1.0' in scraped(), timeout=15), scraped()
    assert f.finish()[1] == 0


def test_the_front_process_itself_cannot_print_to_stdout(tmp_path):
    """Even output of the front's own process (an embedding hook, a stray print) goes to stderr."""
    script = ("import sys; from zbridge.pipefront import protocol_stdout; out = protocol_stdout(); "
              "print('stray'); import os; os.write(1, b'raw\\n'); out.write(b'reply\\n'); out.flush()")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert done.stdout == b"reply\n"
    assert b"stray" in done.stderr and b"raw" in done.stderr
