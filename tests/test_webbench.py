"""The web benchmark script runs end to end (a short, small run: it reports, it does not
assert speed). Marked slow: it starts both apps, each with its server and pool."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(300)


def test_the_web_benchmark_measures_both_apps():
    out = subprocess.run([sys.executable, "-m", "zbridge.examples.webbench", "--load", "python",
                          "--seconds", "0.5", "--warmup", "0.2", "--rounds", "1", "--trees", "2",
                          "--connections", "4"], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    rows = re.findall(r"^\| (zbridge|ppe) \| `(/\w+)` \| ([\d,]+) \| [\d.]+ \| [\d.]+ \| (\d+) \| "
                      r"\d+ \+ \d+ \+ \d+ = \d+ \|$", out.stdout, re.M)
    assert {(app, path) for app, path, _, _ in rows} == {
        ("zbridge", "/noop"), ("zbridge", "/predict"), ("ppe", "/noop"), ("ppe", "/predict")}, out.stdout
    for app, path, rate, non_2xx in rows:
        assert int(rate.replace(",", "")) > 0 and non_2xx == "0", (app, path, out.stdout)
    assert len(re.findall(r"zbridge / ProcessPoolExecutor = [\d.]+x", out.stdout)) == 2, out.stdout
