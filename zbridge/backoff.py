"""Restart delays: capped exponential backoff with jitter. Pure."""

from __future__ import annotations

import random


def restart_delay(failures: int, base: float, cap: float, jitter: float = 0.5,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before the next start after ``failures`` consecutive failures.

    0 failures -> 0. Otherwise ``min(cap, base * 2**(failures-1))`` scaled by a random
    factor in ``[1 - jitter/2, 1 + jitter/2]`` (jitter spreads restarts of many daemons),
    never above ``cap``.
    """
    if failures <= 0:
        return 0.0
    raw = min(cap, base * (2 ** min(failures - 1, 62)))
    factor = 1.0 + jitter * ((rng or random).random() - 0.5)
    return float(min(cap, raw * factor))
