"""A web service in front of ONE shared warm pool (docs/WEB.md walks through it).

Run the pool and the web server side by side::

    pip install "zbridge[web-example]"
    zbridge serve --tools zbridge.examples.model --workers 2 --prewarm &
    uvicorn zbridge.examples.web:app --workers 4 --port 8000

Every web worker process opens one ``AsyncClient`` to the same ``zbridge serve`` in its
lifespan, so ``--workers 4`` shares 2 daemons (and 2 copies of the model), instead of
each worker owning a pool of its own. Nothing here opens a socket at import time: a server
that imports the app before forking its workers (``gunicorn --preload``) is safe.

Routes: ``POST /predict`` (``{"features": [20 numbers]}``), ``GET /noop``, ``GET /healthz``
(this process is alive), ``GET /readyz`` (the pool has a daemon ready: for a load balancer
or a Kubernetes readiness probe). zbridge errors become HTTP statuses by
``zbridge.httperrors`` (422 for arguments the tool does not take, 504 for a timeout, 503
with Retry-After when the pool is full or down, ...). Environment: ``ZBRIDGE_ENDPOINT`` (the
hub; default: the one ``zbridge serve`` binds by default).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import asynccontextmanager
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import zbridge
from zbridge.examples import model
from zbridge.httperrors import http_error

log = logging.getLogger("zbridge.examples.web")

CALL_TIMEOUT = 5.0      # seconds a call may take, queueing included: keep it under your proxy's
READY_TIMEOUT = 1.0     # a readiness probe answers within this
CONNECT_TIMEOUT = 1.0   # a call finding no hub (restarting, stopped) fails after this: 503
BAD_INPUT = ("ValueError",)  # what model.predict raises for input it cannot use: a 422, not a 500


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """One client per web worker process, made after the server forked it and closed after
    the server finished its in-flight requests (uvicorn and gunicorn both order it so)."""
    endpoint = os.environ.get("ZBRIDGE_ENDPOINT") or None
    async with zbridge.AsyncClient(endpoint, fallback=False, connect_timeout=CONNECT_TIMEOUT) as client:
        app.state.client = client
        app.state.predict = client.handle(model.predict).with_options(timeout=CALL_TIMEOUT)
        app.state.noop = client.handle(model.noop).with_options(timeout=CALL_TIMEOUT)
        yield


async def predict(request: Request) -> Response:
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return JSONResponse({"error": {"message": "the body is not JSON"}}, status_code=400)
    if not isinstance(body, dict):
        return JSONResponse({"error": {"message": 'expected {"features": [...]}'}}, status_code=422)
    result = await request.app.state.predict(**body)  # names the daemon cannot bind: 422
    return JSONResponse({**result, "web_pid": os.getpid()})


async def noop(request: Request) -> Response:
    await request.app.state.noop()
    return JSONResponse({"web_pid": os.getpid()})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "web_pid": os.getpid()})


async def readyz(request: Request) -> Response:
    """200 once the pool has a daemon up (the first probe starts the daemons if none are);
    503 with the reason while it cannot serve."""
    status = await request.app.state.client.wait_ready(timeout=READY_TIMEOUT, count=1)
    return JSONResponse({"status": "ready", "daemons": len(status["daemons"]),
                         "workers": status["workers"], "hub_pid": status["hub_pid"]})


async def bridge_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, zbridge.BridgeError)  # registered for BridgeError only
    error = http_error(exc, bad_input=BAD_INPUT)
    if error.status >= 500:
        tb = exc.traceback if isinstance(exc, zbridge.ToolError) else None
        log.error("%s %s -> %d: %r%s", request.method, request.url.path, error.status, exc,
                  f"\n{tb}" if tb else "")
    return JSONResponse(error.body, status_code=error.status, headers=error.headers)


def create_app() -> Starlette:
    return Starlette(
        routes=[Route("/predict", predict, methods=["POST"]), Route("/noop", noop),
                Route("/healthz", healthz), Route("/readyz", readyz)],
        lifespan=lifespan,
        exception_handlers={zbridge.BridgeError: bridge_error},
    )


app = create_app()
