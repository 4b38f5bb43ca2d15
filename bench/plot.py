"""``--plot PATH``: latency CDFs, one line per case (all repeats pooled), log-scale x."""

from __future__ import annotations

from .cases import LATENCY
from .runner import Outcome


def write_cdf(path: str, outcomes: list[Outcome], meta: dict) -> None:
    """Raises ImportError when matplotlib (the ``bench`` extra) is missing."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = sorted({o.case.payload_bytes for o in outcomes if o.case.kind == LATENCY})
    smallest = sweep[0] if sweep else None
    shown = [o for o in outcomes if o.case.kind == LATENCY and not o.skipped and o.samples
             and o.case.payload_bytes == smallest]
    palette = plt.get_cmap("tab20").colors
    colors = palette[0::2] + palette[1::2]  # the ten strong colours first, then their light twins
    figure, axis = plt.subplots(figsize=(11, 7))
    for index, outcome in enumerate(shown):
        values = sorted(v / 1e3 for s in outcome.samples for v in s.latencies_ns)
        fractions = [(i + 1) / len(values) for i in range(len(values))]
        style = "-" if outcome.case.name.startswith("zbridge") else "--"
        axis.plot(values, fractions, style, label=outcome.case.name, linewidth=1.4,
                  color=colors[index % len(colors)])
    axis.set_xscale("log")
    axis.set_xlabel("round-trip latency (µs, log scale)")
    axis.set_ylabel("fraction of calls")
    axis.set_ylim(0, 1.001)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="lower right", fontsize="small")
    axis.set_title(f"zbridge latency CDF, {smallest} B payload, all repeats pooled\n"
                   f"{meta['date']}, {meta['cpu_count']} CPUs, Python {meta['versions']['python']}, "
                   f"{meta['profile']['name']} profile", fontsize="medium")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
