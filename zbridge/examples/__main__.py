"""Demo: an embedded bridge with the example tools, printing what happens and how long it takes."""

from __future__ import annotations

import time
from typing import Any, Callable

import zbridge


def timed(label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    print(f"{label:<44} {(time.perf_counter() - start) * 1000:9.3f} ms  -> {result}")
    return result


def main() -> None:
    print("zbridge demo: 2 warm daemons running zbridge.examples.tools\n")
    with zbridge.Bridge(tools="zbridge.examples.tools", workers=2, prewarm=True) as bridge:
        timed("cold first call (daemons start, load model)", bridge.call, "predict", {"text": "hello"})
        for i in range(5):
            timed(f"warm call {i + 1}", bridge.call, "predict", {"text": "zbridge is fast and warm"})
        timed("echo", bridge.call, "echo", {"value": ["any msgpack value", 42, {"nested": True}]})
        start = time.perf_counter()
        futures = [bridge.submit("sleep", {"seconds": 0.3}) for _ in range(2)]
        spans = [f.result() for f in futures]
        overlap = min(s["end"] for s in spans) - max(s["start"] for s in spans)
        print(f"{'two 0.3 s sleeps via submit()':<44} {(time.perf_counter() - start) * 1000:9.3f} ms"
              f"  -> pids {sorted(s['pid'] for s in spans)}, overlapped {overlap:.3f} s")
        try:
            bridge.call("fail", {"message": "boom"})
        except zbridge.ToolError as exc:
            print(f"{'tool error':<44} {'':>12}  -> {type(exc).__name__} (code {exc.code}): {exc}")
        n = 2000
        start = time.perf_counter()
        for i in range(n):
            bridge.call("echo", [i])
        per_call = (time.perf_counter() - start) / n * 1e6
        print(f"{f'{n} sequential echo calls':<44} {per_call:9.1f} µs per call")
        status = bridge.status()
        for d in status["daemons"]:
            print(f"daemon {d['id']}: pid {d['pid']}, {d['state']}, {d['calls']} calls")
    print("\nclosed: daemons stopped, private ipc directory removed")


if __name__ == "__main__":
    main()
