"""`zbridge status --watch`: one frame of the live view, from status maps. Pure: no I/O.

A frame has no blank line inside, so over a pipe frames are blank-line separated
paragraphs. It shows the hub, its daemons (state, the tool each runs and for how long, calls,
RSS), the queue, and per tool the calls per second since the previous frame, error count
and latency quantiles. The loop that fetches status and draws frames lives in cli.py.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

CLEAR = "\x1b[H\x1b[J"  # cursor home, clear to the end of the screen


def cell(value: Any, fmt: str = "") -> str:
    """A table cell: "-" for a missing value."""
    return "-" if value is None else format(value, fmt)


def duration(seconds: float | None) -> str:
    """A latency in the unit that fits it: 183µs, 2.51ms, 6.00s, 2.5min; "-" for none."""
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1:
        return f"{seconds * 1000:.2f}ms"
    return f"{seconds:.2f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


def rates(info: Mapping[str, Any], prev: Mapping[str, Any] | None, elapsed: float | None) -> dict[str, float | None]:
    """Calls per second per tool since ``prev`` (None for the first frame)."""
    tools = info.get("tools") or {}
    if prev is None or not elapsed or elapsed <= 0:
        return dict.fromkeys(tools)
    before = prev.get("tools") or {}
    return {name: max(0, t["calls"] - (before.get(name) or {}).get("calls", 0)) / elapsed
            for name, t in tools.items()}


def render(info: Mapping[str, Any], prev: Mapping[str, Any] | None = None, elapsed: float | None = None,
           interval: float | None = None, clock: float | None = None) -> str:
    """The live view as text (no escape codes; the caller clears the screen on a tty)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(clock))
    daemons = info.get("daemons") or []
    counters = info.get("counters") or {}
    head = (f"zbridge {stamp}  hub pid {info.get('hub_pid')} at {info.get('endpoint')}  "
            f"daemons {len(daemons)}/{info.get('workers')}  queue {info.get('queue_depth', 0)}"
            + (" (shutting down)" if info.get("closing") else ""))
    if interval:
        head += f"  every {interval:g}s, Ctrl-C quits"
    lines = [head,
             f"{'daemon':<7} {'pid':>8} {'state':<9} {'tool':<20} {'age_s':>8} {'calls':>7} {'rss_mb':>7}"]
    for d in daemons:
        rss = d["rss"] / 1048576 if d.get("rss") else None
        tool = d.get("current_tool") or ("-" if d.get("current_call") is None else f"#{d['current_call']}")
        lines.append(f"{d['id']:<7} {cell(d.get('pid')):>8} {d['state']:<9} {tool[:20]:<20} "
                     f"{cell(d.get('call_age_s'), '.2f'):>8} {d.get('calls', 0):>7} {cell(rss, '.1f'):>7}")
    if not daemons:
        lines.append("(no daemons: they start on the first call)")
    tools = info.get("tools") or {}
    per_s = rates(info, prev, elapsed)
    lines.append(f"{'tool':<20} {'calls/s':>8} {'calls':>8} {'errors':>7} {'run p50':>10} "
                 f"{'run p99':>10} {'wait p99':>10}")
    for name, t in tools.items():
        errors = sum((t.get("errors") or {}).values())
        lines.append(f"{name[:20]:<20} {cell(per_s.get(name), '.1f'):>8} {t['calls']:>8} {errors:>7} "
                     f"{duration(t['run_s'].get('p50')):>10} {duration(t['run_s'].get('p99')):>10} "
                     f"{duration(t['queue_s'].get('p99')):>10}")
    if not tools:
        lines.append("(no calls yet)")
    lines.append("completed {} timeouts {} lost {} overloaded {} crashes {} restarts {}".format(
        counters.get("completed", 0), counters.get("timeouts", 0), counters.get("lost", 0),
        counters.get("overloaded", 0), counters.get("crashes", 0),
        sum((info.get("exits") or {}).values())))
    return "\n".join(lines)


def render_unreachable(error: str, clock: float | None = None) -> str:
    """A frame for a hub that did not answer; ``error`` names the endpoint and the cause."""
    stamp = time.strftime("%H:%M:%S", time.localtime(clock))
    return f"zbridge {stamp}  {error} (retrying)"
