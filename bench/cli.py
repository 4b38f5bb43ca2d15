"""``zbridge bench`` (``python -m zbridge_bench``; ``python -m bench`` in a clone): options, the
order of targets, and what gets written where."""

from __future__ import annotations

import argparse
import itertools
import signal
import sys
import time

from . import cases_floor, cases_peers, cases_pipe_start, cases_preload, cases_zbridge, goals, meta, plot, report
from .cases import Target
from .profiles import Profile, choose
from .runner import run


def parse(argv: list[str], prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog or f"python -m {__package__}", description=(
        "Latency and throughput of zbridge against floors (raw pyzmq, os.pipe) and peers "
        "(process pools, loky, zerorpc). Progress goes to stderr, the table to stdout."))
    parser.add_argument("--quick", action="store_true", help="fewer calls and shorter runs (about a minute)")
    parser.add_argument("--json", metavar="PATH", help="write meta, every case and the targets as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of latency CDFs (needs matplotlib)")
    parser.add_argument("--repeats", type=int, metavar="N", help="rounds (default 3; fewer is for debugging)")
    parser.add_argument("--calls", type=int, metavar="N", help="timed calls per latency case per repeat")
    parser.add_argument("--only", action="append", metavar="TEXT",
                        help="run only targets with a case whose name contains TEXT (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    for name in ("repeats", "calls"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def all_targets(profile: Profile) -> list[Target]:
    """zbridge, floor and peer targets alternating, so neighbours in a round differ in kind
    (the pipe cold starts alternate their zbridge and floor starts within one target)."""
    groups = [cases_zbridge.targets(profile), cases_floor.targets(profile), cases_peers.targets(profile),
              cases_pipe_start.targets(profile), cases_preload.targets(profile)]
    return [t for t in itertools.chain.from_iterable(itertools.zip_longest(*groups)) if t is not None]


def selected(targets: list[Target], only: list[str] | None) -> list[Target]:
    if not only:
        return targets
    return [t for t in targets if any(text in c.name for text in only for c in t.cases)]


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: no child is left behind


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv, prog)
    profile = choose(args.quick, args.repeats, args.calls)
    targets = selected(all_targets(profile), args.only)
    if args.list:
        for target in targets:
            print(target.name + "".join(f"\n  {c.name}  ({c.kind})" for c in target.cases))
        return
    signal.signal(signal.SIGTERM, _terminate)
    info = meta.collect(profile, argv)
    started = time.monotonic()
    try:
        outcomes = run(targets, profile)
    except KeyboardInterrupt:
        sys.exit("interrupted; every process the benchmark started has been stopped")
    meta.finish(info, time.monotonic() - started)
    rows = report.rows(outcomes)
    results = goals.evaluate(rows)
    print(report.render(rows, results, info))
    if args.json:
        report.write_json(args.json, info, rows, results)
        print(f"\nwrote {args.json}", file=sys.stderr)
    if args.plot:
        try:
            plot.write_cdf(args.plot, outcomes, info)
            print(f"wrote {args.plot}", file=sys.stderr)
        except ImportError as exc:
            sys.exit(f"--plot needs matplotlib (pip install 'zbridge[bench]'): {exc}")
