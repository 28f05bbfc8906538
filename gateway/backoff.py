"""Reconnect delays with full jitter, so a restarted relay is not hit by every gateway at once."""

from __future__ import annotations

from collections.abc import Callable
from random import Random


def full_jitter(rng: Random, *, base: float = 1.0, cap: float = 60.0) -> Callable[[int], float]:
    """``attempt`` -> a delay drawn uniformly from ``[0, min(cap, base * 2**attempt)]``.

    The exponent is clamped: ``2 ** 1100`` overflows a float after a long outage.
    """

    def delay(attempt: int) -> float:
        return rng.uniform(0, min(cap, base * 2 ** min(attempt, 30)))

    return delay
