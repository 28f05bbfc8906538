"""The daemon's events fan out to every consumer: metrics, status model, (soon) audit."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.audit import AuditWriteError, MemoryAuditTrail
from gateway.config import AccessMode
from gateway.edge.access import AccessRequest, Permission
from gateway.edge.consent import PendingRequest, Session
from gateway.edge.events import (
    Auditor,
    ConnectionRecord,
    FanOut,
    IAccessEvents,
    IByteCounter,
    IRequestEvents,
    IStreamEvents,
    ITunnelEvents,
    StreamAudit,
)
from gateway.edge.httpfollow import Exchange, Refuse, RequestHead
from gateway.edge.link import TunnelStatus
from gateway.edge.metrics import GatewayMetrics
from gateway.edge.status import LiveConnections
from gateway.edge.testing import ByteTally, RecordingEvents
from gateway.net.queues import PathReport
from gateway.splice import SpliceEnd
from gateway.wire import Refusal

ASKED = AccessRequest(target="plc", engineer="alice", connection_id="r-1", at=5.0)


def record(id: str = "r-1") -> ConnectionRecord:
    return ConnectionRecord(
        id=id,
        target="web",
        address="192.168.10.2:80",
        engineer="alice",
        session=None,
        started=5.0,
        to_target=SpliceEnd(),
        from_target=SpliceEnd(),
    )


@implementer(ITunnelEvents)
class Broken:
    """A consumer whose every event fails."""

    def __getattr__(self, name: str) -> object:
        def fail(*args: object) -> None:
            raise ZeroDivisionError(name)

        return fail


@implementer(IByteCounter)
class BrokenCounter:
    def bytes_to_target(self, n: int) -> None:
        raise ZeroDivisionError("to")

    def bytes_from_target(self, n: int) -> None:
        raise ZeroDivisionError("from")


class InterfaceTests(SynchronousTestCase):
    def test_the_fan_out_provides_every_event_interface(self) -> None:
        for fan in (FanOut(), FanOut(ByteTally()), FanOut(ByteTally(), ByteTally())):
            for interface in (
                ITunnelEvents,
                IStreamEvents,
                IByteCounter,
                IAccessEvents,
                IRequestEvents,
            ):
                self.assertTrue(verifyObject(interface, fan))

    def test_metrics_consume_tunnel_stream_and_byte_events(self) -> None:
        metrics = GatewayMetrics(CollectorRegistry())
        for interface in (ITunnelEvents, IStreamEvents, IByteCounter):
            self.assertTrue(verifyObject(interface, metrics))

    def test_the_status_model_consumes_tunnel_and_stream_events(self) -> None:
        self.assertTrue(verifyObject(ITunnelEvents, TunnelStatus("relay:443", Clock())))
        self.assertTrue(verifyObject(IStreamEvents, LiveConnections()))

    def test_the_fakes_provide_what_they_claim(self) -> None:
        for interface in (ITunnelEvents, IStreamEvents, IAccessEvents):
            self.assertTrue(verifyObject(interface, RecordingEvents()))
        self.assertTrue(verifyObject(IByteCounter, ByteTally()))


class FanOutTests(SynchronousTestCase):
    def test_every_consumer_hears_every_event_in_order(self) -> None:
        first, second = RecordingEvents(), RecordingEvents()
        fan = FanOut(first, second)
        conn = record()
        fan.tunnel_up("connected")
        fan.tunnel_rtt(0.25)
        fan.stream_opened(conn)
        fan.stream_closed(conn, 10, 20, "closed")
        fan.stream_refused(ASKED, Refusal.TARGET_NOT_ALLOWED, "no")
        fan.tunnel_failed("refused")
        fan.tunnel_down("lost")
        fan.tunnel_stopped("stopping")
        fan.access_mode_changed(AccessMode.ATTENDED, AccessMode.DISABLED)
        expected = [
            ("tunnel_up", "connected"),
            ("tunnel_rtt", 0.25),
            ("stream_opened", conn),
            ("stream_closed", conn, 10, 20, "closed"),
            ("stream_refused", ASKED, Refusal.TARGET_NOT_ALLOWED, "no"),
            ("tunnel_failed", "refused"),
            ("tunnel_down", "lost"),
            ("tunnel_stopped", "stopping"),
            ("access_mode_changed", AccessMode.ATTENDED, AccessMode.DISABLED),
        ]
        self.assertEqual(first.seen, expected)
        self.assertEqual(second.seen, expected)

    def test_a_consumer_hears_only_the_interfaces_it_provides(self) -> None:
        live = LiveConnections()  # stream events only
        fan = FanOut(live)
        fan.tunnel_up("connected")  # nobody to tell: no error
        fan.stream_opened(record())
        self.assertEqual(len(live), 1)

    def test_a_failing_consumer_is_logged_and_the_others_still_hear(self) -> None:
        before, after = RecordingEvents(), RecordingEvents()
        fan = FanOut(before, Broken(), after)
        fan.tunnel_up("connected")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(before.seen, [("tunnel_up", "connected")])
        self.assertEqual(after.seen, [("tunnel_up", "connected")])

    def test_something_that_consumes_nothing_is_refused(self) -> None:
        self.assertRaises(TypeError, FanOut().add, object())

    def test_a_consumer_added_later_hears_later_events(self) -> None:
        fan = FanOut()
        fan.tunnel_up("first")
        late = RecordingEvents()
        fan.add(late)
        fan.tunnel_down("second")
        self.assertEqual(late.seen, [("tunnel_down", "second")])


class ByteCountingTests(SynchronousTestCase):
    """Bytes are counted per chunk on the data path: no fan-out loop for a single counter."""

    def test_one_counter_is_called_directly(self) -> None:
        tally = ByteTally()
        fan = FanOut(RecordingEvents(), tally, LiveConnections())
        self.assertEqual(fan.bytes_to_target, tally.bytes_to_target)
        self.assertEqual(fan.bytes_from_target, tally.bytes_from_target)
        fan.bytes_to_target(3)
        fan.bytes_from_target(4)
        self.assertEqual((tally.to_target, tally.from_target), (3, 4))

    def test_no_counter_counts_nothing_and_does_not_fail(self) -> None:
        fan = FanOut(RecordingEvents())
        fan.bytes_to_target(3)
        fan.bytes_from_target(4)

    def test_several_counters_each_count_and_a_failing_one_does_not_stop_them(self) -> None:
        a, b = ByteTally(), ByteTally()
        fan = FanOut(a, BrokenCounter(), b)
        fan.bytes_to_target(3)
        fan.bytes_from_target(4)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        self.assertEqual((a.to_target, a.from_target, b.to_target, b.from_target), (3, 4, 3, 4))

    def test_a_splice_end_counts_into_the_metrics_through_the_fan_out(self) -> None:
        registry = CollectorRegistry()
        metrics = GatewayMetrics(registry)
        fan = FanOut(metrics, TunnelStatus("relay:443", Clock()), LiveConnections())
        end = SpliceEnd(on_bytes=fan.bytes_to_target)
        end.dataReceived(b"x" * 100)
        self.assertEqual(
            registry.get_sample_value("gateway_stream_bytes_total", {"direction": "to_target"}),
            100,
        )


class MetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, Clock())

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def test_the_tunnels_path_is_read_at_each_scrape(self) -> None:
        reports: list[PathReport | None] = [None]
        self.metrics.watch_path(lambda: reports[-1])
        self.assertIsNone(self.value("gateway_tunnel_smoothed_rtt_seconds"))  # tunnel down
        reports.append(
            PathReport(
                smoothed_rtt=0.35,
                min_rtt=0.02,
                delivery_rate=1_250_000.0,
                waiting_in_process=125_000,
                waiting_in_kernel=12_500,
            )
        )
        self.assertEqual(self.value("gateway_tunnel_smoothed_rtt_seconds"), 0.35)
        self.assertEqual(self.value("gateway_tunnel_delivery_rate_bytes_per_second"), 1_250_000)
        self.assertEqual(self.value("gateway_tunnel_queue_delay_seconds", queue="gateway"), 0.1)
        self.assertEqual(self.value("gateway_tunnel_queue_delay_seconds", queue="kernel"), 0.01)

    def test_tunnel_events_set_up_connects_and_rtt(self) -> None:
        self.assertEqual(self.value("gateway_tunnel_up"), 0)
        self.metrics.tunnel_up("connected")
        self.metrics.tunnel_rtt(0.125)
        self.assertEqual(self.value("gateway_tunnel_up"), 1)
        self.assertEqual(self.value("gateway_tunnel_connects_total"), 1)
        self.assertEqual(self.value("gateway_tunnel_rtt_seconds"), 0.125)
        self.metrics.tunnel_failed("why")
        self.assertEqual(self.value("gateway_tunnel_up"), 1)
        self.metrics.tunnel_down("lost")
        self.assertEqual(self.value("gateway_tunnel_up"), 0)
        self.metrics.tunnel_up("again")
        self.metrics.tunnel_stopped("stopping")
        self.assertEqual(self.value("gateway_tunnel_up"), 0)
        self.assertEqual(self.value("gateway_tunnel_connects_total"), 2)

    def test_stream_events_count_results_and_active_streams(self) -> None:
        conn = record()
        self.metrics.stream_opened(conn)
        self.assertEqual(self.value("gateway_streams_active"), 1)
        self.metrics.stream_closed(conn, 1, 2, "closed")
        self.metrics.stream_refused(ASKED, Refusal.TARGET_NOT_ALLOWED, "no")
        self.assertEqual(self.value("gateway_streams_active"), 0)
        self.assertEqual(self.value("gateway_streams_total", result="opened"), 1)
        self.assertEqual(self.value("gateway_streams_total", result="target-not-allowed"), 1)


class RequestMetricsTests(SynchronousTestCase):
    def test_requests_on_http_targets_are_counted_by_result_through_the_fan_out(self) -> None:
        registry = CollectorRegistry()
        metrics = GatewayMetrics(registry)
        self.assertTrue(verifyObject(IRequestEvents, metrics))
        fan = FanOut(metrics)
        fan.request_seen(record(), Exchange(RequestHead("GET", "/"), status=200))
        fan.request_seen(record(), Exchange(RequestHead("POST", "/"), refused=Refuse(403, "v")))
        fan.request_seen(record(), Exchange(RequestHead("GET", "/a")))

        def count(result: str) -> float | None:
            return registry.get_sample_value("gateway_http_requests_total", {"result": result})

        self.assertEqual((count("forwarded"), count("refused")), (2, 1))


REQUEST = PendingRequest(
    id="r-1", engineer="eve", reason="ticket", targets=("web",), asked=5.0, expires=305.0
)
SESSION = Session(
    id="s-1",
    engineer="eve",
    reason="ticket",
    targets=("web",),
    permission=Permission.FULL,
    started=5.0,
    expires=3605.0,
    approved_by="alice",
)


class ConsentEventTests(SynchronousTestCase):
    def test_the_fan_out_passes_on_every_consent_event(self) -> None:
        seen = RecordingEvents()
        fan = FanOut(seen)
        fan.request_opened(REQUEST)
        fan.request_closed(REQUEST, "approved")
        fan.session_started(SESSION, "approved")
        fan.session_ended(SESSION, "expired")
        fan.code_refused("wrong")
        fan.audit_failed("disk full")
        self.assertEqual(
            seen.seen,
            [
                ("request_opened", REQUEST),
                ("request_closed", REQUEST, "approved"),
                ("session_started", SESSION, "approved"),
                ("session_ended", SESSION, "expired"),
                ("code_refused", "wrong"),
                ("audit_failed", "disk full"),
            ],
        )

    def test_metrics_consume_consent_events(self) -> None:
        registry = CollectorRegistry()
        metrics = GatewayMetrics(registry, Clock())
        self.assertTrue(verifyObject(IAccessEvents, metrics))

        def value(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, labels)

        metrics.show_mode(AccessMode.ATTENDED)
        self.assertEqual(value("gateway_access_mode", mode="attended"), 1)
        self.assertEqual(value("gateway_access_mode", mode="unattended"), 0)
        metrics.access_mode_changed(AccessMode.ATTENDED, AccessMode.DISABLED)
        self.assertEqual(value("gateway_access_mode", mode="attended"), 0)
        self.assertEqual(value("gateway_access_mode", mode="disabled"), 1)
        metrics.request_opened(REQUEST)
        self.assertEqual(value("gateway_session_requests_pending"), 1)
        metrics.request_closed(REQUEST, "approved")
        metrics.session_started(SESSION, "approved")
        self.assertEqual(value("gateway_session_requests_pending"), 0)
        self.assertEqual(value("gateway_sessions_active"), 1)
        self.assertEqual(value("gateway_session_decisions_total", decision="approved"), 1)
        metrics.session_started(SESSION, "code")
        metrics.session_ended(SESSION, "expired")
        self.assertEqual(value("gateway_sessions_active"), 1)
        self.assertEqual(value("gateway_session_decisions_total", decision="code"), 1)
        metrics.code_refused("wrong")
        self.assertEqual(value("gateway_session_decisions_total", decision="code_wrong"), 1)
        metrics.audit_failed("disk full")
        metrics.audit_failed("disk full")
        self.assertEqual(value("gateway_audit_write_failures_total"), 2)


class AuditConsumerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.trail = MemoryAuditTrail()
        self.seen = RecordingEvents()
        self.auditor = Auditor(self.trail, self.seen)
        self.clock = Clock()
        self.streams = StreamAudit(self.auditor, self.clock)

    def test_stream_events_become_audit_records(self) -> None:
        self.assertTrue(verifyObject(IStreamEvents, self.streams))
        conn = record()
        self.clock.advance(65.5)
        self.streams.stream_opened(conn)
        self.streams.stream_closed(conn, 10, 20, "closed")
        self.streams.stream_refused(ASKED, Refusal.TARGET_NOT_ALLOWED, "no such target")
        opened, closed, refused = self.trail.records
        self.assertEqual(
            (opened["event"], opened["who"], opened["connection"], opened["target"]),
            ("stream.opened", "alice", "r-1", "web"),
        )
        self.assertEqual(
            (closed["bytes_to_target"], closed["bytes_from_target"], closed["seconds"]),
            (10, 20, 60.5),
        )
        self.assertEqual(closed["result"], "closed")
        self.assertEqual(
            (refused["result"], refused["reason"]), ("target-not-allowed", "no such target")
        )

    def test_a_record_that_cannot_be_written_is_told_and_counted_not_raised(self) -> None:
        self.trail.fail = True
        self.streams.stream_opened(record())
        self.assertFalse(self.auditor.record("stream.opened", who="x"))
        self.assertEqual(self.seen.named("audit_failed"), [("audit trail unavailable (test)",)] * 2)
        self.assertRaises(AuditWriteError, self.auditor.require, "session.requested", who="eve")
        self.assertFalse(self.auditor.healthy)
        self.trail.fail = False
        self.assertTrue(self.auditor.record("stream.opened", who="x"))
        self.assertTrue(self.auditor.healthy)
