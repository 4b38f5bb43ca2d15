"""CLI conventions (issue 10): python -m zbridge, --version, --log-level anywhere, per-command
options, and a status table aligned whatever the daemon ids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zbridge.cli import format_status

BIN = Path(sys.executable).parent


def run(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)


def installed_version() -> str:
    from importlib.metadata import version
    return version("zbridge")


@pytest.mark.parametrize("cmd", [[sys.executable, "-m", "zbridge"], [str(BIN / "zbridge")],
                                 [str(BIN / "zbridge-daemon")]], ids=["python-m", "zbridge", "daemon"])
def test_version(cmd):
    out = run(*cmd, "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == installed_version()


def test_version_is_read_from_the_installed_metadata():
    import zbridge
    assert zbridge.__version__ == installed_version()


def test_python_m_zbridge_runs_the_cli():
    out = run(sys.executable, "-m", "zbridge", "--help")
    assert out.returncode == 0 and "serve" in out.stdout and "call" in out.stdout


def test_log_level_after_the_subcommand(tmp_path):
    endpoint = f"ipc://{tmp_path}/none.sock"
    out = run(str(BIN / "zbridge"), "status", "--endpoint", endpoint, "--log-level", "DEBUG", timeout=30)
    assert "no such option" not in out.stderr and "no hub at" in out.stderr
    bad = run(str(BIN / "zbridge"), "status", "--log-level", "LOUD")
    assert bad.returncode == 2 and "not a logging level" in bad.stderr


def test_call_help_shows_client_options_only():
    call_help = run(str(BIN / "zbridge"), "call", "--help").stdout
    serve_help = run(str(BIN / "zbridge"), "serve", "--help").stdout
    for hub_only in ("--workers", "--max-queue", "--idle-action", "--daemon-bind", "--prewarm"):
        assert hub_only not in call_help
        assert hub_only in serve_help
    for client in ("--timeout", "--endpoint", "--tools", "--idempotent", "--stream", "--connect-timeout",
                   "--curve-secret", "--set", "--log-level"):
        assert client in call_help
    for client_only in ("--max-in-flight", "--retries", "--pool-enabled", "--fallback", "--curve-server-key"):
        assert client_only not in serve_help


def test_embedded_call_takes_hub_settings_with_set(basic_tools):
    out = run(str(BIN / "zbridge"), "call", "add", "--args", "[1, 2]", "--tools", basic_tools,
              "--set", "workers=1", "--set", "start-timeout=30")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == 3
    bad = run(str(BIN / "zbridge"), "call", "add", "--tools", basic_tools, "--set", "workers=two")
    assert bad.returncode == 2 and "workers='two'" in bad.stderr
    unknown = run(str(BIN / "zbridge"), "call", "add", "--tools", basic_tools, "--set", "wrokers=2")
    assert unknown.returncode == 2 and "NAME one of" in unknown.stderr


def test_status_table_is_aligned_for_real_daemon_ids():
    daemons = [
        {"id": "w1", "pid": 123, "state": "idle", "calls": 5, "uptime_s": 1.5, "rss": 30 * 1048576,
         "last_beat_age_s": 0.2, "current_call": None, "call_age_s": None},
        {"id": "r12-a-very-long-remote-name", "pid": 1234567, "state": "busy", "calls": 1234567,
         "uptime_s": 12345.6, "rss": None, "last_beat_age_s": None, "current_call": 987654321,
         "call_age_s": 0.5, "unresponsive": True},
    ]
    info = {"hub_pid": 1, "endpoint": "ipc:///x", "workers": 2, "queue_depth": 0, "queue_bytes": 0,
            "daemons": daemons, "counters": {"calls": 3}}
    lines = format_status(info).splitlines()
    header, rows = lines[1], lines[2:4]
    # every right-aligned column ends where its heading ends, every left one starts where it starts
    for heading in ("pid", "calls", "uptime_s", "rss_mb", "beat_age_s", "call", "call_age_s"):
        end = header.index(heading + " " if heading == "call" else heading) + len(heading)
        for row in rows:
            assert row[end - 1] != " " and (end == len(row) or row[end] == " "), (heading, row)
    state = header.index("state")
    assert rows[0][state:].startswith("idle") and rows[1][state:].startswith("busy (unresponsive)")
    assert "queue depth 0 (0 bytes)" in lines[0]
