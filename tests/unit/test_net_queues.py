"""Queues sized to the path: the kernel's TCP_INFO as read, the sizing rules, the rate filter,
and the sizer resizing a tunnel socket's queues as the path's delivery rate changes."""

from __future__ import annotations

import socket
import struct
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.net import queues
from gateway.net.queues import (
    FASTEST,
    FRAME_FLOOR,
    SAMPLE_INTERVAL,
    UNSENT_FLOOR,
    WRITE_FLOOR,
    DeliveryRate,
    QueueSizer,
    QueueSizes,
    sizes_for,
)
from gateway.net.tcpinfo import (
    PathInfo,
    congestion_control_of,
    parse_tcp_info,
    read_path_info,
    set_congestion_control,
)


def tcp_info_bytes(
    *, rtt_us: int, min_rtt_us: int, rate: int, app_limited: bool, notsent: int
) -> bytes:
    raw = bytearray(232)
    raw[7] = 1 if app_limited else 0
    struct.pack_into("=II", raw, 68, rtt_us, rtt_us // 4)
    struct.pack_into("=II", raw, 144, notsent, min_rtt_us)
    struct.pack_into("=Q", raw, 160, rate)
    return bytes(raw)


class TcpInfoTests(SynchronousTestCase):
    def test_the_fields_are_read_at_the_kernels_offsets(self) -> None:
        raw = tcp_info_bytes(
            rtt_us=42_000, min_rtt_us=2_000, rate=1_250_000, app_limited=True, notsent=9000
        )
        self.assertEqual(
            parse_tcp_info(raw),
            PathInfo(
                rtt=0.042, min_rtt=0.002, delivery_rate=1_250_000.0, app_limited=True, notsent=9000
            ),
        )

    def test_an_older_kernels_shorter_struct_gives_what_it_has(self) -> None:
        raw = tcp_info_bytes(rtt_us=5000, min_rtt_us=1, rate=7, app_limited=False, notsent=1)
        info = parse_tcp_info(raw[:104])
        assert info is not None
        self.assertEqual((info.rtt, info.delivery_rate, info.notsent), (0.005, None, None))
        self.assertIsNone(parse_tcp_info(raw[:40]))

    def test_a_real_loopback_socket_reports_its_path(self) -> None:
        server = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(server.close)
        client = socket.create_connection(server.getsockname())
        self.addCleanup(client.close)
        accepted, _ = server.accept()
        self.addCleanup(accepted.close)
        client.sendall(b"x" * 100_000)
        accepted.recv(1 << 20)
        info = read_path_info(client)
        assert info is not None
        self.assertGreater(info.rtt, 0)
        self.assertIsNotNone(info.delivery_rate)
        self.assertIsNotNone(info.notsent)

    def test_a_congestion_control_the_kernel_lacks_is_refused_in_words(self) -> None:
        sock = socket.socket()
        self.addCleanup(sock.close)
        problem = set_congestion_control(sock, "nonesuch")
        assert problem is not None
        self.assertIn("does not offer 'nonesuch'", problem)
        self.assertIn("it offers:", problem)

    def test_an_offered_congestion_control_is_set_on_the_socket(self) -> None:
        sock = socket.socket()
        self.addCleanup(sock.close)
        self.assertIsNone(set_congestion_control(sock, "reno"))  # always built in
        self.assertEqual(congestion_control_of(sock), "reno")


class SizingRuleTests(SynchronousTestCase):
    def test_a_fast_path_keeps_the_loopback_tuning(self) -> None:
        self.assertEqual(sizes_for(3e9), FASTEST)

    def test_a_cellular_uplink_gets_the_floor_everywhere(self) -> None:
        two_mbit = 2e6 / 8
        self.assertEqual(sizes_for(two_mbit), QueueSizes(FRAME_FLOOR, WRITE_FLOOR, UNSENT_FLOOR))

    def test_a_ten_mbit_uplink_gets_frames_of_four_milliseconds(self) -> None:
        ten_mbit = 10e6 / 8
        self.assertEqual(sizes_for(ten_mbit), QueueSizes(5000, WRITE_FLOOR, 5000))

    def test_in_between_each_queue_holds_a_few_milliseconds(self) -> None:
        rate = 100e6  # bytes per second: a gigabit LAN's share
        sizes = sizes_for(rate)
        expected = int(rate * queues.QUEUE_DELAY)
        self.assertEqual((sizes.frame, sizes.write_buffer), (expected, expected))
        self.assertEqual(sizes.unsent, queues.UNSENT_CEILING)  # the kernel's is capped lower
        self.assertGreater(sizes_for(rate * 2).frame, sizes.frame)


class DeliveryRateTests(SynchronousTestCase):
    def test_the_estimate_is_the_highest_recent_sample(self) -> None:
        rate = DeliveryRate(window=2.0)
        rate.add(0.0, 100.0, app_limited=False)
        rate.add(0.5, 300.0, app_limited=False)
        rate.add(1.0, 200.0, app_limited=False)
        self.assertEqual(rate.estimate(), 300.0)

    def test_an_old_maximum_expires(self) -> None:
        rate = DeliveryRate(window=2.0)
        rate.add(0.0, 300.0, app_limited=False)
        rate.add(1.0, 200.0, app_limited=False)
        rate.add(2.5, 100.0, app_limited=False)
        self.assertEqual(rate.estimate(), 200.0)
        rate.add(5.0, 50.0, app_limited=False)
        self.assertEqual(rate.estimate(), 50.0)

    def test_an_idle_tunnel_keeps_its_last_estimate(self) -> None:
        rate = DeliveryRate(window=2.0)
        rate.add(0.0, 300.0, app_limited=False)
        rate.add(60.0, 3.0, app_limited=True)  # a heartbeat after a quiet minute
        self.assertEqual(rate.estimate(), 300.0)

    def test_an_application_limited_sample_only_ever_raises_it(self) -> None:
        rate = DeliveryRate(window=2.0)
        rate.add(0.0, 1000.0, app_limited=False)
        rate.add(0.5, 10.0, app_limited=True)  # an idle tunnel says nothing about its path
        self.assertEqual(rate.estimate(), 1000.0)
        rate.add(0.6, 1500.0, app_limited=True)  # but it did deliver this much
        self.assertEqual(rate.estimate(), 1500.0)

    def test_an_application_limited_sample_at_most_doubles_it(self) -> None:
        rate = DeliveryRate(window=2.0)
        rate.add(0.0, 1000.0, app_limited=False)
        rate.add(0.1, 20_000.0, app_limited=True)  # a burst of ACKs after a pause
        self.assertEqual(rate.estimate(), 2000.0)
        rate.add(0.2, 20_000.0, app_limited=True)  # a path that really is faster: soon found
        rate.add(0.3, 20_000.0, app_limited=True)
        rate.add(0.4, 20_000.0, app_limited=True)
        self.assertEqual(rate.estimate(), 16_000.0)


class FakeSocket(socket.socket):
    """A socket whose TCP_INFO is what the test says, and which records what is set on it."""

    def __init__(self) -> None:
        super().__init__()
        self.info = tcp_info_bytes(
            rtt_us=1000, min_rtt_us=500, rate=3_000_000_000, app_limited=False, notsent=0
        )
        self.options: dict[int, Any] = {}

    def getsockopt(self, level: int, option: int, size: int = 0) -> Any:
        if option == socket.TCP_INFO:
            return self.info
        return super().getsockopt(level, option, size)

    def setsockopt(self, level: int, option: int, value: Any, *args: Any) -> None:
        self.options[option] = value

    def deliver(self, rate: float, app_limited: bool = False) -> None:
        self.info = tcp_info_bytes(
            rtt_us=1000, min_rtt_us=500, rate=int(rate), app_limited=app_limited, notsent=0
        )


class FakeTCPTransport:
    bufferSize = 1 << 20

    def __init__(self, sock: FakeSocket) -> None:
        self.sock = sock
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0

    def getHandle(self) -> FakeSocket:
        return self.sock


class QueueSizerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sock = FakeSocket()
        self.addCleanup(self.sock.close)
        self.transport = FakeTCPTransport(self.sock)
        self.frames: list[int] = []
        self.sizer = QueueSizer(self.transport, self.clock.seconds, self.frames.append)

    def write_for(self, seconds: float) -> None:
        """The tunnel writes every 10 ms for ``seconds``."""
        for _ in range(round(seconds / 0.01)):
            self.clock.advance(0.01)
            self.sizer.writing()

    def test_a_slow_uplink_shrinks_every_queue_to_the_floor(self) -> None:
        self.sock.deliver(2e6 / 8)
        self.write_for(0.5)
        self.assertEqual(self.frames[-1], FRAME_FLOOR)
        self.assertEqual(self.transport.bufferSize, WRITE_FLOOR)
        self.assertEqual(self.sock.options[socket.TCP_NOTSENT_LOWAT], UNSENT_FLOOR)

    def test_a_fast_path_keeps_its_queues(self) -> None:
        self.write_for(0.5)
        self.assertEqual(self.frames, [])  # nothing to change
        self.assertEqual(self.transport.bufferSize, 1 << 20)

    def test_the_queues_grow_back_when_the_path_gets_faster(self) -> None:
        self.sock.deliver(10e6 / 8)
        self.write_for(0.5)
        self.sock.deliver(3e9, app_limited=True)
        self.write_for(0.5)
        self.assertEqual(self.sizer.sizes, FASTEST)
        self.assertEqual(self.frames[-1], FASTEST.frame)

    def test_the_path_is_sampled_at_most_every_interval_and_only_while_writing(self) -> None:
        calls: list[int] = []
        original = self.sock.getsockopt

        def counting(level: int, option: int, size: int = 0) -> Any:
            calls.append(option)
            return original(level, option, size)

        self.sock.getsockopt = counting  # type: ignore[method-assign]
        self.write_for(1.0)  # 100 writes
        self.assertEqual(len(calls), round(1.0 / SAMPLE_INTERVAL))
        self.clock.advance(60)  # idle: no samples
        self.assertEqual(len(calls), round(1.0 / SAMPLE_INTERVAL))

    def test_without_a_tcp_socket_nothing_is_sampled(self) -> None:
        class Pipe:
            bufferSize = 65536

        sizer = QueueSizer(Pipe(), self.clock.seconds, self.frames.append)
        self.assertFalse(sizer.active)
        sizer.writing()
        self.assertEqual(self.frames, [])

    def test_the_bytes_waiting_in_twisteds_buffer_are_counted(self) -> None:
        self.transport.dataBuffer = b"x" * 5000
        self.transport.offset = 1000
        self.transport._tempDataLen = 300
        self.assertEqual(self.sizer.waiting_bytes(), 4300)
