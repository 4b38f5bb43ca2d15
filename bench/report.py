"""Result rows (the JSON schema in README.md), the terminal tables, and the JSON file."""

from __future__ import annotations

import json
from typing import Iterable

from .cases import COLD_START, GATHERED, LATENCY, MEMORY, THROUGHPUT
from .goals import W1
from .profiles import CALLERS, GATHER, HUGE, POOL_SIZES, SMALL, SWEEP, size_label
from .runner import Outcome
from .stats import aggregate

METRICS = ("p50_us", "p90_us", "p99_us", "p999_us", "max_us", "calls_per_s")


def row(outcome: Outcome) -> dict:
    case = outcome.case
    result = {"name": case.name, "kind": case.kind, **dict.fromkeys(METRICS),
              "callers": case.callers, "workers": case.workers, "payload_bytes": case.payload_bytes,
              "repeats": len(outcome.samples), "skipped": outcome.skipped}
    if outcome.skipped is None and outcome.samples:
        result.update(aggregate(case.kind, outcome.samples))
    elif outcome.skipped is None:
        result["skipped"] = "not run"
    return result


def rows(outcomes: Iterable[Outcome]) -> list[dict]:
    """Rows in the JSON schema; ``p50_vs_w1`` compares latency rows with zbridge.embedded.w1
    at the same payload size."""
    result = [row(o) for o in outcomes]
    w1 = {r["payload_bytes"]: r["p50_us"] for r in result
          if r["kind"] == LATENCY and r["name"].split("/")[0] == W1 and not r["skipped"]}
    for r in result:
        base = w1.get(r["payload_bytes"]) if r["kind"] == LATENCY else None
        r["p50_vs_w1"] = r["p50_us"] / base if base and r["p50_us"] is not None else None
    return result


def write_json(path: str, meta: dict, result_rows: list[dict], goals: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, "cases": result_rows, "targets": goals}, f, indent=2)
        f.write("\n")


# --- terminal ----------------------------------------------------------------------------

def us(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def num(value: float | None, fmt: str = ",.0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def table(headers: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(line[i]) for line in body)) if body else len(h)
              for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *map(fmt, body)])


def percentile_table(result_rows: list[dict]) -> str:
    headers = ["case", "p50", "p90", "p99", "p99.9", "max", "calls/s", "p50/w1", "spread", "calls"]
    body = [[r["name"], us(r["p50_us"]), us(r["p90_us"]), us(r["p99_us"]), us(r["p999_us"]),
             us(r["max_us"]), num(r["calls_per_s"]), num(r["p50_vs_w1"], ".2f", "x"),
             num(r["spread_pct"], ".0f", "%"), num(r["timed_calls"])]
            for r in result_rows if not r["skipped"]]
    return table(headers, body)


def sweep_table(result_rows: list[dict]) -> str:
    cells: dict[str, dict[int, dict]] = {}
    for r in result_rows:
        if r["kind"] == LATENCY and not r["skipped"]:
            cells.setdefault(r["name"].split("/")[0], {})[r["payload_bytes"]] = r
    bases = [b for b, sizes in cells.items() if len(sizes) > 1]
    sizes = SWEEP + (HUGE,)
    headers = ["case (p50 / p99 µs)"] + [size_label(s) for s in SWEEP] + [f"{size_label(HUGE)} bytes"]
    body = [[b] + [f"{us(cells[b][s]['p50_us'])} / {us(cells[b][s]['p99_us'])}" if s in cells[b] else "-"
                   for s in sizes] for b in bases]
    return table(headers, body)


def throughput_table(result_rows: list[dict]) -> str:
    by_name = {r["name"]: r for r in result_rows if not r["skipped"]}

    def rate(name: str) -> float | None:
        return by_name.get(name, {}).get("calls_per_s")

    headers, body = ["callers"], [[str(n)] for n in CALLERS]
    for w in POOL_SIZES:
        headers += [f"zbridge w{w}", f"floor w{w}", "zb/floor"]
        for line, n in zip(body, CALLERS):
            zb, floor = rate(f"zbridge.embedded.w{w}/c{n}"), rate(f"floor.zmq_proxy.w{w}/c{n}")
            share = 100 * zb / floor if zb and floor else None
            line += [num(zb), num(floor), num(share, ".0f", "%")]
    for title, base in (("serve w2", "zbridge.serve.w2"), ("ppe w2", "peer.process_pool_executor.w2")):
        headers += [title, f"{title.split()[0]}/floor"]  # against floor w2
        for line, n in zip(body, CALLERS):
            zb, floor = rate(f"{base}/c{n}"), rate(f"floor.zmq_proxy.w2/c{n}")
            line += [num(zb), num(100 * zb / floor if zb and floor else None, ".0f", "%")]
    return table(headers, body)


def gather_table(result_rows: list[dict]) -> str:
    headers = ["case", "median", "max", "calls/s", "gathers", "spread"]
    body = [[r["name"], f"{r['p50_us'] / 1e3:,.1f} ms", f"{r['max_us'] / 1e3:,.1f} ms",
             num(r["calls_per_s"]), num(r["timed_calls"]), num(r["spread_pct"], ".0f", "%")]
            for r in result_rows if r["kind"] == GATHERED and not r["skipped"]]
    return table(headers, body)


def startup_memory_table(result_rows: list[dict]) -> str:
    headers = ["case", "median", "max", "samples", "spread"]
    body = []
    for r in result_rows:
        if r["skipped"]:
            continue
        if r["kind"] == COLD_START:
            body.append([r["name"], f"{r['p50_us'] / 1e3:,.1f} ms", f"{r['max_us'] / 1e3:,.1f} ms",
                         num(r["timed_calls"]), num(r["spread_pct"], ".0f", "%")])
        elif r["kind"] == MEMORY:
            body.append([f"{r['name']} ({memory_kind(r['name'])})", f"{r['rss_kib'] / 1024:.1f} MiB", "-",
                         str(r["repeats"]), num(r["spread_pct"], ".0f", "%")])
    return table(headers, body)


def memory_kind(name: str) -> str:
    """What a memory row measures: PSS or USS (``zbridge.preload.*``), else RSS."""
    return "PSS" if ".pss" in name else "USS" if ".uss" in name else "RSS"


def goals_lines(goals: list[dict]) -> list[str]:
    verdict = {True: "MET   ", False: "MISSED", None: "n/a   "}
    return [f"  {verdict[g['met']]} {g['goal']}  (measured {num(g['ratio'], '.2f')} "
            f"{g['comparison']} {g['bound']:g})" for g in goals]


def render(result_rows: list[dict], goals: list[dict], meta: dict) -> str:
    latency = [r for r in result_rows if r["kind"] == LATENCY and r["payload_bytes"] == SMALL]
    under_load = [r for r in result_rows if r["kind"] == THROUGHPUT]
    measured = [r for r in result_rows if not r["skipped"]]
    kinds = {r["kind"] for r in measured}
    sections = [
        (f"Latency, {SMALL} B payload (µs; median over repeats of each percentile; "
         "spread = (max-min)/median of p50 across repeats)",
         percentile_table(latency), any(not r["skipped"] for r in latency)),
        ("Payload sweep", sweep_table(result_rows),
         any(r["payload_bytes"] != SMALL for r in measured)),
        (f"Throughput (calls/s, {meta['profile']['seconds']:g} s per measurement)",
         throughput_table(result_rows), THROUGHPUT in kinds),
        ("Latency under load (µs; callers in the name after /c)", percentile_table(under_load),
         THROUGHPUT in kinds),
        (f"asyncio.gather of {GATHER:,} calls (wall time of one gather; median over repeats of "
         "each repeat's median)", gather_table(result_rows), GATHERED in kinds),
        ("Cold start and memory", startup_memory_table(result_rows), bool(kinds & {COLD_START, MEMORY})),
        ("Targets (from the issue; reported, not asserted)", "\n".join(goals_lines(goals)), True),
        ("Skipped", "\n".join(f"  {r['name']}: {r['skipped']}" for r in result_rows if r["skipped"]),
         len(measured) < len(result_rows)),
    ]
    parts = [f"{title}\n{text}" for title, text, shown in sections if shown]
    return "\n\n".join(parts + [footer(meta)])


def footer(meta: dict) -> str:
    v, p = meta["versions"], meta["profile"]
    return (f"{meta['date']}  {p['name']} profile, {p['repeats']} repeats, {meta['duration_s']} s  |  "
            f"{meta['cpu_count']} CPUs ({meta['cpu_model'] or '?'}), load "
            f"{meta['loadavg_start'][0]:.2f} -> {meta['loadavg_end'][0]:.2f}  |  Python {v['python']}, "
            f"zbridge {v['zbridge']}, pyzmq {v['pyzmq']}, libzmq {v['libzmq']}, msgpack {v['msgpack']}")
