"""The daemon's heartbeat thread: proves the process is alive even mid-call, and notices
when the hub has gone silent.

It owns its own DEALER on the hub's heartbeat socket. Every interval it sends what the
daemon is doing. What silence (interval x misses without a word from the hub) means is not
decided here: a daemon spawned by a local hub ignores it (its lifeline is authoritative, and
an embedding program may hold the GIL for seconds), one on another host reconnects, and one
run with --exit-on-hub-loss exits. This thread only reports it, once, and stops.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import zmq

from zbridge.errors import BridgeError
from zbridge.protocol import Kind, encode_heartbeat, read_header

from .activity import Activity


def start_heartbeat(sock: zmq.Socket[Any], endpoint: str, activity: Activity, interval: float,
                    misses: int, on_silence: Callable[[str], None] | None,
                    on_heard: Callable[[], None] | None = None, patience: float = 0.0) -> threading.Thread:
    """Run the heartbeat on ``sock`` (a DEALER handed over to the new thread).

    ``on_silence`` (None: silence means nothing) is called once when the hub has been
    silent for interval x misses (plus ``patience`` before its first word), and the
    thread ends; ``on_heard`` at each hub message.
    """
    def run() -> None:
        sock.connect(endpoint)
        last_heard = time.monotonic() + patience
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
                if sock.poll(int(max(0.0, next_beat - now) * 1000)):
                    _on_hub_message(sock.recv(), activity)
                    last_heard = time.monotonic()
                    if on_heard is not None:
                        on_heard()
                silent = time.monotonic() - last_heard
                if on_silence is not None and silent > interval * misses:
                    on_silence(f"no heartbeat from the hub for {silent:.1f}s")
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
