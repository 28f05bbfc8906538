# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""Tests for the reconnect delays (`gateway.net.backoff.full_jitter`).

After a relay restart every gateway reconnects: the delays must grow, stay under the cap, never
crash after a very long outage, and be spread out so the relay is not hit all at once.
"""

from __future__ import annotations

import math
import sys
from random import Random

from twisted.trial.unittest import SynchronousTestCase

from gateway.net.backoff import full_jitter


class RecordingRandom(Random):
    """Answers ``uniform(a, b)`` with ``b`` and remembers the bounds it was asked for."""

    def __init__(self) -> None:
        super().__init__(0)
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return b


def ceiling(attempt: int, base: float, cap: float) -> float:
    """``min(cap, base * 2**attempt)`` without computing a huge power."""
    return cap if attempt >= 64 else min(cap, base * 2**attempt)


class FullJitterTests(SynchronousTestCase):
    def test_delays_lie_between_zero_and_the_exponential_ceiling(self) -> None:
        delay = full_jitter(Random(1), base=0.5, cap=30)
        for attempt in range(40):
            top = ceiling(attempt, 0.5, 30)
            for _ in range(100):
                self.assertTrue(0 <= delay(attempt) <= top, (attempt, top))

    def test_each_delay_is_drawn_from_zero_to_min_of_cap_and_base_times_two_to_the_attempt(
        self,
    ) -> None:
        rng = RecordingRandom()
        delay = full_jitter(rng, base=1.0, cap=60.0)
        self.assertEqual([delay(n) for n in range(8)], [1, 2, 4, 8, 16, 32, 60, 60])
        self.assertEqual(rng.bounds, [(0, b) for b in (1, 2, 4, 8, 16, 32, 60, 60)])

    def test_the_ceiling_grows_with_each_failed_attempt(self) -> None:
        delay = full_jitter(RecordingRandom(), base=0.25, cap=1000)
        self.assertEqual([delay(n) for n in range(5)], [0.25, 0.5, 1, 2, 4])

    def test_delays_never_exceed_the_cap(self) -> None:
        delay = full_jitter(Random(2), base=1, cap=5)
        self.assertLessEqual(max(delay(n) for n in range(200) for _ in range(20)), 5)
        self.assertEqual(full_jitter(RecordingRandom(), base=1, cap=5)(3), 5)

    def test_defaults_are_one_second_doubling_up_to_a_minute(self) -> None:
        delay = full_jitter(RecordingRandom())
        self.assertEqual(delay(0), 1.0)
        self.assertEqual(delay(10), 60.0)

    def test_huge_attempt_numbers_do_not_overflow(self) -> None:
        delay = full_jitter(Random(3), base=1, cap=60)
        for attempt in (1024, 1100, 10**6, sys.maxsize):
            value = delay(attempt)
            self.assertTrue(math.isfinite(value))
            self.assertTrue(0 <= value <= 60)
        self.assertEqual(full_jitter(RecordingRandom(), cap=60)(10**9), 60)

    def test_same_seed_gives_the_same_delays(self) -> None:
        first = full_jitter(Random(42))
        second = full_jitter(Random(42))
        self.assertEqual([first(n) for n in range(20)], [second(n) for n in range(20)])

    def test_different_seeds_give_different_delays(self) -> None:
        first = full_jitter(Random(1))
        second = full_jitter(Random(2))
        self.assertNotEqual([first(8) for _ in range(5)], [second(8) for _ in range(5)])

    def test_delays_for_one_attempt_are_spread_over_the_whole_range(self) -> None:
        delay = full_jitter(Random(7), base=1, cap=60)
        samples = [delay(10) for _ in range(1000)]
        self.assertGreater(len(set(samples)), 990)
        self.assertLess(min(samples), 6)  # some reconnect almost at once
        self.assertGreater(max(samples), 54)  # some wait almost the whole cap
        self.assertTrue(20 < sum(samples) / len(samples) < 40)


class BackoffPolicyTests(SynchronousTestCase):
    def test_failed_handshakes_keep_growing_the_delay_until_the_tunnel_is_up(self) -> None:
        from gateway.net.backoff import Backoff

        policy = Backoff(Random(7), base=1.0, cap=60.0)
        # ClientService says "attempt 1" every time (TCP connected, then TLS failed).
        ceilings = []
        for _ in range(8):
            policy(1)
            ceilings.append(min(60.0, 2.0**policy.failures))
        self.assertEqual(policy.failures, 8)
        self.assertEqual(ceilings[-1], 60.0)
        policy.succeeded()
        self.assertEqual(policy.failures, 0)
        self.assertLessEqual(policy(1), 2.0)
