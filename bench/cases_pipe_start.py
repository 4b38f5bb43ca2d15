"""The cold start of a pipe daemon: spawn, one JSON-RPC line in, time to the first reply line.

``zbridge.stdio.cold_start`` starts ``zbridge-daemon --stdio`` with ``bench/tools.py``;
``floor.stdio_cold_start`` starts the least a JSON-lines daemon can be (``FLOOR_DAEMON``,
run with ``python -c``). Pipe clients restart daemons often, and the fallback starts one per
call, so this is the pipe's latency that matters most. The two starts alternate one by one,
so a drift of the shared machine lands on both alike.
"""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Iterator

import zbridge
import zbridge_daemon

from . import procs
from .cases import COLD_START, Case, Handle, Sample, Target
from .cases_zbridge import TOOLS
from .profiles import SMALL, Profile
from .timing import BenchError, clock, make_payload

ZBRIDGE, FLOOR = "zbridge.stdio.cold_start", "floor.stdio_cold_start"

FLOOR_DAEMON = (
    "import json, sys\n"
    "for line in sys.stdin:\n"
    "    request = json.loads(line)\n"
    "    reply = {'jsonrpc': '2.0', 'id': request['id'], 'result': request['params'][0]}\n"
    "    sys.stdout.write(json.dumps(reply) + '\\n')\n"
    "    sys.stdout.flush()\n"
)

COMMANDS = {
    ZBRIDGE: procs.python_module("zbridge_daemon", "--stdio", "--tools", TOOLS),
    FLOOR: [sys.executable, "-c", FLOOR_DAEMON],
}


def first_reply_ns(argv: list[str], request: bytes) -> int:
    """Spawn ``argv``, send one request line, return the time until its reply line."""
    start = clock()
    with procs.child(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        proc.stdin.write(request)
        proc.stdin.flush()
        line = proc.stdout.readline()
        elapsed = clock() - start
        if not line:
            procs.check_alive(proc, argv[-1])
            raise BenchError(f"{argv[:4]} closed its stdout without a reply")
        if "result" not in json.loads(line):
            raise BenchError(f"{argv[:4]} answered {line[:200]!r}")
    return elapsed  # stopping the process is not timed


def compile_sources() -> None:
    """Bytecode for zbridge and the tools, as an installed package has; without it (e.g. under
    PYTHONDONTWRITEBYTECODE) every start would compile the sources again."""
    for package in (zbridge, zbridge_daemon):
        compileall.compile_dir(os.path.dirname(package.__file__), quiet=1)
    compileall.compile_file(TOOLS, quiet=1)


@dataclass
class Alternating:
    """Runs both cases' starts in alternation when the first of them is measured."""
    starts: int
    pending: dict[str, list[int]] = field(default_factory=dict)

    def sample(self, name: str) -> Sample:
        if name not in self.pending:
            self.pending = self._run()
        return Sample(self.pending.pop(name))  # no calls/s: each sample is a separate start

    def _run(self) -> dict[str, list[int]]:
        request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "noop",
                              "params": [make_payload(SMALL)]}).encode() + b"\n"
        for argv in COMMANDS.values():  # untimed: file caches warm for both alike
            first_reply_ns(argv, request)
        durations: dict[str, list[int]] = {name: [] for name in COMMANDS}
        for _ in range(self.starts):
            for name, argv in COMMANDS.items():
                durations[name].append(first_reply_ns(argv, request))
        return durations


@dataclass
class StartsHandle(Handle):
    starts: Alternating | None = None


def measure(handle: StartsHandle, case: Case) -> Sample:
    return handle.starts.sample(case.name)


def targets(profile: Profile) -> list[Target]:
    @contextlib.contextmanager
    def open_starts() -> Iterator[Handle]:
        compile_sources()
        yield StartsHandle(lambda payload: (lambda: payload),
                           starts=Alternating(profile.subprocess_calls))

    cases = tuple(Case(name, COLD_START, measure, workers=1, calls=profile.subprocess_calls)
                  for name in COMMANDS)
    return [Target("stdio.cold_start", open_starts, cases)]
