"""The request audit of ``http`` targets (`gateway.edge.requestaudit`), on a ``task.Clock``."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.audit import MemoryAuditTrail
from gateway.edge.consent import Permission, Session
from gateway.edge.events import (
    Auditor,
    ConnectionRecord,
    IAccessEvents,
    IRequestEvents,
    IStreamEvents,
)
from gateway.edge.httpfollow import Exchange, Refuse, RequestHead
from gateway.edge.requestaudit import RequestAudit
from gateway.edge.testing import RecordingEvents
from gateway.splice import SpliceEnd


def connection(kind: str = "http", session: str = "s-1") -> ConnectionRecord:
    return ConnectionRecord(
        id="r-7",
        target="hmi",
        address="192.168.10.2:80",
        engineer="erin",
        session=session,
        started=0.0,
        to_target=SpliceEnd(),
        from_target=SpliceEnd(),
        kind=kind,
    )


def forwarded(method: str = "GET", target: str = "/", status: int | None = 200) -> Exchange:
    return Exchange(RequestHead(method, target), status=status)


def refused(method: str = "POST", target: str = "/upload") -> Exchange:
    return Exchange(RequestHead(method, target), refused=Refuse(403, "view-only"), status=403)


SESSION = Session(
    id="s-1",
    engineer="erin",
    reason="ticket",
    targets=("hmi",),
    permission=Permission.VIEW,
    started=0.0,
    expires=None,
    approved_by="alice",
)


class RequestAuditTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.trail = MemoryAuditTrail()
        self.audit = RequestAudit(Auditor(self.trail, RecordingEvents()), self.clock)

    def test_it_hears_requests_streams_and_sessions(self) -> None:
        for interface in (IRequestEvents, IStreamEvents, IAccessEvents):
            self.assertTrue(verifyObject(interface, self.audit))

    def test_each_request_is_a_record_with_method_path_result_and_status(self) -> None:
        self.audit.request_seen(connection(), forwarded("GET", "/trend?tag=T1&from=9"))
        self.audit.request_seen(connection(), refused())
        first, second = self.trail.events("http.request")
        self.assertEqual(
            {k: first[k] for k in ("who", "result", "session", "connection", "target")},
            {
                "who": "erin",
                "result": "forwarded",
                "session": "s-1",
                "connection": "r-7",
                "target": "hmi",
            },
        )
        self.assertEqual(
            (first["method"], first["path"], first["status"]), ("GET", "/trend?tag=&from=", 200)
        )
        self.assertNotIn("why", first)
        self.assertEqual(
            (second["result"], second["why"], second["status"]), ("refused", "view-only", 403)
        )

    def test_a_burst_over_the_limit_is_counted_and_said_once(self) -> None:
        for _ in range(130):
            self.audit.request_seen(connection(), forwarded("GET", "/poll"))
        self.assertEqual(len(self.trail.events("http.request")), 100)
        self.assertEqual(self.trail.events("audit.suppressed"), [])
        self.clock.advance(1.0)  # 20 more may be written
        for _ in range(25):
            self.audit.request_seen(connection(), forwarded("GET", "/poll"))
        [unrecorded] = self.trail.events("audit.suppressed")
        self.assertEqual(unrecorded["requests"], 30)
        self.assertEqual(unrecorded["note"], "30 further requests not recorded (over 20 a second)")
        self.assertEqual(len(self.trail.events("http.request")), 120)
        self.audit.session_ended(SESSION, "ended by the plant")
        last = self.trail.events("audit.suppressed")[-1]
        self.assertEqual(last["requests"], 5)
        [summary] = self.trail.events("http.summary")
        self.assertEqual((summary["requests"], summary["unrecorded"]), (155, 35))

    def test_a_steady_poll_at_the_rate_is_all_recorded(self) -> None:
        for _ in range(200):
            self.audit.request_seen(connection(), forwarded("GET", "/poll"))
            self.clock.advance(0.05)
        self.assertEqual(len(self.trail.events("http.request")), 200)

    def test_limits_are_per_session(self) -> None:
        for _ in range(100):
            self.audit.request_seen(connection(session="s-1"), forwarded())
        self.audit.request_seen(connection(session="s-2"), forwarded())
        self.assertEqual(self.trail.events("http.request")[-1]["session"], "s-2")

    def test_the_summary_at_the_sessions_end(self) -> None:
        self.audit.request_seen(connection(), forwarded("GET"))
        self.audit.request_seen(connection(), forwarded("GET"))
        self.audit.request_seen(connection(), forwarded("HEAD"))
        self.audit.request_seen(connection(), refused("POST"))
        self.audit.stream_closed(connection(), 1200, 56000, "closed")
        self.audit.stream_closed(connection(kind="tcp"), 5, 5, "closed")
        self.audit.session_ended(SESSION, "expired")
        [summary] = self.trail.events("http.summary")
        self.assertEqual(
            {k: summary[k] for k in ("who", "session", "requests", "by_method", "refused")},
            {
                "who": "erin",
                "session": "s-1",
                "requests": 4,
                "by_method": {"GET": 2, "HEAD": 1, "POST": 1},
                "refused": 1,
            },
        )
        self.assertEqual((summary["bytes_to_target"], summary["bytes_from_target"]), (1200, 56000))
        self.assertEqual(self.audit.recent("s-1"), [])

    def test_a_session_without_http_requests_has_no_summary(self) -> None:
        self.audit.session_ended(SESSION, "expired")
        self.assertEqual(self.trail.events("http.summary"), [])

    def test_recent_requests_are_bounded(self) -> None:
        for n in range(30):
            self.audit.request_seen(connection(), forwarded("GET", f"/p{n}?v={n}"))
        recent = self.audit.recent("s-1")
        self.assertEqual(len(recent), 20)
        self.assertEqual(recent[-1]["path"], "/p29?v=")
        self.assertEqual(
            set(recent[-1]), {"at", "target", "method", "path", "result", "why", "status"}
        )
