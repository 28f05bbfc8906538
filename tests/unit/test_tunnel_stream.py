"""A tunnel stream on its own, against a fake owner: its queue, its flags, its credit."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from attrs import define, field
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

import gateway.tunnel.stream
from gateway.tunnel.owner import StreamOwner
from gateway.tunnel.stream import (
    HIGH_WATER,
    LOW_WATER,
    STREAM_CREDIT_BATCH,
    StreamRequest,
    TunnelStream,
)
from gateway.wire import Refusal
from tests.helpers.tunnel import Recorder


@define
class FakeOwner:
    """Records what a stream asks of its connection."""

    transport: Any = None
    clock: Clock = field(factory=Clock)
    credit_batch: int = STREAM_CREDIT_BATCH
    high_water: int = HIGH_WATER
    scheduled: int = 0
    credits: list[int] = field(factory=list)
    responses: list[tuple[int, bool]] = field(factory=list)
    resets: list[int] = field(factory=list)
    finished: list[int] = field(factory=list)
    owing: list[int] = field(factory=list)

    def send_response(
        self, stream: TunnelStream, status: int, headers: list[tuple[bytes, bytes]], end: bool
    ) -> None:
        self.responses.append((status, end))

    def schedule(self, stream: TunnelStream) -> None:
        self.scheduled += 1

    def reset_stream(self, stream: TunnelStream, code: int) -> None:
        self.resets.append(code)

    def credit_stream(self, stream: TunnelStream, amount: int) -> None:
        self.credits.append(amount)

    def owe_credit(self, stream: TunnelStream) -> None:
        self.owing.append(stream.stream_id)

    def stream_finished(self, stream: TunnelStream) -> None:
        self.finished.append(stream.stream_id)

    def path_rtt(self) -> float:
        return 0.05


@implementer(IPushProducer)
class FakeProducer:
    paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


REQUEST = StreamRequest(method="CONNECT", authority="web", path="", headers={})


def opened(owner: StreamOwner[TunnelStream] | None = None, end: bool = False) -> TunnelStream:
    return TunnelStream.opened(owner or FakeOwner(), 1, end=end)


class QueueTests(SynchronousTestCase):
    def test_write_queues_and_schedules(self) -> None:
        owner = FakeOwner()
        stream = opened(owner)
        stream.write(b"abc")
        stream.write(b"")
        stream.write(b"de")
        self.assertEqual((stream.queued, stream.bytes_sent, owner.scheduled), (5, 5, 2))

    def test_taking_exactly_the_first_piece_does_not_copy_it(self) -> None:
        stream = opened()
        piece = b"p" * 1000
        stream.write(piece)
        stream.write(b"next")
        self.assertIs(stream.take(1000), piece)
        self.assertEqual(stream.queued, 4)

    def test_take_joins_and_splits_pieces_in_order(self) -> None:
        stream = opened()
        for piece in (b"ab", b"cde", b"fghij"):
            stream.write(piece)
        self.assertEqual(stream.take(4), b"abcd")
        self.assertEqual(stream.queued, 6)
        self.assertEqual(stream.take(2), b"ef")
        self.assertEqual(stream.take(4), b"ghij")
        self.assertEqual(stream.queued, 0)

    def test_a_full_queue_pauses_the_producer_until_drained_below_low_water(self) -> None:
        stream = opened()
        producer = FakeProducer()
        stream.registerProducer(producer, True)
        stream.write(b"q" * (HIGH_WATER - 1))
        self.assertFalse(producer.paused)
        stream.write(b"q")
        self.assertTrue(producer.paused)
        stream.take(HIGH_WATER - LOW_WATER + 1)  # the scheduler sent a frame, and below
        stream.drained_below_low_water()  # LOW_WATER it tells the stream
        self.assertFalse(producer.paused)

    def test_a_producer_registered_on_a_full_queue_starts_paused(self) -> None:
        stream = opened()
        stream.write(b"q" * HIGH_WATER)
        producer = FakeProducer()
        stream.registerProducer(producer, True)
        self.assertTrue(producer.paused)

    def test_a_refused_stream_drops_its_queue_and_ends(self) -> None:
        owner = FakeOwner()
        stream = TunnelStream.requested(owner, 3, REQUEST, ended=False)
        stream.write(b"never sent")
        stream.refuse(Refusal.TARGET_NOT_ALLOWED, "no")
        self.assertEqual(stream.queued, 0)
        self.assertEqual(owner.responses, [(403, True)])
        self.assertEqual(owner.finished, [3])


class OpeningTests(SynchronousTestCase):
    def test_a_stream_opened_with_end_sends_nothing_more(self) -> None:
        owner = FakeOwner()
        stream = opened(owner, end=True)
        self.assertTrue(stream.headers_sent)
        self.assertTrue(stream.local_closed and stream.end_requested)
        stream.write(b"late")
        self.assertEqual((stream.queued, owner.scheduled), (0, 0))

    def test_a_stream_opened_without_end_waits_for_its_writes(self) -> None:
        stream = opened()
        self.assertTrue(stream.headers_sent)
        self.assertFalse(stream.local_closed or stream.end_requested)

    def test_a_request_that_ended_delivers_the_half_close_on_attach(self) -> None:
        owner = FakeOwner()
        stream = TunnelStream.requested(owner, 3, REQUEST, ended=True)
        self.assertFalse(stream.headers_sent)
        stream.accept()
        recorder = Recorder()
        stream.attach(recorder)
        self.assertTrue(recorder.read_closed)
        self.assertEqual(owner.responses, [(200, False)])

    def test_the_transport_face_without_a_connection_transport(self) -> None:
        stream = opened()
        self.assertIsNone(stream.getPeer())
        self.assertIsNone(stream.getHost())


class CreditTests(SynchronousTestCase):
    def test_credit_goes_back_in_batches(self) -> None:
        owner = FakeOwner()
        stream = opened(owner)
        stream.attach(Recorder())
        chunk = STREAM_CREDIT_BATCH // 3 + 1
        for _ in range(5):
            stream.data_received(b"d", chunk)
        self.assertEqual(owner.credits, [3 * chunk])

    def test_a_paused_consumer_withholds_credit_until_it_resumes(self) -> None:
        owner = FakeOwner()
        stream = opened(owner)
        stream.attach(Recorder())
        stream.pauseProducing()
        stream.data_received(b"d", STREAM_CREDIT_BATCH)
        self.assertEqual(owner.credits, [])
        stream.resumeProducing()
        self.assertEqual(owner.credits, [STREAM_CREDIT_BATCH])

    def test_data_before_attach_is_credited_when_delivered(self) -> None:
        owner = FakeOwner()
        stream = TunnelStream.requested(owner, 3, REQUEST, ended=False)
        stream.data_received(b"early", STREAM_CREDIT_BATCH)
        self.assertEqual(owner.credits, [])
        recorder = Recorder()
        stream.attach(recorder)
        self.assertEqual((recorder.received, owner.credits), (b"early", [STREAM_CREDIT_BATCH]))

    def test_credit_below_a_batch_is_owed_to_the_connection_once(self) -> None:
        owner = FakeOwner()
        stream = opened(owner)
        stream.attach(Recorder())
        stream.data_received(b"abc", 3)
        stream.data_received(b"de", 2)
        self.assertEqual((owner.credits, owner.owing), ([], [1]))
        stream.credit_owed()  # the connection's idle credit timer
        self.assertEqual(owner.credits, [5])
        stream.credit_owed()
        self.assertEqual(owner.credits, [5])


class DeliveryTests(SynchronousTestCase):
    """What a stream knows of its bytes' fate, and the relay's end-to-end credit."""

    def test_delivered_is_what_the_other_end_acknowledged_never_more_than_sent(self) -> None:
        owner = FakeOwner()
        stream = opened(owner)
        stream.write(b"x" * 100)
        self.assertEqual(stream.delivered, 0)
        stream.take(60)
        stream.window_updated(40)
        self.assertEqual(stream.delivered, 40)
        stream.window_updated(1000)  # credit ahead of the data: capped at what was framed
        self.assertEqual(stream.delivered, 60)

    def test_a_stream_that_ended_cleanly_delivered_everything(self) -> None:
        owner = FakeOwner()
        stream = TunnelStream.requested(owner, 1, REQUEST, ended=False)
        stream.attach(Recorder())
        stream.write(b"x" * 10)
        stream.take(10)
        stream.loseWriteConnection()
        stream.sent_everything()
        self.assertEqual(stream.delivered, 0)
        stream.ended_by_peer()
        self.assertEqual(stream.delivered, 10)

    def test_a_reset_stream_counts_only_acknowledged_bytes(self) -> None:
        owner = FakeOwner()
        stream = TunnelStream.requested(owner, 1, REQUEST, ended=False)
        stream.attach(Recorder())
        stream.write(b"x" * 10)
        stream.take(10)
        stream.window_updated(4)
        stream.loseWriteConnection()
        stream.sent_everything()
        stream.reset_by_peer(8)
        self.assertEqual(stream.delivered, 4)

    def test_the_relay_credits_the_gateway_as_the_engineer_acknowledges(self) -> None:
        from_gateway, to_engineer = FakeOwner(), FakeOwner()
        gateway_side = TunnelStream.requested(from_gateway, 1, REQUEST, ended=False)
        engineer_side = opened(to_engineer)
        gateway_side.credit_as_delivered_by(engineer_side)
        gateway_side.attach(Recorder())
        gateway_side.data_received(b"d" * STREAM_CREDIT_BATCH, STREAM_CREDIT_BATCH)
        # Taken by the relay, not yet by the engineer: the gateway gets nothing back.
        self.assertEqual((from_gateway.credits, from_gateway.owing), ([], []))
        engineer_side.window_updated(STREAM_CREDIT_BATCH)
        self.assertEqual(from_gateway.credits, [STREAM_CREDIT_BATCH])

    def test_padding_is_credited_at_once_on_the_relay(self) -> None:
        owner = FakeOwner()
        gateway_side = TunnelStream.requested(owner, 1, REQUEST, ended=False)
        gateway_side.credit_as_delivered_by(opened(FakeOwner()))
        gateway_side.attach(Recorder())
        gateway_side.data_received(b"abc", 3 + 10)
        self.assertEqual(owner.owing, [1])
        gateway_side.credit_owed()
        self.assertEqual(owner.credits, [10])


class ModuleTests(SynchronousTestCase):
    def test_the_stream_module_does_not_import_the_connection(self) -> None:
        source = Path(gateway.tunnel.stream.__file__).read_text("utf-8")
        imported = {
            node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)
        } | {
            alias.name
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        self.assertNotIn("gateway.tunnel.connection", imported)
        self.assertIn("gateway.tunnel.owner", imported)
