"""The tunnel's session route and the forwarder's sessions, through linked in-memory tunnels.

The relay's side (the client end of ``linked_tunnels``) posts a ``wire.SessionAsk`` to
``/v1/session`` and reads ``wire.SessionEvent`` JSON lines; refusals are ordinary refusals.
``CONNECT`` streams carry ``wire.SESSION_HEADER``, and ending a session cuts them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.audit import MemoryAuditTrail
from gateway.config import AccessMode, Address, Target
from gateway.edge.access import AccessPolicy
from gateway.edge.consent import Actor
from gateway.edge.control import ControlRoutes, parse_ask, session_route, sessions_route
from gateway.edge.dispatch import StreamDispatcher
from gateway.edge.events import FanOut, StreamAudit
from gateway.edge.forwarder import StreamForwarder
from gateway.edge.sessions import ConsentService
from gateway.edge.state import StateDirectory
from gateway.edge.status import LiveConnections
from gateway.edge.testing import RecordingEvents
from gateway.splice import SpliceEnd
from gateway.tunnel.errors import StreamReset
from gateway.tunnel.stream import TunnelStream
from gateway.wire import (
    SESSION_HEADER,
    SESSION_PATH,
    SESSIONS_PATH,
    SessionAsk,
    SessionEvent,
    SessionEventKind,
    StreamRefused,
)
from tests.helpers.tunnel import Recorder, linked_tunnels

WEB = Target("web", Address("192.168.10.2", 80))
ALICE = Actor("operator", "alice")
START = 1_700_000_000.0


class FakeConnector:
    def __init__(self) -> None:
        self.calls: list[tuple[Target, SpliceEnd, Deferred[object]]] = []

    def __call__(self, target: Target, end: SpliceEnd) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.calls.append((target, end, d))
        return d


class RouteTestCase(SynchronousTestCase):
    mode = AccessMode.ATTENDED

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        tmp = tempfile.TemporaryDirectory(prefix="test-sessions-route-")
        self.addCleanup(tmp.cleanup)
        state = StateDirectory.open(Path(tmp.name) / "state", "gateway.toml")
        self.audit = MemoryAuditTrail()
        self.recorded = RecordingEvents()
        self.live = LiveConnections()
        self.events = FanOut(self.recorded, self.live)
        self.policy = AccessPolicy(
            (WEB,), self.mode, on_mode_change=self.events.access_mode_changed
        )
        self.connector = FakeConnector()
        self.forwarder = StreamForwarder(
            policy=self.policy,
            connect=self.connector,
            clock=self.clock,
            events=self.events,
            counter=self.events,
        )
        self.consent = ConsentService(
            policy=self.policy,
            state=state,
            audit=self.audit,
            clock=self.clock,
            events=self.events,
            streams=self.forwarder,
        )
        self.policy.sessions = self.consent
        self.events.add(self.consent)
        self.events.add(StreamAudit(self.consent.auditor, self.clock))
        routes = ControlRoutes([session_route(self.consent), sessions_route("gw-1", self.consent)])
        self.t = linked_tunnels(StreamDispatcher(self.forwarder, routes), self.clock)
        self.addCleanup(self.t.close)

    def post(
        self, engineer: str | None = "eve", body: bytes | None = None, **ask: Any
    ) -> tuple[TunnelStream, Recorder]:
        headers = [] if engineer is None else [(b"engineer", engineer.encode())]
        stream = self.t.client.open_stream("gw", method="POST", path=SESSION_PATH, headers=headers)
        rec = Recorder()
        stream.attach(rec)
        stream.write(json.dumps(ask).encode() if body is None else body)
        stream.loseWriteConnection()
        self.t.settle()
        return stream, rec

    def lines(self, rec: Recorder) -> list[SessionEvent]:
        return [SessionEvent.from_line(line) for line in rec.received.splitlines()]

    def refused(self, stream: TunnelStream) -> StreamRefused:
        refused = self.failureResultOf(stream.response, StreamRefused).value
        assert isinstance(refused, StreamRefused)
        return refused

    def connect(
        self, session: str | None = None, engineer: str = "eve"
    ) -> tuple[TunnelStream, Recorder]:
        headers = [(b"engineer", engineer.encode())]
        if session is not None:
            headers.append((SESSION_HEADER, session.encode()))
        stream = self.t.client.open_stream("web", headers=headers)
        rec = Recorder()
        stream.attach(rec)
        stream.write(b"GET / HTTP/1.1\r\n\r\n")
        self.t.settle()
        return stream, rec

    def answer(self, index: int = 0) -> StringTransport:
        _target, end, d = self.connector.calls[index]
        processor = StringTransport()
        end.makeConnection(processor)
        d.callback(end)
        self.t.settle()
        return processor


class SessionRouteTests(RouteTestCase):
    def test_a_request_streams_waiting_then_approved_then_ended(self) -> None:
        stream, rec = self.post(reason="ticket 4711: recalibrate camera")
        response = self.successResultOf(stream.response)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "application/x-ndjson")
        [waiting] = self.lines(rec)
        self.assertEqual(waiting.event, SessionEventKind.WAITING)
        [request] = self.consent.requests()
        self.assertEqual((waiting.request, request.engineer), (request.id, "eve"))
        session = self.consent.approve(request.id, ALICE, minutes=30)
        self.t.settle()
        approved = self.lines(rec)[-1]
        self.assertEqual(
            (approved.event, approved.session), (SessionEventKind.APPROVED, session.id)
        )
        self.assertEqual(approved.expires, "2023-11-14T22:43:20+00:00")
        self.assertIsNone(rec.lost)
        self.consent.end(session.id, ALICE, "done for today")
        self.t.settle()
        ended = self.lines(rec)[-1]
        self.assertEqual(
            (ended.event, ended.why), (SessionEventKind.ENDED, "ended by the plant: done for today")
        )
        self.assertTrue(rec.read_closed)
        self.assertTrue(stream.finished)

    def test_a_denial_is_the_last_line(self) -> None:
        stream, rec = self.post(reason="ticket 4711")
        self.consent.deny(self.consent.requests()[0].id, ALICE, "not today")
        self.t.settle()
        events = self.lines(rec)
        self.assertEqual(
            [e.event for e in events], [SessionEventKind.WAITING, SessionEventKind.DENIED]
        )
        self.assertEqual(events[-1].reason, "denied by alice: not today")
        self.assertTrue(stream.finished)

    def test_an_unanswered_request_is_denied_on_the_stream(self) -> None:
        stream, rec = self.post(reason="ticket 4711")
        self.clock.advance(300)
        self.t.settle()
        self.assertEqual(
            self.lines(rec)[-1].reason, "nobody at the plant answered within 5 minutes"
        )
        self.assertTrue(stream.finished)

    def test_a_code_opens_a_session_at_once(self) -> None:
        code = self.consent.create_code(ALICE)
        stream, rec = self.post(code=code.code)
        [approved] = self.lines(rec)
        self.assertEqual(approved.event, SessionEventKind.APPROVED)
        self.assertEqual(self.successResultOf(stream.response).status, 200)

    def test_a_wrong_code_is_an_ordinary_refusal(self) -> None:
        code = self.consent.create_code(ALICE)
        wrong = "000000" if code.code != "000000" else "111111"
        stream, rec = self.post(code=wrong)
        refused = self.refused(stream)
        self.assertEqual((refused.status, refused.token), (403, "code-invalid"))
        self.assertIn("not valid on this gateway", refused.reason)
        self.assertEqual(rec.received, b"")

    def test_a_locked_code_entry_is_a_429_even_for_the_right_code(self) -> None:
        code = self.consent.create_code(ALICE)
        wrong = [f"{n:06d}" for n in range(7) if f"{n:06d}" != code.code][:5]
        for text in wrong:
            self.refused(self.post(code=text)[0])
        stream, _ = self.post(code=code.code)
        refused = self.refused(stream)
        self.assertEqual((refused.status, refused.token), (429, "too-many-attempts"))
        self.assertIn("locked", refused.reason)

    def test_disabled_refuses_session_requests(self) -> None:
        self.consent.set_mode(AccessMode.DISABLED, ALICE)
        refused = self.refused(self.post(reason="x")[0])
        self.assertEqual((refused.status, refused.token), (403, "access-disabled"))

    def test_a_broken_audit_trail_refuses_new_sessions(self) -> None:
        self.audit.fail = True
        refused = self.refused(self.post(reason="x")[0])
        self.assertEqual((refused.status, refused.token), (503, "audit-unavailable"))

    def test_malformed_requests_are_bad_requests(self) -> None:
        for body in (b"{", b"[1]", b'{"reason": 5}', b'{"targets": "web"}'):
            refused = self.refused(self.post(body=body)[0])
            self.assertEqual(refused.token, "bad-request", body)
        refused = self.refused(self.post(engineer=None, reason="x")[0])
        self.assertEqual(refused.reason, "the relay named no engineer")

    def test_an_empty_body_is_a_bare_ask(self) -> None:
        self.assertEqual(parse_ask(b""), SessionAsk())
        self.assertEqual(parse_ask(b'{"code": "123456", "extra": 1}'), SessionAsk(code="123456"))
        refused = self.refused(self.post(body=b"")[0])
        self.assertEqual(refused.token, "session-required")

    def test_an_engineer_who_goes_away_withdraws_the_request(self) -> None:
        stream, _ = self.post(reason="ticket 4711")
        stream.response.addErrback(lambda _: None)
        stream.abortConnection()
        self.t.settle()
        self.assertEqual(self.consent.requests(), [])
        self.assertEqual(self.audit.events("session.denied")[0]["result"], "withdrawn")

    def test_a_session_outlives_a_lost_stream_for_the_grace_period_and_can_be_resumed(
        self,
    ) -> None:
        code = self.consent.create_code(ALICE)
        stream, rec = self.post(code=code.code)
        session = self.lines(rec)[0].session
        assert session is not None
        stream.abortConnection()
        self.t.settle()
        self.clock.advance(100)
        again, rec2 = self.post(resume=session)
        self.assertEqual(self.lines(rec2)[0].session, session)
        self.clock.advance(1000)
        self.assertEqual([s.id for s in self.consent.sessions()], [session])
        again.abortConnection()
        self.t.settle()
        self.clock.advance(120)
        self.assertEqual(self.consent.sessions(), [])

    def test_the_sessions_summary_answers_for_the_support_desk(self) -> None:
        self.post(reason="ticket 4711")
        code = self.consent.create_code(ALICE)
        self.post("mallory", code=code.code)
        stream = self.t.client.open_stream("gw", method="GET", path=SESSIONS_PATH, end_stream=True)
        rec = Recorder()
        stream.attach(rec)
        self.t.settle()
        summary = json.loads(rec.received)
        self.assertEqual((summary["id"], summary["access_mode"]), ("gw-1", "attended"))
        [request] = summary["requests"]
        self.assertEqual((request["engineer"], request["reason"]), ("eve", "ticket 4711"))
        [session] = summary["sessions"]
        self.assertEqual(session["engineer"], "mallory")
        self.assertEqual(session["connections"], [])


class ForwardingTests(RouteTestCase):
    def session(self, engineer: str = "eve") -> str:
        code = self.consent.create_code(ALICE)
        _, rec = self.post(engineer, code=code.code)
        session = self.lines(rec)[0].session
        assert session is not None
        return session

    def test_a_stream_in_a_session_is_recorded_in_it(self) -> None:
        session = self.session()
        stream, _ = self.connect(session)
        self.answer()
        self.assertEqual(self.successResultOf(stream.response).status, 200)
        [connection] = self.forwarder.active.values()
        self.assertEqual(connection.session, session)
        self.assertEqual(self.consent.sessions()[0].connections, (connection.id,))
        [opened] = self.audit.events("stream.opened")
        self.assertEqual(
            (opened["who"], opened["session"], opened["target"]), ("eve", session, "web")
        )

    def test_attended_mode_refuses_a_stream_without_a_session(self) -> None:
        stream, _ = self.connect()
        refused = self.refused(stream)
        self.assertEqual(refused.token, "session-required")
        self.assertEqual(self.connector.calls, [])
        [record] = self.audit.events("stream.refused")
        self.assertEqual(record["result"], "session-required")

    def test_ending_a_session_cuts_its_streams_at_once(self) -> None:
        session = self.session()
        other = self.session("mallory")
        _, rec = self.connect(session)
        processor = self.answer(0)
        self.connect(other, engineer="mallory")
        self.answer(1)
        self.consent.end(session, ALICE, "enough")
        self.t.settle()
        self.assertIsInstance(rec.lost.value if rec.lost else None, StreamReset)
        self.assertTrue(processor.disconnecting or processor.disconnected)
        self.assertEqual([c.session for c in self.forwarder.active.values()], [other])
        [closed] = self.audit.events("stream.closed")
        self.assertEqual(closed["session"], session)

    def test_switching_off_cuts_every_stream(self) -> None:
        self.connect(self.session())
        self.answer()
        self.consent.set_mode(AccessMode.DISABLED, ALICE)
        self.t.settle()
        self.assertEqual(self.forwarder.active, {})

    def test_a_session_that_ended_while_the_processor_was_dialled_opens_nothing(self) -> None:
        session = self.session()
        stream, _ = self.connect(session)
        self.consent.end(session, ALICE)
        processor = self.answer()
        self.assertEqual(self.refused(stream).token, "session-ended")
        self.assertTrue(processor.disconnecting)
        self.assertEqual(self.forwarder.active, {})

    def test_another_engineers_session_header_is_refused(self) -> None:
        session = self.session()
        stream, _ = self.connect(session, engineer="mallory")
        self.assertEqual(self.refused(stream).token, "session-ended")


class UnattendedForwardingTests(RouteTestCase):
    mode = AccessMode.UNATTENDED

    def test_streams_without_a_session_header_join_an_implicit_session_staff_can_end(self) -> None:
        stream, rec = self.connect()
        self.answer()
        self.assertEqual(self.successResultOf(stream.response).status, 200)
        [session] = self.consent.sessions()
        self.assertTrue(session.implicit)
        [connection] = self.forwarder.active.values()
        self.assertEqual(connection.session, session.id)
        self.consent.end(session.id, ALICE)
        self.t.settle()
        self.assertEqual(self.forwarder.active, {})
        self.assertIsNotNone(rec.lost)

    def test_the_implicit_session_ends_after_the_grace_period_without_streams(self) -> None:
        self.connect()
        self.answer()
        self.assertEqual(len(self.consent.sessions()), 1)
        [connection] = self.forwarder.active.values()
        connection.from_target.connectionLost(_done())  # the processor closed the connection
        self.t.settle()
        self.assertEqual(self.forwarder.active, {})
        self.clock.advance(119)
        self.assertEqual(len(self.consent.sessions()), 1)
        self.clock.advance(1)
        self.assertEqual(self.consent.sessions(), [])
        [ended] = self.audit.events("session.ended")
        self.assertEqual(ended["why"], "the engineer's client was gone for 2 minutes")


def _done() -> Any:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    return Failure(ConnectionDone())
