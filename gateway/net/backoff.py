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


class Backoff:
    """A ``ClientService`` retry policy that counts failures until the tunnel is really up.

    ``ClientService`` resets its own count as soon as TCP connects, so a relay that accepts TCP
    but fails every TLS handshake (wrong CA, expired certificate) would be redialled every second
    for ever.  This policy counts its own attempts and is reset only by ``succeeded()``, called
    when HTTP/2 is up.
    """

    def __init__(self, rng: Random, *, base: float = 1.0, cap: float = 60.0) -> None:
        self._rng, self._base, self.cap = rng, base, cap
        self._delay = full_jitter(rng, base=base, cap=cap)
        self.failures = 0

    def set_cap(self, cap: float) -> None:
        """A new longest delay (a reloaded ``reconnect_max_delay``), from the next retry on."""
        if cap != self.cap:
            self.cap = cap
            self._delay = full_jitter(self._rng, base=self._base, cap=cap)

    def __call__(self, _client_service_attempt: int) -> float:
        self.failures += 1
        return self._delay(self.failures)

    def succeeded(self) -> None:
        self.failures = 0
