"""Tools module names resolve as ``python -m`` resolves them, in every entry point (issue 10)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zbridge.tools import tool_specs

BIN = Path(sys.executable).parent
MYTOOLS = textwrap.dedent("""
    import zbridge

    @zbridge.tool
    def where() -> str:
        return __file__
""")


@pytest.fixture
def tools_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "mytools.py").write_text(MYTOOLS)
    pkg = directory / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("WHO = 'helper'\n")
    (pkg / "tools.py").write_text("import zbridge\nfrom .helper import WHO\n\n"
                                  "@zbridge.tool\ndef who() -> str:\n    return WHO\n")
    return directory


def test_stdio_console_script_finds_a_module_in_the_current_directory(tools_dir):
    request = b'{"jsonrpc":"2.0","id":1,"method":"where"}\n'
    proc = subprocess.run([str(BIN / "zbridge-daemon"), "--stdio", "--tools", "mytools"], input=request,
                          cwd=tools_dir, capture_output=True, timeout=30)
    reply = json.loads(proc.stdout)
    assert reply["result"] == str(tools_dir / "mytools.py"), proc.stderr.decode()


def test_click_daemon_path_finds_it_too(tools_dir):
    # any option the lean parser does not know sends the command line to click
    proc = subprocess.run([str(BIN / "zbridge-daemon"), "--stdio", "--tools", "mytools", "--log-level", "INFO"],
                          input=b'{"jsonrpc":"2.0","id":1,"method":"where"}\n', cwd=tools_dir,
                          capture_output=True, timeout=30)
    assert json.loads(proc.stdout)["result"] == str(tools_dir / "mytools.py"), proc.stderr.decode()


SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {directory!r})
    import mytools
    import mypkg.tools
    import zbridge
    for tools in ("mytools", mytools):
        with zbridge.Bridge(tools=tools, fallback=False) as bridge:
            print(bridge.call("where"))
    with zbridge.Bridge(tools=mypkg.tools, fallback=False) as bridge:
        print(bridge.call("who"))
    with zbridge.Bridge(tools="mytools", pool_enabled=False) as bridge:
        print(bridge.call("where"))
""")


def test_bridge_daemons_import_what_the_caller_imported(tools_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = elsewhere / "main.py"
    script.write_text(SCRIPT.format(directory=str(tools_dir)))
    proc = subprocess.run([sys.executable, str(script)], cwd=elsewhere, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    where = str(tools_dir / "mytools.py")
    assert proc.stdout.splitlines() == [where, where, "helper", where]


def test_zbridge_call_with_tools_from_the_current_directory(tools_dir):
    proc = subprocess.run([str(BIN / "zbridge"), "call", "where", "--tools", "mytools"], cwd=tools_dir,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == str(tools_dir / "mytools.py")


def test_tool_specs(tools_dir, monkeypatch):
    monkeypatch.chdir(tools_dir)
    assert tool_specs("mytools") == [f"mytools@{tools_dir}"]
    assert tool_specs("mypkg.tools") == [f"mypkg.tools@{tools_dir}"]
    assert tool_specs("mytools.py") == [str(tools_dir / "mytools.py")]
    assert tool_specs("no_such_module_here") == ["no_such_module_here"]
    assert tool_specs("json") == ["json"]  # the standard library needs no root
    import json as json_module
    assert tool_specs(json_module) == ["json"]
