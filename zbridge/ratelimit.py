"""How often one kind of log line may be written: at most ``burst`` per key per ``window``
seconds, the rest counted and reported with the next line that goes out. Pure: the caller
passes the clock, so a failing tool cannot flood a log and a test needs no sleeping."""

from __future__ import annotations

from collections import OrderedDict


class RateLimit:
    def __init__(self, burst: int = 5, window: float = 60.0, max_keys: int = 256) -> None:
        self.burst, self.window, self.max_keys = burst, window, max_keys
        # key -> [window start, lines written in it, lines suppressed since the last written]
        self._keys: OrderedDict[str, list[float]] = OrderedDict()

    def allow(self, key: str, now: float) -> int | None:
        """None when this line must be dropped; else how many were dropped before it."""
        entry = self._keys.get(key)
        if entry is None:
            if len(self._keys) >= self.max_keys:
                self._keys.popitem(last=False)  # forget the key heard from longest ago
            entry = self._keys[key] = [now, 0, 0]
        self._keys.move_to_end(key)
        if now - entry[0] >= self.window:
            entry[0], entry[1] = now, 0
        if entry[1] >= self.burst:
            entry[2] += 1
            return None
        entry[1] += 1
        suppressed, entry[2] = int(entry[2]), 0
        return suppressed
