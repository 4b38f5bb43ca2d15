"""Seeing what the pool does (issue 16): lifecycle notes and JSON logs, per-tool numbers,
Prometheus metrics scraped over HTTP, the --watch view under a pty, trace context."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import zbridge
from helpers import TOOLSETS, ZBRIDGE, default_sigint, free_port, raw_dealer, served, wait_until
from zbridge import errors, protocol
from zbridge.actions import Note
from zbridge.broker import Broker
from zbridge.calls import build_request
from zbridge.config import Settings
from zbridge.logs import JsonFormatter, TextFormatter, escape, note_text
from zbridge.metrics import check_access, parse_address
from zbridge.protocol import (Header, Kind, encode_error, encode_request, encode_result, peek_error_code,
                              peek_method, read_header)
from zbridge.stats import BOUNDS, MAX_TOOLS, OTHER, Histogram, ToolTable
from zbridge.watch import render

OBSERVE = str(TOOLSETS / "observe.py")
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# --- pure parts ----------------------------------------------------------------------

def test_histogram_is_fixed_size_and_estimates_quantiles():
    h = Histogram()
    for _ in range(90):
        h.add(0.0007)   # (0.0005, 0.001]
    for _ in range(10):
        h.add(0.07)     # (0.05, 0.1]
    assert len(h.counts) == len(BOUNDS) + 1 and h.count == 100
    assert 0.0005 < h.quantile(0.5) <= 0.001
    assert 0.05 < h.quantile(0.99) <= 0.1
    h.add(10_000.0)     # beyond the last bound: the +Inf bucket, no growth
    assert h.counts[-1] == 1 and len(h.counts) == len(BOUNDS) + 1
    assert Histogram().quantile(0.5) is None


def test_tool_table_is_bounded():
    table = ToolTable(limit=4)
    for i in range(100):
        table.get(f"t{i}").answered(None)
    assert len(table.by_name) <= 5 and table.by_name[OTHER].calls == 96
    assert MAX_TOOLS >= 64


def test_only_served_names_get_an_entry_and_none_is_evicted():
    table = ToolTable(limit=4)
    table.get("early").answered(None)  # before any daemon is ready: a provisional entry
    table.serve(["real", "other_real"])
    for i in range(5000):
        table.get(f"made_up_{i}").answered(-32601)
    table.get("real").answered(None)
    table.get("health").answered(None)  # every daemon answers it
    assert table.by_name["real"].calls == 1 and table.by_name[OTHER].calls == 5000
    assert set(table.by_name) == {"early", "real", "health", OTHER}


def test_text_logs_escape_control_characters_in_values():
    forged = "x\n\x1b[2Kzbridge INFO zbridge.hub: forged"
    line = note_text("call_cancelled", {"tool": forged, "why": "a b\nc"})
    assert "\n" not in line and "\x1b" not in line and "tool='x\\n\\x1b[2K" in line
    record = logging.LogRecord("zbridge.hub", logging.WARNING, __file__, 1, "unknown tool %s", (forged,), None)
    text = TextFormatter("%(levelname)s %(message)s").format(record)
    assert text.count("\n") == 0 and "\x1b" not in text and text.startswith("WARNING unknown tool x\\n")
    assert escape("tab\tdel\x7fc1\x85 é ✓") == "tab\\tdel\\x7fc1\\x85 é ✓"


def test_peek_method_reads_only_the_start_of_the_body():
    assert peek_method(encode_request(1, "noop", [1, 2])) == "noop"
    assert peek_method(encode_request(1, "x" * 40, None)) == "x" * 40       # str8
    assert peek_method(encode_request(1, "y" * 200, {"a": 1})) == "y" * 200  # str8 up to 255
    assert peek_method(encode_request(1, "z" * 300, None)) is None           # longer: not peeked
    assert peek_method(encode_request(1, "ünï", None)) == "ünï"
    header = protocol.pack_header(Kind.REQUEST, 1)
    assert peek_method(header + protocol.packb({"params": [], "method": "late"})) is None
    assert peek_method(header + protocol.packb(["method", "x"])) is None
    assert peek_method(header + b"\x81\xa6method\xa5ab") is None   # truncated
    assert peek_method(header + b"\x81\xa6method\xa2\xff\xfe") is None  # not utf-8
    assert peek_method(header) is None


def test_peek_error_code_tells_results_from_errors():
    assert peek_error_code(encode_result(1, {"error": 1})) is None
    assert peek_error_code(encode_error(1, errors.ToolError("x", {"type": "ValueError"}))) == -32000
    assert peek_error_code(encode_error(1, errors.ToolNotFound("x"))) == -32601
    header = protocol.pack_header(Kind.REPLY, 1)
    assert peek_error_code(header + protocol.packb({"error": {"code": 7}})) == 7
    assert peek_error_code(header + protocol.packb({"error": {"message": "?"}})) == -32603
    assert peek_error_code(header + b"\x81\xa5error") == -32603


def test_traceparent_is_checked_and_travels_in_the_body():
    frame = encode_request(3, "t", None, trace=TRACE)
    request = protocol.decode_request(frame)
    assert request.trace == TRACE and peek_method(frame) == "t"
    assert protocol.decode_request(encode_request(3, "t")).trace is None
    assert b"trace" not in encode_request(3, "t")
    for bad in ["", "00-abc", TRACE[:-1], "01" + TRACE[2:], TRACE.replace("4", "g", 1), 7]:
        with pytest.raises(ValueError):
            encode_request(1, "t", trace=bad)
        with pytest.raises(ValueError):
            build_request(Settings(), 1, "t", None, 1.0, False, trace=bad)
    assert build_request(Settings(), 1, "t", None, 1.0, False, trace=TRACE) == \
        encode_request(1, "t", None, timeout_ms=1000, trace=TRACE)
    bad_body = protocol.pack_header(Kind.REQUEST, 1) + protocol.packb({"method": "t", "trace": "x"})
    with pytest.raises(errors.InvalidRequest):
        protocol.decode_request(bad_body)


def _notes(actions):
    return [a for a in actions if isinstance(a, Note)]


def test_broker_notes_the_lifecycle_and_counts_per_tool():
    b = Broker(Settings(), rng=random.Random(0), new_ident=lambda n: b"w%d" % n)
    frame = encode_request(1, "noop", [1])
    actions = b.submit(b"c", read_header(frame), frame, 0.0)
    assert [n.event for n in _notes(actions)] == ["daemon_spawn"]
    (started,) = b.daemon_spawned(b"w1", 4242)
    assert started.event == "daemon_started" and started.fields == {"daemon": "w1", "pid": 4242}
    ready = _notes(b.daemon_ready(b"w1", {"pid": 4242, "tools": ["noop"]}, 0.25))
    assert ready[0].event == "daemon_ready" and ready[0].fields["startup_s"] == 0.25
    assert b.status(0.3)["daemons"][0]["current_tool"] == "noop"
    b.daemon_reply(b"w1", Header(Kind.REPLY, 1), encode_result(1, [1]), 0.5)
    frame = encode_request(2, "noop", [1])
    b.submit(b"c", read_header(frame), frame, 1.0)
    error = encode_error(2, errors.ToolError("no"))
    b.daemon_reply(b"w1", Header(Kind.REPLY, 2), error, 1.5)
    frame = encode_request(3, "noop", [1])
    b.submit(b"c", read_header(frame), frame, 2.0)
    exit_notes = _notes(b.daemon_exited(b"w1", 3.0, "killed by SIGKILL", -9))
    (note,) = [n for n in exit_notes if n.event == "daemon_exit"]
    assert note.level == logging.WARNING
    assert note.fields["pid"] == 4242 and note.fields["reason"] == "crashed"
    assert note.fields["signal"] == 9 and note.fields["exit_code"] is None
    assert note.fields["request_id"] == 3 and note.fields["tool"] == "noop"
    tools = b.status(3.0)["tools"]
    assert tools["noop"]["calls"] == 3
    assert tools["noop"]["errors"] == {"-32000": 1, "-32002": 1}
    assert tools["noop"]["run_s"]["p50"] is not None and b.status(3.0)["exits"]["crashed"] == 1
    assert "daemon_exit daemon=w1 pid=4242 reason=crashed" in note_text(note.event, note.fields)


def test_broker_notes_kills_hung_calls_and_cancels():
    b = Broker(Settings(kill_grace=1.0), rng=random.Random(0), new_ident=lambda n: b"w%d" % n)
    frame = encode_request(1, "slow", None, timeout_ms=1000)
    b.submit(b"c", read_header(frame), frame, 0.0)
    b.daemon_ready(b"w1", {"pid": 7, "tools": ["slow"]}, 0.0)
    hung = _notes(b.tick(1.0))
    assert [n.event for n in hung] == ["call_hung"] and hung[0].fields["tool"] == "slow"
    killed = _notes(b.tick(2.5))
    assert killed[0].event == "daemon_kill" and killed[0].fields["kind"] == "killed"
    b.daemon_exited(b"w1", 3.0, "killed by SIGTERM", -15)
    assert b.status(3.0)["exits"]["killed"] == 1 and b.status(3.0)["exits"]["crashed"] == 0
    frame = encode_request(2, "slow", None)
    b.submit(b"c", read_header(frame), frame, 4.0)
    assert [n.event for n in _notes(b.cancel(b"c", 2, 4.1))] == ["call_cancelled"]


def test_broker_notes_start_failures_recycles_and_refused_peers():
    b = Broker(Settings(max_calls=1, backoff_base=0.5), rng=random.Random(0), new_ident=lambda n: b"w%d" % n)
    frame = encode_request(1, "t", None)
    b.submit(b"c", read_header(frame), frame, 0.0)
    b.daemon_spawned(b"w1", 11)
    notes = {n.event: n for n in _notes(b.daemon_exited(b"w1", 0.1, "exited with code 3", 3))}
    assert notes["daemon_exit"].fields["reason"] == "start_failed" and notes["daemon_exit"].fields["exit_code"] == 3
    assert notes["restart_delay"].fields["delay_s"] > 0 and notes["restart_delay"].level == logging.WARNING
    assert b.status(0.1)["exits"]["start_failed"] == 1
    spawned = _notes(b.tick(5.0))
    assert [n.event for n in spawned] == ["daemon_spawn"]
    b.daemon_ready(b"w2", {"pid": 12, "tools": ["t"]}, 5.0)
    after = _notes(b.daemon_reply(b"w2", Header(Kind.REPLY, 1), encode_result(1, None), 5.1))
    assert [n.event for n in after] == ["daemon_recycle", "daemon_spawn"]
    b.daemon_ready(b"w3", {"pid": 13, "tools": ["t"]}, 5.5)  # w2 is let go once w3 is ready
    planned = _notes(b.daemon_exited(b"w2", 5.6, "exited with code 0", 0))
    assert planned[0].fields["reason"] == "recycled" and planned[0].level == logging.INFO
    refused = _notes(b.daemon_ready(b"intruder", {"pid": 99}, 6.0))
    assert refused[0].event == "peer_refused" and refused[0].fields["pid"] == 99


def test_json_formatter_writes_extras_on_one_line():
    record = logging.LogRecord("zbridge.hub", logging.WARNING, __file__, 1, "%s", ("daemon_exit",), None)
    record.__dict__.update({"event": "daemon_exit", "pid": 12, "reason": "crashed", "exit_code": 9})
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert (out["level"], out["logger"], out["msg"], out["pid"], out["exit_code"]) == \
        ("WARNING", "zbridge.hub", "daemon_exit", 12, 9)


def test_metrics_are_private_unless_the_operator_says_otherwise():
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    assert parse_address("0.0.0.0:9464") == ("0.0.0.0", 9464)
    for bad in ["9464", "127.0.0.1:", "127.0.0.1:99999", "unix"]:
        with pytest.raises(ValueError):
            parse_address(bad)
    check_access("unix:/run/zbridge/metrics.sock", "", False)  # this user only: always fine
    for address, who in (("127.0.0.1:9464", "every local user"), ("0.0.0.0:9464", "anyone")):
        with pytest.raises(ValueError, match=who):
            check_access(address, "", False)
        check_access(address, "token.txt", False)
        check_access(address, "", True)
    with pytest.raises(ValueError, match="log_format"):
        Settings(log_format="xml")


def test_watch_frame_shows_daemons_tools_and_rates():
    info = {"hub_pid": 1, "endpoint": "ipc://x", "workers": 2, "queue_depth": 3,
            "daemons": [{"id": "w1", "pid": 9, "state": "busy", "current_call": 4, "current_tool": "nap",
                         "call_age_s": 1.5, "calls": 10, "rss": 32 * 1048576}],
            "tools": {"nap": {"calls": 30, "errors": {"-32000": 2}, "run_s": {"p50": 0.002, "p99": 0.01},
                              "queue_s": {"p50": 0.0, "p99": 0.001}}},
            "counters": {"completed": 30}, "exits": {"crashed": 1}}
    prev = {"tools": {"nap": {"calls": 10}}}
    text = render(info, prev, 2.0, interval=2)
    assert "w1" in text and "busy" in text and "nap" in text and "1.50" in text and "32.0" in text
    assert "queue 3" in text and " 10.0 " in text  # (30 - 10) calls / 2 s
    assert "restarts 1" in text


# --- real processes --------------------------------------------------------------------

@contextlib.contextmanager
def serving(tmp_path, *args):
    """`zbridge serve` with our tools at INFO; its log is the file the test can read."""
    with served(tmp_path, "--log-level", "INFO", "--tools", OBSERVE, *args) as (endpoint, _):
        yield endpoint, tmp_path / "serve.log"


def json_lines(path):
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_json_log_of_a_daemon_crash_carries_pid_reason_and_exit_code(tmp_path):
    with serving(tmp_path, "--log-format", "json") as (endpoint, log_path):
        with zbridge.Client(endpoint, fallback=False) as client:
            assert client.call("noop", [1]) == 1
            pid = client.status()["daemons"][0]["pid"]
            with pytest.raises(zbridge.WorkerLost):
                client.call("crash", [9])

        def crash_logged():
            return [r for r in json_lines(log_path) if r.get("event") == "daemon_exit"]
        assert wait_until(crash_logged, timeout=10), log_path.read_text()
        (record,) = crash_logged()
        assert record["pid"] == pid and record["reason"] == "crashed" and record["exit_code"] == 9
        assert record["tool"] == "crash" and record["level"] == "WARNING" and record["logger"] == "zbridge.hub"
        events = {r.get("event") for r in json_lines(log_path)}
        assert {"daemon_spawn", "daemon_started", "daemon_ready"} <= events
        ready = next(r for r in json_lines(log_path) if r.get("event") == "daemon_ready")
        assert ready["pid"] == pid and ready["startup_s"] > 0
    # every line the hub wrote is JSON, except the serve command's own two banner lines
    others = [line for line in log_path.read_text().splitlines() if not line.startswith("{")]
    assert all(line.startswith("zbridge hub") for line in others), others


def scrape(port, token=None):
    from prometheus_client.parser import text_string_to_metric_families
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_endpoint_counts_known_calls_exactly(tmp_path):
    port = free_port()
    with serving(tmp_path, "--metrics", f"127.0.0.1:{port}", "--metrics-allow-anyone") as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:
            for i in range(3):
                client.call("noop", [i])
            for _ in range(2):
                with pytest.raises(zbridge.ToolError):
                    client.call("fail")
            with pytest.raises(zbridge.ToolNotFound):
                client.call("nosuch")
            with pytest.raises(zbridge.WorkerLost):
                client.call("crash", [3])
            assert client.call("noop", [0]) == 0  # after a replacement daemon started

        def expected(s):
            return (s.get(("zbridge_calls_total", (("outcome", "ok"), ("tool", "noop")))) == 4
                    and s.get(("zbridge_restarts_total", (("reason", "crashed"),))) == 1)
        assert wait_until(lambda: expected(scrape(port)), timeout=10)
        s = scrape(port)
        assert s[("zbridge_calls_total", (("outcome", "tool_error"), ("tool", "fail")))] == 2
        assert s[("zbridge_calls_total", (("outcome", "ok"), ("tool", "fail")))] == 0
        # a name no daemon serves counts under "(other)": made-up names cannot add series
        assert s[("zbridge_calls_total", (("outcome", "tool_not_found"), ("tool", "(other)")))] == 1
        assert s[("zbridge_calls_total", (("outcome", "worker_lost"), ("tool", "crash")))] == 1
        assert s[("zbridge_call_duration_seconds_count", (("tool", "noop"),))] == 4
        assert s[("zbridge_call_duration_seconds_bucket", (("le", "+Inf"), ("tool", "noop")))] == 4
        assert s[("zbridge_queue_wait_seconds_count", (("tool", "fail"),))] == 2
        assert s[("zbridge_queue_depth", ())] == 0
        assert s[("zbridge_daemons", (("state", "idle"),))] == 1
        assert s[("zbridge_daemons", (("state", "busy"),))] == 0
        assert s[("zbridge_restarts_total", (("reason", "start_failed"),))] == 0
        assert s[("zbridge_hub_loop_lag_seconds", ())] >= 0
        assert wait_until(lambda: any(k[0] == "zbridge_daemon_rss_bytes" and v > 0
                                      for k, v in scrape(port).items()), timeout=10)
        # and `zbridge status` shows the same numbers per tool
        out = subprocess.run(ZBRIDGE + ["status", "--endpoint", endpoint], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        fail_row = next(line for line in out.stdout.splitlines() if line.startswith("fail "))
        assert fail_row.split()[1] == "2" and "-32000:2" in fail_row


def test_metrics_in_an_embedded_bridge_need_the_token(bridge_factory, tmp_path):
    with pytest.raises(ValueError, match="every local user"):
        zbridge.Bridge([OBSERVE], metrics="127.0.0.1:9464")
    token = "s3cret-" + "x" * 24
    (tmp_path / "token").write_text(token + "\n")
    port = free_port()
    bridge = bridge_factory([OBSERVE], metrics=f"127.0.0.1:{port}", metrics_token_file=str(tmp_path / "token"))
    assert bridge.call("noop", [1]) == 1
    assert wait_until(lambda: scrape(port, token).get(
        ("zbridge_calls_total", (("outcome", "ok"), ("tool", "noop")))) == 1, timeout=10)
    for wrong in (None, "s3cret-" + "y" * 24):
        with pytest.raises(urllib.error.HTTPError, match="401"):
            scrape(port, wrong)
    samples = scrape(port, token)
    assert samples[("zbridge_daemons_wanted", ())] == 1
    assert samples[("zbridge_hub_info", (("protocol", str(protocol.VERSION)), ("version", zbridge.__version__)))] == 1
    assert samples[("process_open_fds", ())] > 0 and samples[("process_resident_memory_bytes", ())] > 0
    bridge.close(drain_timeout=1.0)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_metrics_on_a_unix_socket_only_this_user_can_reach(tmp_path):
    path = tmp_path / "metrics.sock"
    with serving(tmp_path, "--metrics", f"unix:{path}"):
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and b"zbridge_hub_info" in reply
    assert not path.exists()


def test_metrics_endpoint_drops_idle_connections_and_caps_them(tmp_path):
    """A connection that sends nothing is closed after the request timeout; at most
    MAX_CONNECTIONS are open at once, and a scrape gets through once one frees."""
    from zbridge import scrape as server
    port = free_port()
    with serving(tmp_path, "--metrics", f"127.0.0.1:{port}", "--metrics-allow-anyone") as (_, _log):
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(server.MAX_CONNECTIONS)]
        try:
            idle[0].settimeout(server.REQUEST_TIMEOUT + 5)
            assert idle[0].recv(1) == b""  # closed by the server, not by us
            assert wait_until(lambda: "zbridge_hub_info" in str(scrape(port)), timeout=server.REQUEST_TIMEOUT + 5)
        finally:
            for sock in idle:
                sock.close()


def test_serve_refuses_open_metrics_without_a_token_or_the_flag(tmp_path):
    out = subprocess.run(ZBRIDGE + ["serve", "--tools", OBSERVE, "--bind", f"ipc://{tmp_path}/hub.sock",
                                    "--metrics", "0.0.0.0:9464"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "--metrics-allow-anyone" in out.stderr and "anyone" in out.stderr


def test_traceparent_reaches_the_tool_through_a_raw_dealer(tmp_path):
    with serving(tmp_path) as (endpoint, _):
        with raw_dealer(endpoint) as sock:
            before = time.time()
            sock.send(encode_request(41, "whoami", None, timeout_ms=20_000, trace=TRACE))
            body = protocol.decode_reply_body(sock.recv())
            info = body["result"]
            assert info["traceparent"] == TRACE and info["request_id"] == 41 and info["tool"] == "whoami"
            assert before + 19 < info["deadline"] < time.time() + 21
            sock.send(encode_request(42, "whoami", None))
            assert protocol.decode_reply_body(sock.recv())["result"]["traceparent"] is None
            sock.send(encode_request(43, "whoami_stream", {"n": 2}, window=4, trace=TRACE))
            frames = [sock.recv() for _ in range(3)]
            assert [read_header(f).kind for f in frames] == [Kind.PARTIAL, Kind.PARTIAL, Kind.REPLY]
            assert [protocol.decode_partial(f) for f in frames[:2]] == [TRACE, TRACE]
            bad = protocol.pack_header(Kind.REQUEST, 44) + protocol.packb({"method": "whoami", "trace": "nope"})
            sock.send(bad)
            assert protocol.decode_reply_body(sock.recv())["error"]["code"] == -32600
    assert zbridge.current_call() is None  # outside a call


def _read_until(fd, predicate, timeout=20.0):
    import select
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate(data):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


def test_watch_redraws_under_a_pty_and_exits_on_sigint(tmp_path):
    import pty
    with serving(tmp_path) as (endpoint, _):
        with zbridge.Client(endpoint, fallback=False) as client:
            client.call("noop", [1])
        master, slave = pty.openpty()
        proc = subprocess.Popen(ZBRIDGE + ["status", "--endpoint", endpoint, "--watch", "0.3"],
                                stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                preexec_fn=default_sigint)
        os.close(slave)
        try:
            data = _read_until(master, lambda d: d.count(b"\x1b[H\x1b[J") >= 2 and d.endswith(b"\n"))
            assert data.count(b"\x1b[H\x1b[J") >= 2, data
            frame = data.split(b"\x1b[H\x1b[J")[-1].decode()
            assert "w1" in frame and "idle" in frame and "noop" in frame and "calls/s" in frame
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
            rest = _read_until(master, lambda d: False, timeout=1)
            assert b"Traceback" not in data + rest
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)


def test_watch_over_a_pipe_prints_snapshots_separated_by_blank_lines(tmp_path):
    with serving(tmp_path) as (endpoint, _):
        proc = subprocess.Popen(ZBRIDGE + ["status", "--endpoint", endpoint, "--watch", "0.2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=default_sigint)
        try:
            data = _read_until(proc.stdout.fileno(), lambda d: d.count(b"zbridge ") >= 3)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
            text = (data + out).decode()
            assert "\x1b[" not in text
            snapshots = [f for f in text.split("\n\n") if f.strip()]
            assert len(snapshots) >= 2 and all(f.startswith("zbridge ") for f in snapshots), text
            assert all("daemon" in f and "tool" in f for f in snapshots[:2])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
