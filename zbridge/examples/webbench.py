"""Load-test the web example: the app on one `zbridge serve` against the same app on a
``ProcessPoolExecutor`` (``run_in_executor``), with the same model processes in total.

    python -m zbridge.examples.webbench                  # wrk if installed, else Python's
    python -m zbridge.examples.webbench --seconds 20 --connections 32 --load python

For each app in turn: start it (uvicorn ``--web-workers`` processes; for zbridge, also
``zbridge serve --workers POOL --prewarm``; for the executor app, POOL / web-workers pool
processes in each web worker, the model trained by the pool's initializer), wait until
``/readyz`` answers, warm up, then drive ``GET /noop`` and ``POST /predict`` for
``--seconds`` each over ``--connections`` keep-alive connections. Every app runs once per
round (``--rounds``, the order alternating); the Markdown table printed at the end has, per
app and endpoint, the round with the median requests/s (latency p50/p99, non-2xx answers,
and the CPU time one request cost the web workers, the hub and the model processes, read
from ``/proc``: unlike requests/s, that hardly moves with other load on the machine) and
the zbridge/executor ratios.
Needs ``zbridge[web-example]``; ``wrk`` (Debian's package) is the lighter load generator.
Every process it starts runs in its own session and is stopped in a ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zbridge.examples import model

BODY = json.dumps({"features": [float(i % 7) for i in range(model.FEATURES)]})
PPE_WORKERS = "ZBRIDGE_BENCH_PPE_WORKERS"  # pool processes per web worker (the executor app)


# --- the same app on a ProcessPoolExecutor -------------------------------------------------


@asynccontextmanager
async def _ppe_lifespan(app: Starlette) -> AsyncIterator[None]:
    workers = int(os.environ.get(PPE_WORKERS, "1"))
    with ProcessPoolExecutor(workers, initializer=model.load_model) as executor:
        app.state.executor = executor
        loop = asyncio.get_running_loop()  # start every pool process (and its model) now
        await asyncio.gather(*(loop.run_in_executor(executor, time.sleep, 0.2) for _ in range(workers)))
        yield


async def _ppe_run(request: Request, fn: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(request.app.state.executor, fn)


async def _ppe_predict(request: Request) -> Response:
    body = await request.json()
    result = await _ppe_run(request, functools.partial(model.predict, **body))
    return JSONResponse({**result, "web_pid": os.getpid()})


async def _ppe_noop(request: Request) -> Response:
    await _ppe_run(request, model.noop)
    return JSONResponse({"web_pid": os.getpid()})


async def _ppe_ready(request: Request) -> Response:
    return JSONResponse({"status": "ready"})


ppe_app = Starlette(routes=[Route("/predict", _ppe_predict, methods=["POST"]), Route("/noop", _ppe_noop),
                            Route("/readyz", _ppe_ready)], lifespan=_ppe_lifespan)


# --- processes -----------------------------------------------------------------------------


@contextlib.contextmanager
def _started(argv: list[str], env: dict[str, str], log: str) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s; see {log}")


# --- CPU by role: what a request costs each kind of process (Linux /proc) -----------------

_TICK = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def roles(web: int, hub: int | None) -> dict[str, list[int]]:
    """The web server and its workers; the hub; the model processes (the hub's daemons, or
    the executor's pool processes under the web workers)."""
    tree = _children()
    workers = tree.get(web, [])
    found = {"web": [web, *workers], "hub": [], "model": [c for w in workers for c in tree.get(w, [])]}
    if hub is not None:
        found["hub"] = [hub]
        found["model"] = tree.get(hub, [])
    return found


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime, all threads


def cpu_by_role(processes: dict[str, list[int]]) -> dict[str, float]:
    return {role: sum(_cpu_seconds(pid) for pid in pids) for role, pids in processes.items()}


# --- load ----------------------------------------------------------------------------------


@dataclass
class Result:
    app: str
    path: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    cpu_us: dict[str, float]  # CPU time per request by role (web, hub, model), in µs


def _request_bytes(path: str) -> bytes:
    if path == "/predict":
        return (f"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(BODY)}\r\n\r\n{BODY}").encode()
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


async def _connection(port: int, request: bytes, until: float, latencies: list[float],
                      statuses: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            latencies.append(time.perf_counter() - started)
            statuses.append(int(head[9:12]))
    finally:
        writer.close()


def python_load(port: int, path: str, seconds: float, connections: int) -> tuple[float, float, float, int]:
    """Keep-alive connections, each sending its next request when the last answer is read."""
    latencies: list[float] = []
    statuses: list[int] = []

    async def run() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(_connection(port, _request_bytes(path), started + seconds, latencies, statuses)
                               for _ in range(connections)))
        return time.perf_counter() - started

    elapsed = asyncio.run(run())
    latencies.sort()
    p50, p99 = (latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 for q in (0.5, 0.99))
    return len(latencies) / elapsed, p50, p99, sum(1 for s in statuses if not 200 <= s < 300)


_WRK_TIME = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk_ms(text: str, label: str) -> float:
    found = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    return float(found.group(1)) * _WRK_TIME[found.group(2)] if found else float("nan")


def wrk_load(port: int, path: str, seconds: float, connections: int, threads: int) -> tuple[float, float, float, int]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if path == "/predict":
            script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY)}\n'
                         'wrk.headers["Content-Type"] = "application/json"\n')
        script.flush()
        out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                              "--latency", "-s", script.name, f"http://127.0.0.1:{port}{path}"],
                             capture_output=True, text=True, check=True).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*?(\d+) timeout", out)
    return (float(rate.group(1)) if rate else 0.0, _wrk_ms(out, "50%"), _wrk_ms(out, "99%"),
            (int(bad.group(1)) if bad else 0) + (int(errors.group(1)) if errors else 0))


# --- one app under load --------------------------------------------------------------------


def _uvicorn(target: str, port: int, web_workers: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(web_workers), "--no-access-log", "--log-level", "warning"]


@contextlib.contextmanager
def _app(kind: str, args: argparse.Namespace, workdir: str) -> Iterator[tuple[int, dict[str, list[int]]]]:
    """The app running, ready and warm; yields its port and its processes by role."""
    port = _free_port()
    env = {**os.environ, "ZBRIDGE_EXAMPLE_TREES": str(args.trees)}
    log = os.path.join(workdir, f"{kind}.log")
    with contextlib.ExitStack() as stack:
        hub: subprocess.Popen[bytes] | None = None
        if kind == "zbridge":
            endpoint = f"ipc://{workdir}/hub.sock"
            hub = stack.enter_context(_started(
                [sys.executable, "-m", "zbridge.cli", "serve", "--tools", "zbridge.examples.model",
                 "--workers", str(args.pool), "--prewarm", "--bind", endpoint], env, log))
            env["ZBRIDGE_ENDPOINT"] = endpoint
            web = stack.enter_context(_started(_uvicorn("zbridge.examples.web:app", port, args.web_workers),
                                               env, log))
        else:
            env[PPE_WORKERS] = str(max(1, args.pool // args.web_workers))
            web = stack.enter_context(_started(_uvicorn("zbridge.examples.webbench:ppe_app", port,
                                                        args.web_workers), env, log))
        _wait_ready(f"http://127.0.0.1:{port}/readyz", web, log)
        for path in ("/noop", "/predict"):
            python_load(port, path, args.warmup, args.connections)
        yield port, roles(web.pid, hub.pid if hub else None)


def measure(args: argparse.Namespace) -> list[Result]:
    """Every app in every round (the order alternating, so a drift of a shared machine does
    not land on one app); per app and endpoint, the round with the median requests/s."""
    runs: dict[tuple[str, str], list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="zbridge-webbench-") as workdir:
        os.chmod(workdir, 0o700)
        for round_ in range(args.rounds):
            for kind in (args.apps if round_ % 2 == 0 else args.apps[::-1]):
                with _app(kind, args, workdir) as (port, processes):
                    for path in ("/noop", "/predict"):
                        before, started = cpu_by_role(processes), time.perf_counter()
                        if args.load == "wrk":
                            numbers = wrk_load(port, path, args.seconds, args.connections, args.threads)
                        else:
                            numbers = python_load(port, path, args.seconds, args.connections)
                        served = numbers[0] * (time.perf_counter() - started)
                        cpu = {role: (spent - before[role]) / max(1.0, served) * 1e6
                               for role, spent in cpu_by_role(processes).items()}
                        runs.setdefault((kind, path), []).append(Result(kind, path, *numbers, cpu))
                        print(f"round {round_ + 1}: {kind:8} {path:9} {numbers[0]:9.0f} req/s", file=sys.stderr)
    return [sorted(results, key=lambda r: r.requests_per_s)[len(results) // 2] for results in runs.values()]


def table(results: list[Result]) -> str:
    lines = ["| app | endpoint | requests/s | p50 ms | p99 ms | non-2xx | CPU µs/request: web + hub + model = total |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        web, hub, model_ = (r.cpu_us[role] for role in ("web", "hub", "model"))
        lines.append(f"| {r.app} | `{r.path}` | {r.requests_per_s:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
                     f"{r.non_2xx} | {web:.0f} + {hub:.0f} + {model_:.0f} = {web + hub + model_:.0f} |")
    rate = {(r.app, r.path): r.requests_per_s for r in results}
    for path in ("/noop", "/predict"):
        if rate.get(("ppe", path)) and ("zbridge", path) in rate:
            lines.append(f"\n`{path}`: zbridge / ProcessPoolExecutor = "
                         f"{rate['zbridge', path] / rate['ppe', path]:.2f}x")
    return "\n".join(lines)


def _uvicorn_flavour() -> str:
    """What uvicorn's defaults (--loop auto, --http auto) pick here: uvicorn[standard] brings both."""
    import importlib.util
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"{loop}, {http}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="load per endpoint and app")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--web-workers", type=int, default=2, help="uvicorn --workers")
    parser.add_argument("--pool", type=int, default=2, help="model processes in all (daemons or pool processes)")
    parser.add_argument("--trees", type=int, default=50, help="RandomForest size")
    parser.add_argument("--load", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every app; the median is reported")
    parser.add_argument("--apps", nargs="+", choices=("zbridge", "ppe"), default=["zbridge", "ppe"])
    args = parser.parse_args(argv)
    print(f"load: {args.load}, {args.connections} connections, {args.seconds:g} s per endpoint, "
          f"median of {args.rounds} rounds; "
          f"uvicorn --workers {args.web_workers} ({_uvicorn_flavour()}); {args.pool} model processes; "
          f"RandomForest of {args.trees} trees; {os.cpu_count()} CPUs")
    print(table(measure(args)))


if __name__ == "__main__":
    main()
