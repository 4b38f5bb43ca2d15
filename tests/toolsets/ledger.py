"""A tool for tests/test_netns.py: its side effect comes first, so a call cut off by the
network has already run, and running it twice would show in the ledger."""

import os
import time

import zbridge


@zbridge.tool
def append(path: str, nonce: str, seconds: float = 0.0) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (nonce + "\n").encode())  # one small O_APPEND write: never torn
    finally:
        os.close(fd)
    time.sleep(seconds)
    return os.getpid()
