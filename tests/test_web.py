"""The web example (zbridge/examples/web.py, docs/WEB.md) as deployed: one `zbridge serve`
beside `uvicorn --workers 2`, driven over real HTTP.

Both web worker processes must share the one pool: the daemon pids the tool reports are
the hub's 2 daemons, and no other zbridge daemon runs (an AsyncBridge per worker would
make 4). Errors come back as the statuses docs/WEB.md promises, readiness follows the pool,
and SIGTERM shuts the web server down cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from helpers import ZBRIDGE, daemon_pids, free_port, served, stop, wait_until

pytestmark = pytest.mark.timeout(180)

FEATURES = [float(i % 7) for i in range(20)]


def request(url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """One HTTP request on a fresh connection: (status, headers, JSON body)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), json.loads(error.read())


def ready(base: str) -> bool:
    try:
        return request(f"{base}/readyz")[0] == 200
    except OSError:  # not listening yet
        return False


def start_web(tmp_path: Path, endpoint: str, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "uvicorn.log"
    env = {**os.environ, "ZBRIDGE_ENDPOINT": endpoint}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "zbridge.examples.web:app",
                                 "--workers", "2", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def stop_web(proc: subprocess.Popen[bytes]) -> int:
    status = stop(proc, timeout=30)
    try:  # a worker that outlived its parent would be a leak: the test fails on it, but cleanly
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return status


def hub_daemons(endpoint: str) -> set[int]:
    out = subprocess.run(ZBRIDGE + ["status", "--endpoint", endpoint, "--json"], capture_output=True,
                         text=True, timeout=30, check=True)
    status = json.loads(out.stdout)
    assert status["workers"] == 2
    return {d["pid"] for d in status["daemons"]}


def test_two_web_workers_share_one_pool(tmp_path, monkeypatch):
    monkeypatch.setenv("ZBRIDGE_EXAMPLE_TREES", "5")  # a small forest: the test is about sharing
    with served(tmp_path, "--tools", "zbridge.examples.model", "--workers", "2", "--prewarm") as (endpoint, hub):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        web, log = start_web(tmp_path, endpoint, port)
        try:
            assert wait_until(lambda: ready(base) or web.poll() is not None, timeout=60), log.read_text()
            assert web.poll() is None, log.read_text()

            web_pids: set[int] = set()
            pool_pids: set[int] = set()
            with ThreadPoolExecutor(8) as threads:
                for _ in range(10):  # bounded: until both web workers have answered
                    for status, _, body in threads.map(lambda _: request(f"{base}/predict", {"features": FEATURES}),
                                                       range(40)):
                        assert status == 200, body
                        assert body["label"] in (0, 1) and 0.5 <= body["probability"] <= 1.0
                        web_pids.add(body["web_pid"])
                        pool_pids.add(body["daemon_pid"])
                    if len(web_pids) == 2:
                        break
            assert len(web_pids) == 2, "both web workers served requests"
            assert pool_pids <= hub_daemons(endpoint) and len(hub_daemons(endpoint)) == 2
            assert daemon_pids() == hub_daemons(endpoint), "no web worker started a pool of its own"

            # errors, as docs/WEB.md maps them
            status, _, body = request(f"{base}/predict", {"feature": FEATURES})
            assert (status, body["error"]["type"]) == (422, "InvalidParams"), body
            status, _, body = request(f"{base}/predict", {"features": [1.0]})
            assert (status, body["error"]["tool_error"]) == (422, "ValueError"), body
            assert "traceback" not in json.dumps(body)
            assert request(f"{base}/predict", raw=b"not json")[0] == 400
            assert request(f"{base}/noop")[0] == 200

            # the pool goes away: readiness and calls say 503, with Retry-After
            assert stop(hub) == 0
            status, headers, body = request(f"{base}/readyz")
            assert (status, body["error"]["type"]) == (503, "PoolUnavailable"), body
            assert headers["retry-after"] == "1"
            assert request(f"{base}/noop")[0] == 503
            assert request(f"{base}/healthz")[0] == 200  # the web process itself is alive
        finally:
            code = stop_web(web)
        assert code == 0, log.read_text()
        assert log.read_text().count("Application shutdown complete") == 2, log.read_text()
