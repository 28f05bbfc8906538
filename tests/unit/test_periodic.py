"""The relay's watches share one periodic loop (gateway.periodic)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.periodic import PeriodicService


class Counting(PeriodicService):
    name = "counting"

    def __init__(self, clock: Clock, *, fail_at: int | None = None) -> None:
        self.clock, self.interval, self.rounds, self.fail_at = clock, 0.5, 0, fail_at

    def check(self) -> None:
        self.rounds += 1
        if self.rounds == self.fail_at:
            raise RuntimeError("broken")


class PeriodicServiceTests(SynchronousTestCase):
    def test_rounds_start_one_interval_after_start_and_stop_with_the_service(self) -> None:
        clock = Clock()
        watch = Counting(clock)
        watch.startService()
        self.assertEqual(watch.rounds, 0)
        clock.advance(0.5)
        clock.advance(0.5)
        self.assertEqual(watch.rounds, 2)
        self.successResultOf(watch.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(5)
        self.assertEqual(watch.rounds, 2)

    def test_a_check_that_raises_is_logged_not_lost(self) -> None:
        clock = Clock()
        watch = Counting(clock, fail_at=1)
        with capturedLogs() as events:
            watch.startService()
            clock.advance(0.5)
        lines = [formatEvent(e) for e in events]
        self.assertIn("counting: its periodic check failed and stopped", lines)
        self.flushLoggedErrors(RuntimeError)
        self.successResultOf(watch.stopService())
