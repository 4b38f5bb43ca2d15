"""A long soak against `zbridge serve`: mixed sync and async calls, streams, cancels, timeouts
and a misbehaving peer, all at once. Not in the default run (marked ``soak``):

    ZBRIDGE_SOAK_SECONDS=600 python -m pytest -m soak

Checks that every call got exactly its own answer, and that the hub's RSS, open files and
threads stay flat between the first and the last sample.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import uuid

import pytest

import zbridge
from helpers import fd_count, raw_dealer, served, status_request, thread_count
from zbridge import protocol
from zbridge.procinfo import rss_bytes

pytestmark = pytest.mark.soak
SECONDS = float(os.environ.get("ZBRIDGE_SOAK_SECONDS", "600"))


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.wrong: list[str] = []

    def add(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def bad(self, why: str) -> None:
        with self.lock:
            self.wrong.append(why)


def sync_caller(client: zbridge.Client, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        nonce = uuid.uuid4().hex
        choice = rng.random()
        try:
            if choice < 0.6:
                got = client.call("echo", [nonce], timeout=10)
                tally.add("ok") if got == nonce else tally.bad(f"echo {nonce} got {got!r}")
            elif choice < 0.7:
                client.call("span", [0.5, nonce], timeout=0.1)
                tally.bad("a 0.5 s call beat its 0.1 s deadline")
            elif choice < 0.8:
                future = client.submit("span", [0.3, nonce], timeout=10)
                time.sleep(rng.random() * 0.2)
                future.cancel()
                try:
                    got = future.result(timeout=15)
                    tally.add("ok") if got["nonce"] == nonce else tally.bad(f"span {nonce} got {got!r}")
                except (zbridge.Cancelled, Exception) as exc:  # noqa: BLE001
                    tally.add(type(exc).__name__)
            else:
                n = rng.randint(1, 300)
                items = client.stream("count", [n], window=rng.choice([1, 8, 64]), timeout=20)
                taken = []
                for item in items:
                    taken.append(item)
                    if rng.random() < 0.01:
                        items.close()
                        break
                if taken != list(range(len(taken))):
                    tally.bad(f"stream gave {taken[:10]}...")
                tally.add("stream")
        except zbridge.CallTimeout:
            tally.add("timeout")
        except zbridge.BridgeError as exc:
            tally.add(type(exc).__name__)


def async_caller(endpoint: str, stop: threading.Event, tally: Tally) -> None:
    async def main() -> None:
        async with zbridge.AsyncClient(endpoint, fallback=False) as client:
            while not stop.is_set():
                nonces = [uuid.uuid4().hex for _ in range(200)]
                results = await asyncio.gather(*(client.call("echo", [n], timeout=20) for n in nonces),
                                               return_exceptions=True)
                for nonce, got in zip(nonces, results):
                    if isinstance(got, BaseException):
                        tally.add(type(got).__name__)
                    else:
                        tally.add("ok") if got == nonce else tally.bad(f"async {nonce} got {got!r}")
    asyncio.run(main())


def misbehaving_peer(endpoint: str, stop: threading.Event) -> None:
    """Floods STATUS and garbage and never reads; reconnects now and then."""
    while not stop.is_set():
        with raw_dealer(endpoint) as sock:
            for i in range(5000):
                if stop.is_set():
                    break
                try:
                    sock.send(status_request(i + 1) if i % 3 else b"garbage", 1)
                    if i % 500 == 0:
                        sock.send_multipart([protocol.encode_status_request(1)] + [b""] * 1000, 1)
                except Exception:  # noqa: BLE001 - its queue is full: it does not care
                    time.sleep(0.01)
            time.sleep(0.5)


def sample(pid: int) -> dict[str, int]:
    return {"rss": rss_bytes(pid) or 0, "fds": fd_count(pid), "threads": thread_count(pid)}


def test_soak(tmp_path, basic_tools):
    with served(tmp_path, "--tools", basic_tools, "--workers", "2", "--kill-grace", "1") as (endpoint, proc):
        stop, tally = threading.Event(), Tally()
        with zbridge.Client(endpoint, fallback=False) as client:
            threads = [threading.Thread(target=sync_caller, args=(client, stop, tally, n)) for n in range(4)]
            threads.append(threading.Thread(target=async_caller, args=(endpoint, stop, tally)))
            threads.append(threading.Thread(target=misbehaving_peer, args=(endpoint, stop)))
            for t in threads:
                t.start()
            try:
                time.sleep(min(30.0, SECONDS / 4))  # warm up before the first sample
                first = sample(proc.pid)
                time.sleep(max(0.0, SECONDS - min(30.0, SECONDS / 4)))
                last = sample(proc.pid)
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=60)
            status = client.status()
        print(f"soak {SECONDS:.0f}s: {tally.counts}; hub {first} -> {last}; counters {status['counters']}")
        assert not tally.wrong, tally.wrong[:5]
        assert tally.counts.get("ok", 0) > 100
        assert last["rss"] - first["rss"] < 40 * 1024 * 1024
        assert abs(last["fds"] - first["fds"]) <= 16
        assert abs(last["threads"] - first["threads"]) <= 4
