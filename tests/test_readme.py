"""The README is tested: every Python and shell example runs as written, in a temp directory
holding the README's own ``mytools.py``, so an example that stops working fails CI.

Not run: ``pip install`` (the first two commands are checked word for word; the demo after
the first one is run) and the whole suite the second one starts.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import stop, wait_until

README = Path(__file__).parent.parent / "README.md"
FENCE = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)
MYTOOLS_HEADER = "# mytools.py\n"
FIRST_COMMANDS = ["pip install . && python -m zbridge.examples",
                  "pip install '.[test]' && python -m pytest"]


def examples(lang: str) -> list[str]:
    return [text for found, text in FENCE.findall(README.read_text()) if found == lang]


def mytools() -> str:
    (source,) = [t for t in examples("python") if t.startswith(MYTOOLS_HEADER)]
    return source


def is_tool_fragment(text: str) -> bool:
    """A block showing a tool of mytools.py again (it is checked to be there, not run alone)."""
    return "import " not in text and text.lstrip().startswith("@zbridge.tool")


def needs_hub(text: str) -> bool:
    return "zbridge.Client(" in text


PYTHON = [t for t in examples("python") if not t.startswith(MYTOOLS_HEADER)
          and not is_tool_fragment(t) and not needs_hub(t)]


def _id(text: str) -> str:
    line = next(line for line in text.splitlines() if line and not line.startswith("import"))
    return re.sub(r"\W+", "-", line)[:40].strip("-")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "mytools.py").write_text(mytools())
    return tmp_path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    runtime = tmp_path / "runtime"  # the default endpoint of `zbridge serve` lands here
    runtime.mkdir(mode=0o700)
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("ZBRIDGE_") or k == "ZBRIDGE_TEST_SESSION"}
    environ["XDG_RUNTIME_DIR"] = str(runtime)
    # `python`, `zbridge` and `zbridge-daemon` are this environment's, as after `pip install`
    environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}"
    return environ


def run_python(text: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = cwd / "example.py"
    script.write_text(text)
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def run_shell(text: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", text], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_first_two_commands_are_as_documented():
    commands = [t.strip() for t in examples("bash")[:2]]
    assert commands == FIRST_COMMANDS


def test_the_demo_runs(workdir, env):
    demo = FIRST_COMMANDS[0].split(" && ", 1)[1]  # pip install is the reader's step, not ours
    out = run_shell(demo, workdir, env)
    assert out.returncode == 0, out.stderr
    assert "warm" in out.stdout.lower() or "per call" in out.stdout


def test_mytools_is_real_and_cheap(workdir, env):
    out = run_python("import mytools\nmytools.load()\nprint(mytools.predict('helo'))\n", workdir, env)
    assert out.returncode == 0, out.stderr
    assert "hello" in out.stdout


def test_tool_fragments_are_in_mytools():
    fragments = [t for t in examples("python") if is_tool_fragment(t)]
    assert fragments, "the streaming section shows a generator tool"
    for fragment in fragments:
        assert fragment in mytools()


@pytest.mark.parametrize("text", PYTHON, ids=[_id(t) for t in PYTHON])
def test_python_example(text, workdir, env):
    out = run_python(text, workdir, env)
    assert out.returncode == 0, f"{text}\n--- stderr:\n{out.stderr}"
    assert out.stdout.strip(), "every example prints something"


def starts_server(text: str) -> bool:
    return any(line.startswith("zbridge serve") for line in text.splitlines())


def _commands(text: str) -> list[str]:
    return [line.split("  #", 1)[0].strip() for line in text.splitlines() if line.strip()]


def test_served_examples(workdir, env):
    """`zbridge serve` in the background, then the Client example and the shell examples."""
    (serve_block,) = [t for t in examples("bash") if starts_server(t)]
    (serve_line,) = _commands(serve_block)
    endpoint = f"ipc://{env['XDG_RUNTIME_DIR']}/zbridge/hub.sock"
    server = subprocess.Popen(shlex.split(serve_line), cwd=workdir, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def up() -> bool:
            status = subprocess.run(["zbridge", "status"], cwd=workdir, env=env, capture_output=True,
                                    timeout=30)
            return status.returncode == 0 or server.poll() is not None
        assert wait_until(up, timeout=30) and server.poll() is None, endpoint
        for text in [t for t in examples("python") if needs_hub(t)]:
            out = run_python(text, workdir, env)
            assert out.returncode == 0, f"{text}\n--- stderr:\n{out.stderr}"
        shell = [t for t in examples("bash")[2:] if not starts_server(t)]
        assert shell
        for text in shell:
            out = run_shell(text, workdir, env)
            assert out.returncode == 0, f"{text}\n--- stderr:\n{out.stderr}"
            assert out.stdout.strip()
    finally:
        assert stop(server) == 0
        server.stderr.close()
    assert not os.path.exists(endpoint[len("ipc://"):]), "serve removes its socket file"
