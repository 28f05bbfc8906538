"""Stream windows that grow with the path: the auto-tuning rule, on two joined connections.

The clock only moves when a test moves it, so "fast" is a path where credit comes back at once
and "slow" is one where the test spaces the bytes out in time.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.tunnel.h2tuning import MAX_STREAM_WINDOW, MIN_TUNING_RTT, START_STREAM_WINDOW
from gateway.tunnel.stream import HIGH_WATER, MIN_HIGH_WATER, TunnelStream, high_water_for
from tests.helpers.tunnel import Linked, Recorder, linked_tunnels

MiB = 1 << 20


def open_answered(t: Linked) -> tuple[TunnelStream, TunnelStream]:
    """A stream the client opened, and the server's side of it (accepted, recorded)."""
    stream = t.client.open_stream("web")
    stream.attach(Recorder())
    t.settle()
    return stream, t.handler.streams[-1]


def push(t: Linked, stream: TunnelStream, mib: int) -> None:
    """Write ``mib`` MiB on ``stream`` a MiB at a time, the clock standing still (a fast path)."""
    for _ in range(mib):
        stream.write(b"f" * MiB)
        t.settle()


class _OnwardConnection:
    def __init__(self, rtt: float) -> None:
        self.rtt = rtt

    def path_rtt(self) -> float:
        return self.rtt


class _Onward:
    """What the relay's engineer-side stream offers the rule: its connection's round trip."""

    def __init__(self, rtt: float) -> None:
        self.connection = _OnwardConnection(rtt)


class WindowGrowthTests(SynchronousTestCase):
    def test_a_fresh_tunnel_offers_the_start_window(self) -> None:
        t = linked_tunnels()
        self.assertEqual(t.client.h2.remote_settings.initial_window_size, START_STREAM_WINDOW)
        self.assertEqual(t.server.stream_window, START_STREAM_WINDOW)
        self.assertEqual(t.server.credit_batch, START_STREAM_WINDOW // 4)
        t.close()

    def test_a_window_limited_stream_grows_the_window_to_the_maximum(self) -> None:
        t = linked_tunnels()
        stream, _ = open_answered(t)
        push(t, stream, 16)
        self.assertEqual(len(t.handler.recorders[0].received), 16 * MiB)
        self.assertEqual(t.server.stream_window, MAX_STREAM_WINDOW)
        self.assertEqual(t.server.credit_batch, MAX_STREAM_WINDOW // 4)
        # The sender applies it: to this stream and to every stream opened from now on.
        self.assertEqual(t.client.h2.remote_settings.initial_window_size, MAX_STREAM_WINDOW)
        t.close()

    def test_a_path_limited_stream_keeps_the_start_window(self) -> None:
        t = linked_tunnels()
        stream, _ = open_answered(t)
        # 64 KiB every 10 ms: 6.4 MB/s, far below what a 1 MiB window allows in a 10 ms RTT.
        for _ in range(64):
            stream.write(b"s" * (64 * 1024))
            t.settle()
            t.clock.advance(0.010)
            t.settle()
        self.assertEqual(len(t.handler.recorders[0].received), 4 * MiB)
        self.assertEqual(t.server.stream_window, START_STREAM_WINDOW)
        self.assertEqual(t.client.h2.remote_settings.initial_window_size, START_STREAM_WINDOW)
        t.close()

    def test_the_rule_allows_four_round_trips_per_window(self) -> None:
        t = linked_tunnels()
        _, answered = open_answered(t)
        half = START_STREAM_WINDOW // 2
        # Half the window in just over 2 round trips (of the 10 ms floor): the path, not the
        # window, set the pace.
        answered.epoch_started = t.clock.seconds()
        t.clock.advance(2.1 * MIN_TUNING_RTT)
        t.server.credit_stream(answered, half)
        self.assertEqual(t.server.stream_window, START_STREAM_WINDOW)
        # Just under 2 round trips: the window did.
        t.clock.advance(1.9 * MIN_TUNING_RTT)
        t.server.credit_stream(answered, half)
        self.assertEqual(t.server.stream_window, 2 * START_STREAM_WINDOW)
        t.close()

    def test_a_relayed_stream_counts_both_hops_round_trips(self) -> None:
        t = linked_tunnels()
        _, answered = open_answered(t)
        half = START_STREAM_WINDOW // 2
        answered.epoch_started = t.clock.seconds()
        t.clock.advance(0.1)
        t.server.credit_stream(answered, half)
        self.assertEqual(t.server.stream_window, START_STREAM_WINDOW)
        # Credited as an engineer 100 ms away acknowledges: 100 ms for half a window is fast.
        answered.delivered_via = _Onward(0.1)  # type: ignore[assignment]
        t.clock.advance(0.1)
        t.server.credit_stream(answered, half)
        self.assertEqual(t.server.stream_window, 2 * START_STREAM_WINDOW)
        t.close()

    def test_the_window_grows_once_per_acknowledged_settings(self) -> None:
        t = linked_tunnels()
        _, answered = open_answered(t)
        half = START_STREAM_WINDOW // 2
        answered.epoch_started = t.clock.seconds()
        t.server.credit_stream(answered, half)
        t.server.credit_stream(answered, START_STREAM_WINDOW)  # before the peer acknowledged
        self.assertEqual(t.server.stream_window, 2 * START_STREAM_WINDOW)
        t.settle()  # the SETTINGS and its ACK cross
        t.server.credit_stream(answered, START_STREAM_WINDOW)
        self.assertEqual(t.server.stream_window, 4 * START_STREAM_WINDOW)
        t.close()

    def test_growth_is_not_counted_as_delivered_bytes(self) -> None:
        """The sender's count of delivered bytes stays what the receiver's consumer took."""
        t = linked_tunnels()
        stream, _ = open_answered(t)
        push(t, stream, 12)
        t.clock.advance(0.5)  # the idle credit of the last, partial batch
        t.settle()
        self.assertEqual(t.server.stream_window, MAX_STREAM_WINDOW)
        self.assertEqual(len(t.handler.recorders[0].received), 12 * MiB)
        self.assertEqual(stream.bytes_acknowledged, 12 * MiB)
        t.close()

    def test_a_stalled_stream_holds_at_most_the_grown_window(self) -> None:
        t = linked_tunnels()
        fast, _ = open_answered(t)
        push(t, fast, 16)
        stalled, answered = open_answered(t)
        answered.pauseProducing()
        for _ in range(20):
            stalled.write(b"s" * MiB)
        t.settle()
        self.assertEqual(len(t.handler.recorders[1].received), MAX_STREAM_WINDOW)
        self.assertEqual(t.client.h2.local_flow_control_window(stalled.stream_id), 0)
        t.close()


class QueueLengthTests(SynchronousTestCase):
    """What a stream queues before pausing its producer follows the peer's window."""

    def test_a_small_window_means_a_short_queue(self) -> None:
        t = linked_tunnels()
        self.assertEqual(t.client.high_water, START_STREAM_WINDOW // 4)
        t.close()

    def test_the_queue_lengthens_as_the_peer_window_grows(self) -> None:
        t = linked_tunnels()
        stream, _ = open_answered(t)
        push(t, stream, 16)
        self.assertEqual(t.client.h2.remote_settings.initial_window_size, MAX_STREAM_WINDOW)
        self.assertEqual(t.client.high_water, HIGH_WATER)
        t.close()

    def test_bounds(self) -> None:
        self.assertEqual(high_water_for(65_535), MIN_HIGH_WATER)
        self.assertEqual(high_water_for(START_STREAM_WINDOW), START_STREAM_WINDOW // 4)
        self.assertEqual(high_water_for(64 * MiB), HIGH_WATER)
