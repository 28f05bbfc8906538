# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call,arg-type"
"""``/api/events``: the status JSON streamed to live pages, and the recent audit events in it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from attrs import evolve
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from gateway.audit import MemoryAuditTrail
from gateway.auditlog.files import audit_folder
from gateway.auditlog.writer import FileAuditTrail
from gateway.edge.recent import KEEP, RecentAudit
from gateway.web.events import HEARTBEAT, INTERVAL, EventStream
from tests.unit.test_api import REPORT, FixedView


class StreamRequest(DummyRequest):
    """A `DummyRequest` that keeps a push producer (DummyRequest would pull it in a loop)."""

    producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


def statuses(request: DummyRequest) -> list[dict[str, object]]:
    text = b"".join(request.written).decode()
    return [
        json.loads(block.split("data: ", 1)[1])
        for block in text.split("\n\n")
        if block.startswith("event: status")
    ]


class EventStreamTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.view = FixedView()
        self.stream = EventStream(self.view, self.clock, max_clients=2)

    def open(self) -> StreamRequest:
        request = StreamRequest([])
        self.assertEqual(self.stream.render_GET(request), NOT_DONE_YET)
        return request

    def test_a_reader_gets_the_status_at_once_then_only_changes(self) -> None:
        request = self.open()
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"),
            [b"text/event-stream; charset=utf-8"],
        )
        self.assertEqual(statuses(request), [REPORT.to_json()])
        self.clock.advance(INTERVAL * 4)
        self.assertEqual(len(statuses(request)), 1)  # nothing changed, nothing sent
        self.view.current = evolve(REPORT, id="plant8-gw")
        self.clock.advance(INTERVAL)
        self.assertEqual([s["id"] for s in statuses(request)], ["plant7-gw", "plant8-gw"])

    def test_a_quiet_stream_gets_a_heartbeat_comment(self) -> None:
        request = self.open()
        self.clock.advance(HEARTBEAT - INTERVAL)
        self.assertNotIn(b": still here\n\n", request.written)
        self.clock.advance(INTERVAL * 2)
        self.assertIn(b": still here\n\n", request.written)

    def test_readers_are_capped_and_a_gone_one_frees_its_place_and_the_timer(self) -> None:
        first, _second = self.open(), self.open()
        third = StreamRequest([])
        self.stream.render_GET(third)
        self.assertEqual(third.responseCode, 503)
        first.processingFailed(Exception("the browser went away"))  # notifyFinish errback
        self.assertEqual(len(self.stream.readers), 1)
        self.stream.stop()
        self.assertEqual(self.stream.readers, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no timer left behind

    def test_a_reader_whose_login_ended_is_closed(self) -> None:
        allowed = [True]
        stream = EventStream(self.view, self.clock, allowed=lambda r: lambda: allowed[0])
        request = StreamRequest([])
        stream.render_GET(request)
        allowed[0] = False
        self.clock.advance(INTERVAL)
        self.assertEqual(request.finished, 1)
        self.assertIn(b"event: logged-out", b"".join(request.written))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RecentEventsTests(SynchronousTestCase):
    def test_the_last_events_are_kept_newest_first_without_other_fields(self) -> None:
        trail = MemoryAuditTrail()
        recent = RecentAudit(trail, Clock())
        for n in range(KEEP + 5):
            recent.record("mode.changed", who="alice", old="attended", new=f"m{n}", code="123456")
        recent.record("http.request", who="erin", target="web")  # per request: not shown
        shown = recent.recent()
        self.assertEqual(len(shown), KEEP)
        self.assertEqual(shown[0]["new"], f"m{KEEP + 4}")
        self.assertNotIn("code", shown[0])  # only the fields meant for the page
        self.assertEqual(len(trail.records), KEEP + 6)  # the trail has everything

    def test_a_restart_shows_the_events_already_in_the_trail(self) -> None:
        state = Path(tempfile.mkdtemp())
        clock = Clock()
        clock.advance(1_700_000_000)
        trail = FileAuditTrail(audit_folder(state), clock=clock)
        trail.record("session.denied", who="operator (192.0.2.20)", engineer="ed", reason="no")
        trail.close()
        recent = RecentAudit(MemoryAuditTrail(), clock)
        recent.seed(state)
        [event] = recent.recent()
        self.assertEqual((event["event"], event["engineer"]), ("session.denied", "ed"))
        self.assertNotIn("prev", event)


class SlowReaderTests(SynchronousTestCase):
    def test_a_reader_that_does_not_read_is_skipped_until_it_does(self) -> None:
        clock, view = Clock(), FixedView()
        stream = EventStream(view, clock)
        request = StreamRequest([])
        stream.render_GET(request)
        producer = request.producer
        self.assertIsNotNone(producer)
        producer.pauseProducing()  # the transport's buffer is full
        view.current = evolve(REPORT, id="plant8-gw")
        clock.advance(INTERVAL * 3)
        self.assertEqual(len(statuses(request)), 1)
        producer.resumeProducing()
        clock.advance(INTERVAL)
        self.assertEqual([s["id"] for s in statuses(request)], ["plant7-gw", "plant8-gw"])
        stream.stop()
