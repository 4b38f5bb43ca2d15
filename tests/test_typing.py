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


def test_a_user_program_type_checks():
    out, status = check(CASES / "good.py")
    assert status == 0, out


def test_wrong_calls_are_flagged():
    out, status = check(CASES / "bad.py")
    assert status == 1
    flagged = {int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line}
    expected = {n for n, line in enumerate((CASES / "bad.py").read_text().splitlines(), 1) if "# E:" in line}
    assert flagged == expected, out
