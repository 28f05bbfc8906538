"""The write batch: tunnels written to while input is handled are flushed once it is done."""

from __future__ import annotations

from attrs import define, field
from twisted.trial.unittest import SynchronousTestCase

from gateway.tunnel.batch import WriteBatch


@define
class FakeTunnel:
    batch: WriteBatch
    flushes: list[bool] = field(factory=list)  # whether the batch was active at each flush

    def flush_batched(self) -> None:
        self.flushes.append(self.batch.active)


class WriteBatchTests(SynchronousTestCase):
    def test_active_only_while_input_is_handled_even_when_nested(self) -> None:
        batch = WriteBatch()
        self.assertFalse(batch.active)
        batch.begin()
        batch.begin()  # one tunnel's input made another's arrive (the relay forwarding)
        batch.end()
        self.assertTrue(batch.active)
        batch.end()
        self.assertFalse(batch.active)

    def test_tunnels_are_flushed_once_the_outermost_input_is_done(self) -> None:
        batch = WriteBatch()
        tunnel = FakeTunnel(batch)
        batch.begin()
        batch.begin()
        batch.add(tunnel)
        batch.end()
        self.assertEqual(tunnel.flushes, [])
        batch.end()
        self.assertEqual(tunnel.flushes, [False])  # a flush writes straight out, not batched
