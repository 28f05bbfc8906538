"""The tunnel's round-robin scheduler on its own, with fake streams and a fake connection."""

from __future__ import annotations

from attrs import define, field
from twisted.trial.unittest import SynchronousTestCase

from gateway.tunnel.scheduler import LIGHT, RoundRobin


@define
class FakeStream:
    stream_id: int
    frames: int  # frames it has to send
    window: int = 1_000  # frames its send window allows
    frame_bytes: int = 64 * 1024  # the size of each of its frames

    @property
    def queued(self) -> int:
        return self.frames * self.frame_bytes


@define
class FakeConnection:
    """Sends one frame per turn like ``TunnelConnection._send_one_frame``, and records them."""

    scheduler: RoundRobin[FakeStream]
    sent: list[int] = field(factory=list)
    rounds: int = 0
    pause_after_rounds: int | None = None
    close_after_rounds: int | None = None

    def send_one(self, stream: FakeStream) -> bool:
        if not stream.frames:
            return False
        if stream.window <= 0:
            self.scheduler.block(stream.stream_id)
            return False
        stream.frames -= 1
        stream.window -= 1
        self.sent.append(stream.stream_id)
        return stream.frames > 0

    def end_of_round(self) -> bool:
        self.rounds += 1
        if self.rounds == self.pause_after_rounds:
            self.scheduler.paused = True  # the transport's write called pauseProducing
        return self.rounds != self.close_after_rounds

    def run(self) -> None:
        self.scheduler.run(self.send_one, self.end_of_round)


def streams(*frames: int) -> list[FakeStream]:
    return [FakeStream(stream_id=1 + 2 * i, frames=n) for i, n in enumerate(frames)]


class RoundRobinTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.scheduler: RoundRobin[FakeStream] = RoundRobin()
        self.conn = FakeConnection(self.scheduler)

    def test_each_ready_stream_sends_one_frame_per_round(self) -> None:
        a, b, c = streams(3, 1, 2)
        for s in (a, b, c):
            self.scheduler.add(s)
        self.conn.run()
        self.assertEqual(self.conn.sent, [1, 3, 5, 1, 5, 1])
        self.assertEqual(self.conn.rounds, 3)
        self.assertFalse(self.scheduler.has_ready)

    def test_a_stream_scheduled_twice_still_gets_one_turn_per_round(self) -> None:
        a, b = streams(2, 2)
        for s in (a, a, b, a):
            self.scheduler.add(s)
        self.conn.run()
        self.assertEqual(self.conn.sent, [1, 3, 1, 3])

    def test_a_stream_with_nothing_left_gets_turns_again_once_scheduled(self) -> None:
        (a,) = streams(1)
        self.scheduler.add(a)
        self.conn.run()
        a.frames = 1
        self.conn.run()
        self.assertEqual(self.conn.sent, [1])
        self.scheduler.add(a)
        self.conn.run()
        self.assertEqual(self.conn.sent, [1, 1])

    def test_pause_stops_before_the_next_round_and_resume_continues(self) -> None:
        a, b = streams(3, 3)
        self.conn.pause_after_rounds = 1
        for s in (a, b):
            self.scheduler.add(s)
        self.conn.run()
        # The round that filled the transport is complete; no new one started.
        self.assertEqual(self.conn.sent, [1, 3])
        self.assertTrue(self.scheduler.has_ready)
        self.scheduler.paused = False  # resumeProducing
        self.conn.run()
        self.assertEqual(self.conn.sent, [1, 3, 1, 3, 1, 3])

    def test_a_paused_scheduler_sends_nothing(self) -> None:
        self.scheduler.paused = True
        self.scheduler.add(streams(1)[0])
        self.conn.run()
        self.assertEqual((self.conn.sent, self.conn.rounds), ([], 0))

    def test_a_closed_connection_ends_the_run(self) -> None:
        a, b = streams(5, 5)
        self.conn.close_after_rounds = 2
        for s in (a, b):
            self.scheduler.add(s)
        self.conn.run()
        self.assertEqual(self.conn.sent, [1, 3, 1, 3])

    def test_a_blocked_stream_waits_while_the_others_go_on(self) -> None:
        a, b = streams(3, 3)
        a.window = 1
        by_id = {s.stream_id: s for s in (a, b)}
        for s in (a, b):
            self.scheduler.add(s)
        self.conn.run()
        self.assertEqual(self.conn.sent, [1, 3, 3, 3])
        self.assertTrue(self.scheduler.is_blocked(a.stream_id))
        # Scheduling a blocked stream (it wrote more) gives it no turn.
        self.scheduler.add(a)
        self.conn.run()
        self.assertEqual(self.conn.sent, [1, 3, 3, 3])
        # A WINDOW_UPDATE for another stream changes nothing.
        self.assertFalse(self.scheduler.window_opened(b.stream_id, by_id))
        # Its own WINDOW_UPDATE puts it back.
        a.window = 10
        self.assertTrue(self.scheduler.window_opened(a.stream_id, by_id))
        self.conn.run()
        self.assertEqual(self.conn.sent, [1, 3, 3, 3, 1, 1])
        self.assertFalse(self.scheduler.is_blocked(a.stream_id))

    def test_a_connection_window_update_resumes_every_blocked_stream(self) -> None:
        a, b, c = streams(2, 2, 2)
        by_id = {s.stream_id: s for s in (a, b, c)}
        for s in (a, b, c):
            s.window = 0
            self.scheduler.add(s)
        self.conn.run()
        self.assertEqual(self.conn.sent, [])
        for s in (a, b, c):
            s.window = 10
        self.assertTrue(self.scheduler.window_opened(0, by_id))
        self.conn.run()
        self.assertEqual(sorted(self.conn.sent), [1, 1, 3, 3, 5, 5])
        self.assertFalse(self.scheduler.window_opened(0, by_id))

    def test_a_finished_stream_is_not_resumed(self) -> None:
        a, b = streams(2, 2)
        by_id = {s.stream_id: s for s in (a, b)}
        for s in (a, b):
            s.window = 0
            self.scheduler.add(s)
        self.conn.run()
        self.scheduler.forget(a.stream_id)  # it ended (reset, say) while blocked
        del by_id[a.stream_id]
        self.assertFalse(self.scheduler.is_blocked(a.stream_id))
        b.window = 10
        self.assertTrue(self.scheduler.window_opened(0, by_id))
        self.conn.run()
        self.assertEqual(self.conn.sent, [3, 3])


class LightStreamsFirstTests(SynchronousTestCase):
    """Streams that carry little (a click, a WebSocket message) go ahead of downloads."""

    def setUp(self) -> None:
        self.scheduler: RoundRobin[FakeStream] = RoundRobin()
        self.conn = FakeConnection(self.scheduler)

    def test_a_small_message_goes_ahead_of_the_downloads_ready_before_it(self) -> None:
        bulk = streams(3, 3)
        message = FakeStream(stream_id=99, frames=1, frame_bytes=200)
        for s in [*bulk, message]:
            self.scheduler.add(s)
        self.conn.run()
        self.assertEqual(self.conn.sent[0], 99)
        self.assertEqual(self.conn.sent[1:], [1, 3, 1, 3, 1, 3])

    def test_a_message_that_arrives_mid_download_is_first_in_the_next_round(self) -> None:
        [bulk] = streams(4)
        message = FakeStream(stream_id=99, frames=1, frame_bytes=LIGHT)
        self.scheduler.add(bulk)
        self.conn.pause_after_rounds = 1
        self.conn.run()
        self.scheduler.add(message)
        self.scheduler.paused = False
        self.conn.pause_after_rounds = None
        self.conn.run()
        self.assertEqual(self.conn.sent, [1, 99, 1, 1, 1])

    def test_a_light_stream_that_has_more_after_all_takes_turns_with_the_bulk(self) -> None:
        [bulk] = streams(3)
        chatty = FakeStream(stream_id=99, frames=3, frame_bytes=LIGHT // 4)
        for s in (bulk, chatty):
            self.scheduler.add(s)
        self.conn.run()
        # First turn at the front; then one frame per round like any other stream.
        self.assertEqual(self.conn.sent, [99, 1, 99, 1, 99, 1])

    def test_bulk_streams_are_not_starved_by_messages(self) -> None:
        [bulk] = streams(2)
        self.scheduler.add(bulk)
        for n in range(5):
            self.scheduler.add(FakeStream(stream_id=101 + 2 * n, frames=1, frame_bytes=100))
        self.conn.run()
        self.assertEqual(self.conn.sent, [101, 103, 105, 107, 109, 1, 1])
