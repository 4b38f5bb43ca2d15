"""The client side of tests/test_netns.py, run inside the client's network namespace.

    python netns_client.py probe|load JSON-CONFIG

prints one JSON object on stdout. ``probe`` waits until the hub serves through every
expected daemon, then checks that a client key off the allowlist is refused. ``load`` runs
threads that call ``append`` (appending a nonce to a ledger file) until a deadline, half of
them marked idempotent, and reports every call's single outcome.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import zbridge


def client(config: dict, secret: str) -> zbridge.Client:
    return zbridge.Client(config["endpoint"], fallback=False, connect_timeout=2.0,
                          curve_server_key=config["server_key"], curve_secret=secret)


def probe(config: dict) -> dict:
    wanted = config["daemons"]
    deadline = time.monotonic() + config["wait"]
    served: set[int] = set()
    with client(config, config["secret"]) as c:
        while time.monotonic() < deadline and len(served) < wanted:
            try:
                served.add(c.call("append", [config["ledger"], "probe", 0.0], timeout=2,
                                  idempotent=True))
            except zbridge.BridgeError:
                time.sleep(0.1)
        status = c.status()
    with client(config, config["stranger_secret"]) as c:
        try:
            c.call("append", [config["ledger"], "stranger", 0.0], timeout=2)
            stranger = "served"
        except zbridge.BridgeError as exc:
            stranger = type(exc).__name__
    return {"served": sorted(served), "status_pids": [d["pid"] for d in status["daemons"]],
            "stranger": stranger}


def load(config: dict) -> dict:
    until = time.time() + config["seconds"]
    calls: list[dict] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        with client(config, config["secret"]) as c:
            i = 0
            while time.time() < until:
                idempotent = (i + n) % 2 == 0  # out of step: both kinds are in flight at once
                nonce = f"t{n}-{i}-{'i' if idempotent else 'x'}"
                try:
                    pid = c.call("append", [config["ledger"], nonce, config["work"]],
                                 timeout=config["timeout"], idempotent=idempotent)
                    outcome = "ok"
                except zbridge.BridgeError as exc:
                    pid, outcome = None, type(exc).__name__
                with lock:
                    calls.append({"nonce": nonce, "idempotent": idempotent, "outcome": outcome,
                                  "pid": pid, "done": time.time()})
                i += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(config["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"calls": calls}


if __name__ == "__main__":
    mode, config = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps({"probe": probe, "load": load}[mode](config)), flush=True)
