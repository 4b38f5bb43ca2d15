"""Tools used by the tests (loaded by path, as users do)."""

import os
import sys
import time

import zbridge

CACHE: dict = {}


@zbridge.tool
def echo(value=None):
    return value


@zbridge.tool
def add(a: int, b: int = 0) -> int:
    return a + b


@zbridge.tool
def cached(key: str) -> dict:
    """Counts hits per key in a module global: proves calls reach the same warm process."""
    CACHE[key] = CACHE.get(key, 0) + 1
    return {"pid": os.getpid(), "hits": CACHE[key]}


@zbridge.tool
def span(seconds: float, nonce=None) -> dict:
    start = time.time()
    time.sleep(seconds)
    return {"pid": os.getpid(), "start": start, "end": time.time(), "nonce": nonce}


@zbridge.tool
def pid() -> int:
    return os.getpid()


@zbridge.tool
def boom(message: str = "boom") -> None:
    raise ValueError(message)


@zbridge.tool
def chatty(text: str = "hello") -> str:
    print("tool says", text)                       # Python-level stdout
    os.write(1, b"raw fd 1 write from the tool\n")  # C-level stdout
    print("to stderr", file=sys.stderr)
    return text


@zbridge.tool
def big(size: int) -> str:
    return "x" * size


@zbridge.tool
def unencodable() -> object:
    return object()


@zbridge.tool
def exit_hard(code: int = 7) -> None:
    os._exit(code)


@zbridge.tool(name="renamed")
def _hidden_name() -> str:
    return "renamed ok"


@zbridge.tool
def die_once(marker: str) -> str:
    """Dies the first time (no marker yet), succeeds after: for idempotent retries."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(9)
    return "survived"


@zbridge.tool
def record(path: str, nonce: str, delay: float = 0.0) -> str:
    """Appends the nonce to a file: lets tests count how often a call really ran."""
    time.sleep(delay)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (nonce + "\n").encode())  # one small O_APPEND write: never torn
    finally:
        os.close(fd)
    return nonce


@zbridge.tool
def inner_type_error(x=None) -> None:
    """A TypeError raised inside the tool is the tool's error, not bad params."""
    return len(5)


@zbridge.tool
def spin(seconds: float = 3600.0) -> None:
    """A busy loop that never sleeps: only a kill stops it."""
    end = time.time() + seconds
    while time.time() < end:
        pass


BALLAST: list = []


@zbridge.tool
def grow(megabytes: int) -> int:
    """Keeps memory alive in the daemon, to trip max_rss_mb."""
    BALLAST.append(bytearray(megabytes * 1024 * 1024))
    return os.getpid()


@zbridge.tool
def interruptible(seconds: float, marker: str) -> str:
    """Sleeps; if cancelled, cleans up (writes the marker) and lets the interrupt go.
    MARKER.started says it began."""
    with open(marker + ".started", "w") as f:
        f.write(str(os.getpid()))
    try:
        time.sleep(seconds)
    except zbridge.Interrupted:
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        raise
    return "finished"


@zbridge.tool
def count(n: int, fail_after: int = -1, log: str = ""):
    """Yields 0..n-1, optionally failing after some items; logs when each item was made."""
    stamps = open(log, "a") if log else None
    try:
        for i in range(n):
            if i == fail_after:
                raise RuntimeError(f"failed after {i} items")
            if stamps:
                stamps.write(f"{i} {time.time()}\n")
                stamps.flush()
            yield i
    finally:
        if stamps:
            stamps.close()


@zbridge.tool
async def acount(n: int):
    for i in range(n):
        yield {"i": i}


@zbridge.tool
def int_keys() -> dict:
    """A result whose map keys are not strings: replies may carry any key type."""
    return {1: "one", 2: [3]}
