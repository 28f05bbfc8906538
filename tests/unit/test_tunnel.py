"""The tunnel's HTTP/2 stream lifecycle, flow control, fairness, heartbeats and drain."""

from __future__ import annotations

import h2.events
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.net.queues import FASTEST, FRAME_FLOOR, QueueSizer, sizes_for
from gateway.tunnel.connection import TunnelConnection
from gateway.tunnel.errors import StreamReset, TunnelClosed
from gateway.tunnel.h2tuning import START_STREAM_WINDOW as STREAM_WINDOW
from gateway.tunnel.h2tuning import h2_configuration
from gateway.tunnel.stream import TunnelStream
from gateway.wire import Refusal, StreamRefused
from tests.helpers.tunnel import AcceptAll, Recorder, linked_tunnels


@implementer(IPushProducer)
class FakeProducer:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class StreamLifecycleTests(SynchronousTestCase):
    def test_connect_stream_carries_bytes_both_ways(self) -> None:
        t = linked_tunnels()
        stream = t.client.open_stream("web")
        mine = Recorder()
        stream.attach(mine)
        stream.write(b"GET / HTTP/1.1\r\n\r\n")
        t.settle()
        self.assertEqual(len(t.handler.streams), 1)
        answered = t.handler.streams[0]
        self.assertEqual(answered.request.authority, "web")
        self.assertEqual(answered.request.method, "CONNECT")
        self.assertEqual(t.handler.recorders[0].received, b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(self.successResultOf(stream.response).status, 200)
        answered.write(b"HTTP/1.1 200 OK\r\n\r\nhello")
        t.settle()
        self.assertEqual(mine.received, b"HTTP/1.1 200 OK\r\n\r\nhello")
        t.close()

    def test_half_close_travels_and_both_closes_end_the_stream(self) -> None:
        t = linked_tunnels()
        stream = t.client.open_stream("web")
        mine = Recorder()
        stream.attach(mine)
        stream.write(b"request")
        stream.loseWriteConnection()
        t.settle()
        theirs = t.handler.recorders[0]
        self.assertTrue(theirs.read_closed)
        self.assertIsNone(theirs.lost)
        # The answering side still sends after the opener half-closed.
        answered = t.handler.streams[0]
        answered.write(b"response")
        answered.loseConnection()
        t.settle()
        self.assertEqual(mine.received, b"response")
        self.assertTrue(mine.read_closed)
        mine_lost = mine.lost
        assert mine_lost is not None and theirs.lost is not None
        self.assertTrue(mine_lost.check(ConnectionDone))
        self.assertTrue(theirs.lost.check(ConnectionDone))
        self.assertEqual(t.client.streams, {})
        self.assertEqual(t.server.streams, {})
        t.close()

    def test_reset_ends_only_that_stream(self) -> None:
        t = linked_tunnels()
        first, second = t.client.open_stream("web"), t.client.open_stream("web")
        first_rec, second_rec = Recorder(), Recorder()
        first.attach(first_rec)
        second.attach(second_rec)
        t.settle()
        t.handler.streams[0].reset(ErrorCodes.CONNECT_ERROR)
        t.settle()
        lost = first_rec.lost
        assert lost is not None
        self.assertTrue(lost.check(StreamReset))
        self.assertIn("CONNECT_ERROR", str(lost.value))
        t.handler.streams[1].write(b"still here")
        t.settle()
        self.assertEqual(second_rec.received, b"still here")
        self.assertIsNone(second_rec.lost)
        t.close()

    def test_refusal_carries_status_token_and_reason(self) -> None:
        handler = AcceptAll(accept=False)
        t = linked_tunnels(handler)
        stream = t.client.open_stream("plc")
        stream.attach(Recorder())
        t.settle()
        handler.streams[0].refuse(Refusal.TARGET_NOT_ALLOWED, "target 'plc' is not allowed")
        t.settle()
        refused = self.failureResultOf(stream.response, StreamRefused).value
        assert isinstance(refused, StreamRefused)
        self.assertEqual(
            (refused.status, refused.token, refused.reason),
            (403, "target-not-allowed", "target 'plc' is not allowed"),
        )
        self.assertEqual(t.client.streams, {})
        t.close()

    def test_data_sent_before_the_answer_is_delivered_after_accept(self) -> None:
        """The engineer's first bytes travel right behind the request (saves a round trip)."""

        class LateAccept(AcceptAll):
            def stream_requested(self, stream: TunnelStream) -> None:
                self.streams.append(stream)

        handler = LateAccept()
        t = linked_tunnels(handler)
        stream = t.client.open_stream("web")
        stream.attach(Recorder())
        stream.write(b"early bytes")
        t.settle()
        answered = handler.streams[0]
        answered.accept()
        late = Recorder()
        answered.attach(late)
        t.settle()
        self.assertEqual(late.received, b"early bytes")
        t.close()

    def test_tunnel_loss_ends_every_stream(self) -> None:
        t = linked_tunnels()
        stream = t.client.open_stream("web")
        rec = Recorder()
        stream.attach(rec)
        t.settle()
        t.client_io.abortConnection()
        t.settle()
        assert rec.lost is not None
        self.assertFalse(rec.lost.check(ConnectionDone))
        self.assertTrue(t.client.closed)
        self.assertEqual(t.clock.getDelayedCalls(), [])

    def test_no_new_streams_on_a_closed_tunnel(self) -> None:
        t = linked_tunnels()
        t.close()
        self.assertRaises(TunnelClosed, t.client.open_stream, "web")


class ErrorContainmentTests(SynchronousTestCase):
    def test_malformed_frames_close_only_that_connection(self) -> None:
        clock = Clock()
        server = TunnelConnection(client_side=False, clock=clock, handler=AcceptAll())
        transport = StringTransport()
        server.makeConnection(transport)
        # A SETTINGS frame whose length is not a multiple of 6: a connection error.
        bad_settings = b"\x00\x00\x04\x04\x00\x00\x00\x00\x00" + b"\x00" * 4
        server.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bad_settings)
        clock.advance(0)
        self.assertTrue(transport.disconnecting)
        server.connectionLost(ConnectionDone())  # type: ignore[arg-type]
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_data_on_a_reset_stream_still_credits_the_connection_window(self) -> None:
        """Regression (old h2 bug): DATA after our RST_STREAM must not starve the connection."""
        t = linked_tunnels()
        stream = t.client.open_stream("web")
        stream.attach(Recorder())
        t.settle()
        answered = t.handler.streams[0]
        before = t.client.h2.outbound_flow_control_window
        # The answering side resets; the opener keeps sending in flight before it hears.
        t.server.h2.reset_stream(answered.stream_id, ErrorCodes.CANCEL)
        for _ in range(4):  # a whole stream window
            t.client.h2.send_data(stream.stream_id, b"x" * (STREAM_WINDOW // 4))
        t.client_io.write(t.client.h2.data_to_send())
        t.settle()
        # Another stream can still move a large amount afterwards.
        other = t.client.open_stream("web")
        other.attach(Recorder())
        other.write(b"y" * (3 * STREAM_WINDOW // 2))
        t.settle()
        self.assertEqual(len(t.handler.recorders[-1].received), 3 * STREAM_WINDOW // 2)
        self.assertGreater(before, 0)
        t.close()

    def test_a_connection_that_never_speaks_http2_is_dropped(self) -> None:
        clock = Clock()
        conn = TunnelConnection(client_side=False, clock=clock, ready_timeout=20)
        transport = StringTransport()
        conn.makeConnection(transport)
        conn.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM")  # half a preface, then silence
        clock.advance(19.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        conn.connectionLost(ConnectionDone())  # type: ignore[arg-type]
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_frame_declared_too_large_is_refused_before_it_is_buffered(self) -> None:
        clock = Clock()
        conn = TunnelConnection(client_side=False, clock=clock)
        transport = StringTransport()
        conn.makeConnection(transport)
        settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        huge_data_header = (16 * 1024 * 1024 - 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
        conn.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings + huge_data_header + b"x")
        self.assertTrue(transport.disconnecting)
        conn.connectionLost(ConnectionDone())  # type: ignore[arg-type]

    def test_an_endless_header_block_is_refused(self) -> None:
        clock = Clock()
        conn = TunnelConnection(client_side=False, clock=clock, handler=AcceptAll())
        transport = StringTransport()
        conn.makeConnection(transport)
        settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        block = b"\x00" * 60_000
        headers = len(block).to_bytes(3, "big") + b"\x01\x00\x00\x00\x00\x01" + block
        continuation = len(block).to_bytes(3, "big") + b"\x09\x00\x00\x00\x00\x01" + block
        conn.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings + headers)
        self.assertFalse(transport.disconnecting)
        conn.dataReceived(continuation)
        self.assertTrue(transport.disconnecting)
        conn.connectionLost(ConnectionDone())  # type: ignore[arg-type]

    def test_data_frame_repr_does_not_serialize_the_body(self) -> None:
        frame = DataFrame(1)
        frame.data = b"z" * (1 << 20)
        self.assertLess(len(repr(frame)), 200)


class FlowControlTests(SynchronousTestCase):
    def test_paused_consumer_stops_the_sender_after_one_window(self) -> None:
        t = linked_tunnels()
        stream = t.client.open_stream("web")
        stream.attach(Recorder())
        t.settle()
        answered = t.handler.streams[0]
        answered.pauseProducing()  # e.g. the processor's socket buffer is full
        producer = FakeProducer()
        stream.registerProducer(producer, True)
        total = 3 * STREAM_WINDOW
        chunk = b"d" * (1 << 20)
        for _ in range(total // len(chunk)):
            stream.write(chunk)
        t.settle()
        received = len(t.handler.recorders[0].received)
        # The receiver got exactly one window; the sender holds the rest and paused its source.
        self.assertEqual(received, STREAM_WINDOW)
        self.assertEqual(t.client.h2.local_flow_control_window(stream.stream_id), 0)
        self.assertTrue(producer.paused)
        answered.resumeProducing()
        t.settle()
        self.assertEqual(len(t.handler.recorders[0].received), total)
        self.assertFalse(producer.paused)
        t.close()

    def test_a_stalled_stream_does_not_hold_up_the_others(self) -> None:
        t = linked_tunnels()
        stalled = t.client.open_stream("web")
        stalled.attach(Recorder())
        t.settle()
        t.handler.streams[0].pauseProducing()
        for _ in range(2 * STREAM_WINDOW // (1 << 20)):
            stalled.write(b"s" * (1 << 20))
        t.settle()
        lively = t.client.open_stream("web")
        lively.attach(Recorder())
        payload = b"L" * (5 * 1024 * 1024)
        lively.write(payload)
        t.settle()
        self.assertEqual(t.handler.recorders[1].received, payload)
        t.close()

    def test_full_queue_pauses_the_producer_until_drained(self) -> None:
        t = linked_tunnels()
        stream = t.client.open_stream("web")
        stream.attach(Recorder())
        producer = FakeProducer()
        stream.registerProducer(producer, True)
        t.client.pauseProducing()  # the TLS transport is full: nothing leaves the queue
        stream.write(b"q" * t.client.high_water)
        t.settle()
        self.assertTrue(producer.paused)
        self.assertEqual(t.handler.recorders[0].received, b"")
        t.client.resumeProducing()
        t.settle()
        self.assertFalse(producer.paused)
        self.assertEqual(len(t.handler.recorders[0].received), t.client.high_water)
        t.close()

    def test_round_robin_sends_one_frame_per_stream_per_turn(self) -> None:
        t = linked_tunnels()
        streams = [t.client.open_stream("web") for _ in range(3)]
        for s in streams:
            s.attach(Recorder())
        t.settle()
        t.client.frame_limit = STREAM_WINDOW // 4  # several frames per stream window
        for s in streams:
            s.write(b"r" * (3 << 20))
        t.clock.advance(0)
        raw = t.client_io.getOutBuffer()
        order = []
        offset = 0
        while offset + 9 <= len(raw):
            length = int.from_bytes(raw[offset : offset + 3], "big")
            if raw[offset + 3] == 0:  # DATA
                order.append(int.from_bytes(raw[offset + 5 : offset + 9], "big") & 0x7FFFFFFF)
            offset += 9 + length
        ids = [s.stream_id for s in streams]
        self.assertEqual(order[:6], ids + ids)
        t.close()


class PathSizedFrameTests(SynchronousTestCase):
    """DATA frames follow the size the TLS layer's queue sizer picks for the path."""

    def test_frames_are_no_larger_than_the_frame_limit(self) -> None:
        t = linked_tunnels()
        stream = t.client.open_stream("web")
        stream.attach(Recorder())
        t.settle()
        t.client.frame_limit = 16 * 1024  # what a 10 Mbit/s uplink gets
        stream.write(b"d" * 100_000)
        t.settle()
        frames = [len(chunk) for chunk in t.handler.recorders[0].data]
        self.assertEqual(sum(frames), 100_000)
        self.assertLessEqual(max(frames), 16 * 1024)
        self.assertGreaterEqual(len(frames), 7)
        t.close()

    def test_the_connection_follows_the_sizer_of_the_transport_it_writes_to(self) -> None:
        class SizedTransport(StringTransport):
            def __init__(self) -> None:
                super().__init__()
                self.queue_sizer = QueueSizer(StringTransport(), Clock().seconds)

        transport = SizedTransport()
        connection = TunnelConnection(client_side=False, clock=Clock(), ready_timeout=None)
        connection.makeConnection(transport)
        self.assertEqual(connection.frame_limit, FASTEST.frame)
        transport.queue_sizer.resize(sizes_for(2e6 / 8))
        self.assertEqual(connection.frame_limit, FRAME_FLOOR)


class HeartbeatTests(SynchronousTestCase):
    def _ready(self, timeout: float = 5.0) -> tuple[Clock, TunnelConnection, StringTransport]:
        clock = Clock()
        conn = TunnelConnection(
            client_side=False, clock=clock, heartbeat_interval=10, heartbeat_timeout=timeout
        )
        transport = StringTransport()
        conn.makeConnection(transport)
        peer = H2Connection(h2_configuration(client_side=True))
        peer.initiate_connection()
        conn.dataReceived(peer.data_to_send())
        clock.advance(0)
        self.assertTrue(conn.is_ready)
        return clock, conn, transport

    def test_missed_ping_ack_drops_the_tunnel(self) -> None:
        clock, conn, transport = self._ready(timeout=5)
        clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        conn.connectionLost(ConnectionDone())  # type: ignore[arg-type]
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_frames_arriving_keep_a_slow_but_busy_peer_alive(self) -> None:
        """A PING stuck behind megabytes on a slow uplink must not kill a working tunnel."""
        clock, conn, transport = self._ready(timeout=5)
        peer = H2Connection(h2_configuration(client_side=True))
        peer.initiate_connection()
        peer.data_to_send()
        for _ in range(20):
            clock.advance(1)
            peer.ping(b"12345678")
            conn.dataReceived(peer.data_to_send())  # the peer keeps talking, never acks ours
        self.assertFalse(transport.disconnecting)
        clock.advance(5.1)  # then silence
        self.assertTrue(transport.disconnecting)
        conn.connectionLost(ConnectionDone())  # type: ignore[arg-type]

    def test_ping_ack_measures_the_round_trip_time(self) -> None:
        clock, conn, transport = self._ready()
        rtts: list[float] = []
        conn.heartbeat._on_rtt = rtts.append
        peer = H2Connection(h2_configuration(client_side=True))
        peer.initiate_connection()
        peer.data_to_send()
        events = peer.receive_data(transport.value())
        ping = next(e for e in events if isinstance(e, h2.events.PingReceived))
        clock.advance(0.25)
        conn.dataReceived(peer.data_to_send())  # h2 acks PINGs by itself
        clock.advance(0)
        self.assertEqual(rtts, [0.25])
        self.assertIsNotNone(ping)
        # The next PING is scheduled, the ack deadline cancelled: one delayed call remains.
        self.assertEqual(len([c for c in clock.getDelayedCalls() if c.active()]), 1)
        conn.connectionLost(ConnectionDone())  # type: ignore[arg-type]
        self.assertEqual(clock.getDelayedCalls(), [])


class DrainTests(SynchronousTestCase):
    def test_drain_refuses_new_streams_and_closes_when_open_ones_end(self) -> None:
        t = linked_tunnels()
        stream = t.client.open_stream("web")
        rec = Recorder()
        stream.attach(rec)
        t.settle()
        drained = t.server.drain(timeout=30)
        late = t.client.open_stream("web")
        late.attach(Recorder())
        t.settle()
        refused = self.failureResultOf(late.response, StreamRefused).value
        assert isinstance(refused, StreamRefused)
        self.assertEqual(refused.token, Refusal.SHUTTING_DOWN.token)
        self.assertNoResult(drained)
        # The open stream finishes normally...
        t.handler.streams[0].write(b"last words")
        t.handler.streams[0].loseConnection()
        stream.loseConnection()
        t.settle()
        self.assertEqual(rec.received, b"last words")
        # ...and then the tunnel closes by itself.
        self.successResultOf(drained)
        self.assertTrue(t.server.closed)

    def test_drain_gives_up_after_its_timeout(self) -> None:
        t = linked_tunnels()
        stream = t.client.open_stream("web")
        rec = Recorder()
        stream.attach(rec)
        t.settle()
        drained = t.server.drain(timeout=10)
        t.clock.advance(10)
        t.settle()
        self.successResultOf(drained)
        self.assertTrue(t.server.closed)
        assert rec.lost is not None


class H2TuningTests(SynchronousTestCase):
    def test_lean_setting_values_keep_h2_settings_semantics(self) -> None:
        """Settings changes are pending until acknowledged, then take effect (as with deques)."""
        from h2.settings import SettingCodes

        from gateway.tunnel.h2tuning import LeanSettings as Settings

        settings = Settings(client=True)
        settings[SettingCodes.INITIAL_WINDOW_SIZE] = 1 << 20
        self.assertEqual(settings[SettingCodes.INITIAL_WINDOW_SIZE], 65535)
        changes = settings.acknowledge()
        self.assertEqual(changes[SettingCodes.INITIAL_WINDOW_SIZE].new_value, 1 << 20)
        self.assertEqual(settings[SettingCodes.INITIAL_WINDOW_SIZE], 1 << 20)
        self.assertEqual(
            type(settings._settings[SettingCodes.INITIAL_WINDOW_SIZE]).__name__, "_SettingValues"
        )
