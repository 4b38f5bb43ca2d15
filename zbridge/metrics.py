"""Prometheus metrics for a hub (``metrics = "127.0.0.1:9464"``; needs ``zbridge[metrics]``).

The exporter never touches the broker: the hub thread publishes a fresh snapshot
(``Hub.publish_snapshot``: status() + per-tool bucket counts) at most every 0.5 s, replacing
it whole, and a scrape reads whichever snapshot is current. It is served by
``zbridge/scrape.py`` (one thread, a connection cap, read timeouts). Metrics (``zbridge_``
prefix, base units, ``_total`` counters), plus prometheus_client's ``process_*`` series:

    zbridge_hub_info{version,protocol}           1 while the hub runs (an "up" series)
    zbridge_daemons_wanted                       daemons the pool is configured to keep (workers)
    zbridge_calls_total{tool,outcome}            answered calls; outcome ok or an error name
    zbridge_call_duration_seconds{tool}          histogram: run time in a daemon
    zbridge_queue_wait_seconds{tool}             histogram: accepted -> handed to a daemon
    zbridge_queue_depth                          calls waiting for a daemon
    zbridge_daemons{state}                       daemons by state
    zbridge_restarts_total{reason}               daemon exits: crashed, start_failed, killed,
                                                 recycled, idle, lost, scaled, reloaded
    zbridge_daemon_rss_bytes{daemon}             resident memory per daemon (from heartbeats)
    zbridge_hub_loop_lag_seconds                 worst late timer wake-up of the hub loop
                                                 in the last snapshot interval

Who may read them (tool names, call rates, memory are nobody else's business): a Unix
socket (``metrics = "unix:PATH"``, mode 0700: only this user), or tcp with a bearer token
(``metrics_token_file``; Prometheus: ``authorization: {credentials_file: ...}``), or tcp
without one only when the operator says so (``metrics_allow_anyone``), on any address.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any, Iterator, Protocol

from .endpoints import ipc_in_use, is_loopback
from .scrape import ScrapeServer
from .state import EXIT_KINDS, DaemonState
from .stats import BOUNDS

if TYPE_CHECKING:
    from .config import Settings
    from .fdguard import FdGuard

log = logging.getLogger("zbridge.hub")

OUTCOMES = {
    -32000: "tool_error", -32001: "timeout", -32002: "worker_lost", -32003: "overloaded",
    -32004: "unavailable", -32005: "cancelled", -32006: "connection_lost",
    -32700: "parse_error", -32600: "invalid_request", -32601: "tool_not_found",
    -32602: "invalid_params", -32603: "internal_error",
}


class SnapshotSource(Protocol):
    snapshot: dict[str, Any] | None


def outcome(code: int | str) -> str:
    return OUTCOMES.get(int(code), "error")


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6), any host."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics address must be HOST:PORT (e.g. 127.0.0.1:9464) or unix:PATH, "
                         f"not {address!r}")
    return host, int(port)


def unix_path(address: str) -> str | None:
    """The socket path of a ``unix:PATH`` address, None for ``HOST:PORT``."""
    return address[len("unix:"):] if address.startswith("unix:") else None


def check_access(address: str, token_file: str, allow_anyone: bool) -> None:
    """ValueError unless only the hub's user can read the metrics at ``address`` (a Unix
    socket), scrapes need a token, or the operator said anyone may read them."""
    path = unix_path(address)
    if path is not None:
        if not path:
            raise ValueError("metrics address unix:PATH needs a path")
        return
    host, _ = parse_address(address)
    if token_file or allow_anyone:
        return
    where = "every local user" if is_loopback(host) else "anyone who can reach it"
    raise ValueError(f"metrics on {address} would let {where} read tool names, call rates and "
                     "memory: give a token (--metrics-token-file FILE; Prometheus sends it as a "
                     "bearer token), use a Unix socket (--metrics unix:PATH), or say "
                     "--metrics-allow-anyone")


def read_token(token_file: str) -> bytes | None:
    """The bearer token in ``token_file`` (surrounding whitespace dropped), None without one."""
    if not token_file:
        return None
    with open(token_file, "rb") as f:
        token = f.read().strip()
    if len(token) < 16:
        raise ValueError(f"the metrics token in {token_file} is {len(token)} bytes: use at least "
                         "16 random ones (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return token


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    total = 0
    for bound, n in zip(list(BOUNDS) + [float("inf")], counts):
        total += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return out


class SnapshotCollector:
    """A prometheus_client custom collector over the hub's published snapshot."""

    def __init__(self, source: SnapshotSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        snap = self.source.snapshot
        if snap is None:
            return
        calls = CounterMetricFamily("zbridge_calls", "Answered calls by tool and outcome.",
                                    labels=["tool", "outcome"])
        run = HistogramMetricFamily("zbridge_call_duration_seconds",
                                    "Time a call ran in a daemon, by tool.", labels=["tool"])
        wait = HistogramMetricFamily("zbridge_queue_wait_seconds",
                                     "Time a call waited for a free daemon, by tool.", labels=["tool"])
        for tool, info in snap.get("tools", {}).items():
            errors = info["errors"]
            calls.add_metric([tool, "ok"], info["calls"] - sum(errors.values()))
            for code, n in errors.items():
                calls.add_metric([tool, outcome(code)], n)
            hist = snap.get("histograms", {}).get(tool)
            if hist:
                run.add_metric([tool], _buckets(hist["run"]["counts"]), hist["run"]["sum"])
                wait.add_metric([tool], _buckets(hist["queue"]["counts"]), hist["queue"]["sum"])
        yield calls
        yield run
        yield wait
        yield GaugeMetricFamily("zbridge_queue_depth", "Calls waiting for a daemon.",
                                value=snap["queue_depth"])
        states = GaugeMetricFamily("zbridge_daemons", "Daemons by state.", labels=["state"])
        rss = GaugeMetricFamily("zbridge_daemon_rss_bytes", "Resident memory of each daemon.",
                                labels=["daemon"])
        by_state = dict.fromkeys((s.value for s in DaemonState), 0)
        for d in snap["daemons"]:
            by_state[d["state"]] = by_state.get(d["state"], 0) + 1
            if d.get("rss"):
                rss.add_metric([d["id"]], d["rss"])
        for state, n in by_state.items():
            states.add_metric([state], n)
        yield states
        yield rss
        restarts = CounterMetricFamily("zbridge_restarts", "Daemon exits by reason.", labels=["reason"])
        exits = snap.get("exits", {})
        for reason in EXIT_KINDS:
            restarts.add_metric([reason], exits.get(reason, 0))
        yield restarts
        yield GaugeMetricFamily("zbridge_hub_loop_lag_seconds",
                                "How late the hub loop woke for a timer (worst in the last 0.5 s).",
                                value=snap.get("loop_lag_s", 0.0))
        yield from _hub_series(snap)


def _hub_series(snap: dict[str, Any]) -> Iterator[Any]:
    """The hub's "up" series and its configured pool size."""
    from prometheus_client.core import GaugeMetricFamily
    from . import __version__
    info = GaugeMetricFamily("zbridge_hub_info", "1 while the hub runs; its version and protocol.",
                             labels=["version", "protocol"])
    info.add_metric([__version__, str(snap.get("protocol", ""))], 1)
    yield info
    yield GaugeMetricFamily("zbridge_daemons_wanted", "Daemons the pool keeps (workers).",
                            value=snap.get("workers", 0))


class Exporter:
    """The metrics endpoint (``zbridge/scrape.py``) in its own thread; ``stop()`` is
    idempotent. ``address``: (host, port) for tcp, the path for a Unix socket."""

    def __init__(self, server: ScrapeServer, address: Any, path: str | None = None) -> None:
        self.server: ScrapeServer | None = server
        self.address, self._path = address, path

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()
            if self._path is not None:
                try:
                    os.unlink(self._path)
                except OSError:
                    pass


def start_exporter(settings: Settings, source: SnapshotSource, guard: FdGuard | None = None) -> Exporter:
    """Serve ``source``'s snapshot as ``settings.metrics`` says (see the module docstring);
    ``guard``: the hub's fd guard, asked before each connection is accepted."""
    address = settings.metrics
    check_access(address, settings.metrics_token_file, settings.metrics_allow_anyone)
    try:
        from prometheus_client import CollectorRegistry, ProcessCollector
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
    except ImportError:
        raise ValueError("metrics need prometheus_client: pip install 'zbridge[metrics]'") from None
    token = read_token(settings.metrics_token_file)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(source))
    ProcessCollector(registry=registry)  # process_* series: cpu, memory, open fds, start time

    def render() -> tuple[bytes, str]:
        return generate_latest(registry), CONTENT_TYPE_LATEST

    path = unix_path(address)
    listener = _unix_listener(path) if path is not None else _tcp_listener(*parse_address(address))
    if path is None and not token and settings.metrics_allow_anyone:
        log.warning("metrics on %s without a token (--metrics-allow-anyone): anyone who reaches "
                    "it reads tool names, call rates and memory", address)
    server = ScrapeServer(listener, render, token, room=guard.room if guard else None,
                          accepted=guard.accepted if guard else None)
    return Exporter(server, path if path is not None else listener.getsockname()[:2], path)


def _tcp_listener(host: str, port: int) -> socket.socket:
    family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock


def _unix_listener(path: str) -> socket.socket:
    """A Unix socket only this user can connect to (created under umask 077: mode 0700);
    a stale file from a dead hub is replaced, a live one refused."""
    if os.path.exists(path):
        if ipc_in_use(path):
            raise ValueError(f"refusing to serve metrics on {path}: a live process serves it")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock
