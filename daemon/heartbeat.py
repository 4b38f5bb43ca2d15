"""The daemon's heartbeat thread: proves the process is alive even mid-call, and notices
when the hub is gone.

It owns its own DEALER on the hub's heartbeat socket. Every interval it sends what the
daemon is doing; if the hub has been silent for interval x misses, the hub is gone and the
daemon exits (this is how daemons on other hosts avoid becoming orphans).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import zmq

from zbridge.errors import BridgeError
from zbridge.protocol import Kind, encode_heartbeat, read_header

from .activity import Activity


def start_heartbeat(sock: zmq.Socket, endpoint: str, activity: Activity, interval: float,
                    misses: int, on_hub_lost: Callable[[str], None]) -> threading.Thread:
    """Run the heartbeat on ``sock`` (a DEALER handed over to the new thread)."""
    def run() -> None:
        sock.connect(endpoint)
        last_heard = time.monotonic()
        next_beat = 0.0
        try:
            while True:
                now = time.monotonic()
                if now >= next_beat:
                    try:
                        sock.send(encode_heartbeat(activity.snapshot()), zmq.NOBLOCK)
                    except zmq.Again:
                        pass  # not connected (yet): silence is what the hub judges
                    next_beat = now + interval
                if sock.poll(max(0.0, next_beat - now) * 1000):
                    _on_hub_message(sock.recv(), activity)
                    last_heard = time.monotonic()
                silent = time.monotonic() - last_heard
                if silent > interval * misses:
                    on_hub_lost(f"no heartbeat from the hub for {silent:.1f}s")
                    return
        except zmq.ZMQError:
            return  # context terminated: the daemon is shutting down
        finally:
            sock.close(0)

    thread = threading.Thread(target=run, name="zbridge-heartbeat", daemon=True)
    thread.start()
    return thread


def _on_hub_message(frame: bytes, activity: Activity) -> None:
    """Any message proves the hub is alive; a CANCEL also interrupts the call it names."""
    try:
        header = read_header(frame)
    except BridgeError:
        return
    if header.kind is Kind.CANCEL:
        activity.request_cancel(header.id)
