"""Runs targets in interleaved rounds, shows progress, and turns failures into skips."""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from .cases import Case, Sample, Target
from .profiles import Profile
from .stats import summarize


@dataclass
class Outcome:
    """Every repeat of one case, or why it was skipped."""
    case: Case
    samples: list[Sample] = field(default_factory=list)
    skipped: str | None = None


def missing_requirement(target: Target) -> str | None:
    for module in target.requires:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'zbridge[bench]')"
    return None


def rotated(targets: list[Target], round_index: int, rounds: int) -> list[Target]:
    """Each round starts at a different target, so none is always measured first or last."""
    if not targets:
        return []
    shift = (round_index * len(targets)) // max(1, rounds)
    return targets[shift:] + targets[:shift]


class Progress:
    """One line per measurement on stderr (the table goes to stdout at the end)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.started = time.monotonic()

    def line(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        self.stream.write(f"[{self.done:>3}/{self.total} {elapsed:5.0f}s] {text}\n")
        self.stream.flush()

    def measured(self, round_index: int, case: Case, sample: Sample, seconds: float) -> None:
        self.done += 1
        summary = summarize(sample)
        if "rss_kib" in summary:
            figures = f"rss {summary['rss_kib'] / 1024:.1f} MiB"
        elif sample.batch > 1:
            figures = (f"median {summary['p50_us'] / 1e3:,.1f} ms, max {summary['max_us'] / 1e3:,.1f} ms "
                       f"per gather  {summary['calls_per_s']:,.0f} calls/s  "
                       f"({sample.calls} gathers of {sample.batch} calls)")
        else:
            rate = summary["calls_per_s"]
            figures = (f"p50 {summary['p50_us']:,.1f} µs  p99 {summary['p99_us']:,.1f} µs  "
                       + (f"{rate:,.0f} calls/s  " if rate else "") + f"({sample.calls} calls)")
        self.line(f"round {round_index + 1}  {case.name:<32} {figures}  [{seconds:.1f}s]")


def run_target(target: Target, outcomes: dict[str, Outcome], progress: Progress,
               round_index: int) -> None:
    with target.open() as handle:
        for case in target.cases:
            started = time.monotonic()
            sample = case.measure(handle, case)
            outcomes[case.name].samples.append(sample)
            progress.measured(round_index, case, sample, time.monotonic() - started)


def run(targets: list[Target], profile: Profile) -> list[Outcome]:
    outcomes = {case.name: Outcome(case) for target in targets for case in target.cases}
    active = []
    for target in targets:
        reason = missing_requirement(target)
        for case in target.cases if reason else ():
            outcomes[case.name].skipped = reason
        if not reason:
            active.append(target)
    progress = Progress(profile.repeats * sum(len(t.cases) for t in active))
    failed: set[str] = set()
    for round_index in range(profile.repeats):
        for target in rotated(active, round_index, profile.repeats):
            if target.name in failed:
                continue
            try:
                run_target(target, outcomes, progress, round_index)
            except Exception as exc:  # noqa: BLE001 - one broken target must not end the run
                reason = f"failed in round {round_index + 1}: {type(exc).__name__}: {exc}"
                progress.line(f"{target.name}: {reason}")
                failed.add(target.name)
                for case in target.cases:
                    outcomes[case.name].skipped = reason
    return list(outcomes.values())
