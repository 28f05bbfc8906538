"""Stream limits on the gateway (`gateway.edge.limits`): per target, per engineer, per tunnel.

Through the real forwarder on linked in-memory tunnels with a fake processor connector: what is
over a limit is refused with ``limit-reached`` and a reason naming the limit and its key, counted,
logged once a minute, and every admitted stream still works; a slot comes back however its stream
ends (closed, dial failed, engineer gone while dialling).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import AccessMode, Address, StreamLimits, Target
from gateway.edge.access import AccessPolicy, AccessRequest, Refused
from gateway.edge.events import FanOut
from gateway.edge.forwarder import StreamForwarder
from gateway.edge.limits import StreamLimiter, StreamSlot
from gateway.edge.metrics import GatewayMetrics
from gateway.edge.testing import ByteTally, RecordingEvents
from gateway.splice import SpliceEnd
from gateway.tunnel.stream import TunnelStream
from gateway.wire import Refusal, StreamRefused
from tests.helpers.tunnel import Recorder, linked_tunnels

WEB = Target("web", Address("192.168.10.2", 80))
HMI = Target("hmi", Address("192.168.10.3", 80))


class FakeConnector:
    def __init__(self) -> None:
        self.calls: list[tuple[Target, SpliceEnd, Deferred[object]]] = []

    def __call__(self, target: Target, end: SpliceEnd) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.calls.append((target, end, d))
        return d


class ForwarderLimitTests(SynchronousTestCase):
    def make(self, limits: StreamLimits) -> None:
        self.clock = Clock()
        self.events = RecordingEvents()
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, self.clock)
        self.connector = FakeConnector()
        self.limiter = StreamLimiter(limits, self.clock)
        self.forwarder = StreamForwarder(
            policy=AccessPolicy((WEB, HMI), AccessMode.UNATTENDED),
            connect=self.connector,
            clock=self.clock,
            events=FanOut(self.events, self.metrics),
            counter=ByteTally(),
            limits=self.limiter,
        )
        self.t = linked_tunnels(self.forwarder, self.clock)
        self.addCleanup(self.t.close)

    def open(
        self, target: str = "web", engineer: bytes = b"alice", settle: bool = True
    ) -> tuple[TunnelStream, Deferred[object]]:
        stream = self.t.client.open_stream(target, headers=[(b"engineer", engineer)])
        stream.attach(Recorder())
        if settle:
            self.t.settle()
        response = stream.response
        self.addCleanup(response.addErrback, lambda _: None)  # reset when the test's tunnel closes
        return stream, response  # type: ignore[return-value]

    def answer(self, index: int) -> tuple[SpliceEnd, StringTransport]:
        _target, end, d = self.connector.calls[index]
        processor = StringTransport()
        end.makeConnection(processor)
        d.callback(end)
        return end, processor

    def limit_refusals(self) -> list[object]:
        return [
            reason
            for _request, refusal, reason in self.events.named("stream_refused")
            if refusal is Refusal.LIMIT_REACHED
        ]

    def test_300_streams_to_one_target_get_exactly_the_limit_and_lose_nothing(self) -> None:
        self.make(StreamLimits(streams_per_target=32))
        with capturedLogs() as events:
            opened = [self.open(settle=False) for _ in range(300)]
            self.t.settle()
        self.assertEqual(len(self.connector.calls), 32)
        refused = [d for _, d in opened if d.called]
        self.assertEqual(len(refused), 268)
        for d in refused:
            error = self.failureResultOf(d, StreamRefused).value
            self.assertEqual((error.status, error.token), (429, "limit-reached"))
            self.assertIn("limits.streams_per_target", error.reason)
            self.assertIn("'web'", error.reason)
        self.assertEqual(len(self.limit_refusals()), 268)
        sample = self.registry.get_sample_value(
            "gateway_streams_total", {"result": "limit-reached"}
        )
        self.assertEqual(sample, 268)
        # Every admitted stream works: the processor answers, bytes go both ways.
        admitted = [o for o in opened if not o[1].called]
        processors = []
        for index in range(32):
            end, processor = self.answer(index)
            end.dataReceived(b"hello %d" % index)
            processors.append(processor)
        self.t.settle()
        self.assertEqual(len(self.forwarder.active), 32)
        for (stream, d), index in zip(admitted, range(32), strict=True):
            self.assertEqual(self.successResultOf(d).status, 200)  # type: ignore[attr-defined]
            assert isinstance(stream.protocol, Recorder)
            self.assertEqual(stream.protocol.received, b"hello %d" % index)
            stream.write(b"to processor %d" % index)
        self.t.settle()
        for index, processor in enumerate(processors):
            self.assertEqual(processor.value(), b"to processor %d" % index)
        lines = [formatEvent(e) for e in events if "stream limit reached" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)

    def test_a_closed_stream_gives_its_slot_back(self) -> None:
        self.make(StreamLimits(streams_per_target=2))
        self.open()
        self.open()
        end, _ = self.answer(0)
        self.answer(1)
        self.t.settle()
        _, third = self.open()
        self.failureResultOf(third, StreamRefused)
        end.connectionLost(Failure(ConnectionDone()))  # the processor closed
        self.t.settle()
        self.assertEqual(self.limiter.open_streams(target="web"), 1)
        self.open()
        self.assertEqual(len(self.connector.calls), 3)

    def test_a_failed_dial_gives_its_slot_back(self) -> None:
        self.make(StreamLimits(streams_per_target=1))
        _, first = self.open()
        self.connector.calls[0][2].errback(Failure(ConnectionRefusedError()))
        self.t.settle()
        self.assertEqual(self.failureResultOf(first, StreamRefused).value.status, 502)
        self.assertEqual(self.limiter.open_streams(), 0)
        self.open()
        self.assertEqual(len(self.connector.calls), 2)

    def test_an_engineer_gone_while_dialling_gives_the_slot_back(self) -> None:
        self.make(StreamLimits(streams_per_target=1))
        stream, _ = self.open()
        stream.reset()  # the engineer gave up before the processor answered
        self.t.settle()
        self.assertEqual(self.limiter.open_streams(), 1)  # still dialling: the slot is held
        _end, processor = self.answer(0)
        self.assertTrue(processor.disconnecting)
        _end.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.limiter.open_streams(), 0)

    def test_streams_per_engineer_count_over_all_targets(self) -> None:
        self.make(StreamLimits(streams_per_engineer=3))
        for target in ("web", "hmi", "web"):
            self.open(target)
        _, refused = self.open("hmi")
        error = self.failureResultOf(refused, StreamRefused).value
        self.assertIn("engineer 'alice'", error.reason)
        self.assertIn("limits.streams_per_engineer", error.reason)
        self.open("hmi", engineer=b"bob")  # someone else still gets in
        self.assertEqual(len(self.connector.calls), 4)

    def test_streams_per_tunnel_count_every_engineer(self) -> None:
        self.make(StreamLimits(streams_per_tunnel=2))
        self.open(engineer=b"alice")
        self.open("hmi", engineer=b"bob")
        _, refused = self.open(engineer=b"carol")
        self.assertIn(
            "limits.streams_per_tunnel", self.failureResultOf(refused, StreamRefused).value.reason
        )

    def test_a_refused_target_uses_no_slot(self) -> None:
        self.make(StreamLimits(streams_per_target=1))
        _, unknown = self.open("printer")
        self.assertNotEqual(self.failureResultOf(unknown, StreamRefused).value.status, 429)
        self.assertEqual(self.limiter.open_streams(), 0)


class LimiterTests(SynchronousTestCase):
    def request(self, target: str = "web", engineer: str = "alice") -> AccessRequest:
        return AccessRequest(target=target, engineer=engineer, connection_id="c", at=0)

    def test_a_slot_is_released_once(self) -> None:
        limiter = StreamLimiter(StreamLimits(streams_per_target=1), Clock())
        slot = limiter.admit(self.request(), object())
        assert isinstance(slot, StreamSlot)
        self.assertIsInstance(limiter.admit(self.request(), object()), Refused)
        slot.release()
        slot.release()
        self.assertFalse(slot.held)
        self.assertEqual(limiter.open_streams(), 0)
        self.assertIsInstance(limiter.admit(self.request(), object()), StreamSlot)

    def test_no_count_is_kept_for_what_has_nothing_open(self) -> None:
        limiter = StreamLimiter(StreamLimits(), Clock())
        slots = [limiter.admit(self.request(engineer=f"e{i}"), object()) for i in range(10)]
        for slot in slots:
            assert isinstance(slot, StreamSlot)
            slot.release()
        self.assertEqual((limiter._targets, limiter._engineers, limiter._tunnels), ({}, {}, {}))

    def test_repeated_refusals_are_summed_up_after_a_minute(self) -> None:
        clock = Clock()
        limiter = StreamLimiter(StreamLimits(streams_per_target=1), clock)
        limiter.admit(self.request(), object())
        with capturedLogs() as events:
            for _ in range(50):
                limiter.admit(self.request(engineer="mallory\x1b[2J"), object())
            clock.advance(60)
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("limits.streams_per_target", lines[0])
        self.assertNotIn("\x1b", lines[0])
        self.assertIn("49 similar lines suppressed", lines[1])
        limiter.stop()
        self.assertEqual(clock.getDelayedCalls(), [])


class LimitsConfigTests(SynchronousTestCase):
    def load(self, limits: str) -> object:
        import tempfile
        from pathlib import Path

        from gateway.config import ConfigError, load_gateway_config

        tmp = tempfile.TemporaryDirectory(prefix="test-limits-")
        self.addCleanup(tmp.cleanup)
        directory = Path(tmp.name)
        for name in ("ca.pem", "gw.pem", "gw.key"):
            (directory / name).write_text("x")
        path = directory / "gateway.toml"
        path.write_text(
            '[relay]\naddress = "relay.example.com:443"\nca = "ca.pem"\ncert = "gw.pem"\n'
            f'key = "gw.key"\n{limits}'
        )
        try:
            return load_gateway_config(path).limits
        except ConfigError as e:
            return e

    def test_defaults(self) -> None:
        self.assertEqual(self.load(""), StreamLimits(64, 32, 512))
        self.assertEqual(
            (StreamLimits().streams_per_engineer, StreamLimits().streams_per_target), (64, 32)
        )

    def test_each_limit_can_be_set(self) -> None:
        limits = self.load(
            "[limits]\nstreams_per_engineer = 8\nstreams_per_target = 4\nstreams_per_tunnel = 99\n"
        )
        self.assertEqual(limits, StreamLimits(8, 4, 99))

    def test_bad_limits_name_the_key(self) -> None:
        for text, key, problem in [
            ("streams_per_target = 0", "limits.streams_per_target", "between 1 and 100000"),
            ("streams_per_engineer = 2.5", "limits.streams_per_engineer", "a whole number"),
            ('streams_per_tunnel = "many"', "limits.streams_per_tunnel", "a whole number"),
            ("streams_per_plc = 3", "limits.streams_per_plc", "unknown key"),
        ]:
            error = self.load(f"[limits]\n{text}\n")
            self.assertEqual((error.key, True), (key, problem in error.problem), error)  # type: ignore[attr-defined]
