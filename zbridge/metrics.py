"""Prometheus metrics for a hub (``metrics = "127.0.0.1:9464"``; needs ``zbridge[metrics]``).

The exporter runs in prometheus_client's HTTP thread and never touches the broker: the hub
thread publishes a fresh snapshot (``Hub.publish_snapshot``: status() + per-tool bucket
counts) at most every 0.5 s, replacing it whole, and a scrape reads whichever snapshot is
current. Metrics (``zbridge_`` prefix, base units, ``_total`` counters):

    zbridge_calls_total{tool,outcome}            answered calls; outcome ok or an error name
    zbridge_call_duration_seconds{tool}          histogram: run time in a daemon
    zbridge_queue_wait_seconds{tool}             histogram: accepted -> handed to a daemon
    zbridge_queue_depth                          calls waiting for a daemon
    zbridge_daemons{state}                       daemons by state
    zbridge_restarts_total{reason}               daemon exits: crashed, start_failed, killed,
                                                 recycled, idle, lost
    zbridge_daemon_rss_bytes{daemon}             resident memory per daemon (from heartbeats)
    zbridge_hub_loop_lag_seconds                 worst late timer wake-up of the hub loop
                                                 in the last snapshot interval
"""

from __future__ import annotations

import ipaddress
import threading
from typing import Any, Iterator, Protocol

from .state import EXIT_KINDS, DaemonState
from .stats import BOUNDS

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
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) on a loopback address only: metrics show tool
    names and call rates, which are nobody else's business."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics address must be HOST:PORT, e.g. 127.0.0.1:9464, not {address!r}")
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise ValueError(f"metrics bind only to a loopback address (127.0.0.1, ::1, localhost), "
                         f"not {host!r}: put a proxy in front to expose them")
    return host, int(port)


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


class Exporter:
    """The HTTP server serving /metrics in its own thread; ``stop()`` is idempotent."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self.server, self.thread = server, thread
        self.address = server.server_address

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self.thread.join(5)


def start_exporter(address: str, source: SnapshotSource) -> Exporter:
    host, port = parse_address(address)
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise ValueError("metrics need prometheus_client: pip install 'zbridge[metrics]'") from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(source))
    server, thread = start_http_server(port, host, registry=registry)
    return Exporter(server, thread)
