"""The public API as a type checker sees it (pyzmq's test_mypy.py is the model).

Marked ``typing`` (mypy takes a while): run by .ci/run after the suite, or with
``python -m pytest -m typing``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.typing
mypy_api = pytest.importorskip("mypy.api", reason="mypy is part of the test extras")

ROOT = Path(__file__).parent.parent
CASES = Path(__file__).parent / "typing_cases"


def check(path: Path) -> tuple[str, int]:
    env_path = os.pathsep.join([str(ROOT), str(ROOT / ".typecheck")])
    os.environ["MYPYPATH"] = env_path
    out, err, status = mypy_api.run([str(path), "--strict", "--no-incremental",
                                     "--config-file", str(ROOT / "pyproject.toml"),
                                     "--follow-imports", "silent"])
    return out + err, status


@pytest.mark.parametrize("name", ["good.py", "handles_good.py"])
def test_a_user_program_type_checks(name):
    out, status = check(CASES / name)
    assert status == 0, out


@pytest.mark.parametrize("name", ["bad.py", "handles_bad.py"])
def test_wrong_calls_are_flagged(name):
    """Exactly the lines marked ``# E:`` are errors (typed handles: a wrong argument type, a
    missing argument, a misspelt tool, a wrong result type, a misspelt option or keyword)."""
    out, status = check(CASES / name)
    assert status == 1, out
    flagged = {int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line}
    expected = {n for n, line in enumerate((CASES / name).read_text().splitlines(), 1) if "# E:" in line}
    assert flagged == expected, out
