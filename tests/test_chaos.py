"""Random SIGKILLs under load: every call answered once, never with another's result, never
run twice unless idempotent; every idempotent call succeeds."""

from __future__ import annotations

import collections
import os
import random
import signal
import threading

import pytest

import zbridge
from helpers import served

CALLERS = 4
CALLS_PER_CALLER = 500


POOL = {"backoff_base": 0.01, "backoff_cap": 0.2}
CALLER = {"retries": 50, "timeout": 20, "fallback": False}


@pytest.fixture(params=["direct", "hub", "leases"])
def pool(request, bridge_factory, basic_tools, tmp_path):
    """The pool under chaos: a Bridge on its direct route or through its hub thread, or a
    `zbridge serve` whose local Client borrows its daemons (leases)."""
    if request.param != "leases":
        yield bridge_factory(basic_tools, workers=2, prewarm=True, direct=request.param == "direct",
                             **POOL, **CALLER)
        return
    args = ["--tools", basic_tools, "--workers", "2", "--prewarm", "--backoff-base", "0.01",
            "--backoff-cap", "0.2"]
    with served(tmp_path, *args) as (endpoint, _), zbridge.Client(endpoint, **CALLER) as client:
        assert type(client._transport).__name__ == "LeaseTransport"
        yield client


def test_chaos_kills_lose_no_reply_and_run_nothing_twice(pool, tmp_path):
    journal = str(tmp_path / "journal")
    bridge = pool
    outcomes: dict[str, object] = {}
    idempotent: set[str] = set()
    done = threading.Event()
    kills = []

    def caller(n: int) -> None:
        for i in range(CALLS_PER_CALLER):
            nonce = f"{n}-{i}"
            safe = i % 2 == 0
            if safe:
                idempotent.add(nonce)
            try:
                result = bridge.call("record", [journal, nonce, 0.005], idempotent=safe)
            except zbridge.BridgeError as exc:
                result = exc
            assert nonce not in outcomes, "a call returned twice"
            outcomes[nonce] = result

    def killer() -> None:
        rng = random.Random(7)
        while not done.wait(rng.uniform(0.1, 0.2)):
            live = [d["pid"] for d in bridge.status()["daemons"] if d["state"] in ("idle", "busy")]
            if live:
                victim = rng.choice(live)
                try:
                    os.kill(victim, signal.SIGKILL)
                    kills.append(victim)
                except ProcessLookupError:
                    pass

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(CALLERS)]
    chaos = threading.Thread(target=killer)
    chaos.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    done.set()
    chaos.join()

    assert len(outcomes) == CALLERS * CALLS_PER_CALLER
    with open(journal) as f:
        ran = collections.Counter(f.read().split())
    lost = collections.Counter()
    for nonce, result in outcomes.items():
        if isinstance(result, Exception):
            assert nonce not in idempotent, f"idempotent call {nonce} failed: {result!r}"
            assert isinstance(result, (zbridge.WorkerLost, zbridge.CallTimeout)), repr(result)
            lost[type(result).__name__] += 1
        else:
            assert result == nonce, f"call {nonce} received {result!r}"
        if nonce not in idempotent:
            assert ran[nonce] <= 1, f"non-idempotent call {nonce} ran {ran[nonce]} times"
    print(f"{len(kills)} kills, outcomes lost: {dict(lost)}, "
          f"idempotent re-runs: {sum(ran[n] - 1 for n in idempotent if ran[n] > 1)}")
    assert len(kills) >= 10
