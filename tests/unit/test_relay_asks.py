"""Session asks through the relay: passed to the gateway as they came, refused only for their form.

(`gateway.relay.asks`, the session hook of `gateway.relay.engineers`, the ``session`` header.)
Real tunnel connections joined in memory on both sides of the relay; the gateway is a fake that
answers ``POST SESSION_PATH`` the way the wire describes it (a 200 and JSON lines).
"""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.audit import IAuditTrail, MemoryAuditTrail
from gateway.relay.asks import MAX_ASK_BODY, SessionAsks, ask_details
from gateway.relay.authorisation import EveryAuthenticatedEngineer
from gateway.relay.dialer import LocalDialer
from gateway.relay.directory import MemoryGatewayDirectory
from gateway.relay.engineers import EngineerStreams
from gateway.relay.gateways import GatewayTunnels
from gateway.relay.metrics import RelayMetrics
from gateway.relay.path import EngineerPath
from gateway.tunnel.connection import IStreamHandler
from gateway.tunnel.stream import TunnelStream
from gateway.wire import (
    AUTHORIZATION_HEADER,
    GATEWAY_HEADER,
    NDJSON,
    SESSION_HEADER,
    SESSION_PATH,
    Refusal,
    SessionEvent,
    SessionEventKind,
    StreamRefused,
)
from tests.helpers.tunnel import AcceptAll, Recorder, linked_tunnels, settle_all
from tests.unit.test_relay_engineers import OneToken

WAITING = SessionEvent(SessionEventKind.WAITING, request="r-1", expires="2030-01-01T10:05:00Z")
APPROVED = SessionEvent(
    SessionEventKind.APPROVED,
    session="s-abc",
    targets=["web"],
    permission="full",
    expires="2030-01-01T11:00:00Z",
    approved_by="operator bob",
)
ENDED = SessionEvent(SessionEventKind.ENDED, session="s-abc", why="ended by the plant: done")


@implementer(IHalfCloseableProtocol)
class _Body(Protocol):
    def __init__(self, gateway: SessionGateway, stream: TunnelStream) -> None:
        self.gateway, self.stream = gateway, stream
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def readConnectionLost(self) -> None:
        self.gateway.bodies.append(b"".join(self.parts))
        self.gateway.answer(self.stream)

    def writeConnectionLost(self) -> None:
        pass


@implementer(IStreamHandler)
class SessionGateway(AcceptAll):
    """A gateway's session route as the wire says: the body first, then the answer.

    ``refusal`` refuses every ask; otherwise the ask is answered 200 with ``events``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []
        self.events: list[SessionEvent] = [WAITING]
        self.refusal: tuple[Refusal, str] | None = None
        self.answered: list[TunnelStream] = []

    def stream_requested(self, stream: TunnelStream) -> None:
        assert stream.request is not None
        if stream.request.method == "CONNECT":
            super().stream_requested(stream)
            return
        self.streams.append(stream)
        stream.attach(_Body(self, stream))

    def answer(self, stream: TunnelStream) -> None:
        if self.refusal is not None:
            stream.refuse(*self.refusal)
            return
        stream.respond(200, [(b"content-type", NDJSON)])
        for event in self.events:
            stream.write(event.to_line())
        self.answered.append(stream)


class AskWorld:
    """Engineer link, relay engine (with session asks) and gateway link on one clock."""

    def __init__(self, case: SynchronousTestCase, *, asks: bool = True) -> None:
        self.clock = Clock()
        self.gateway = SessionGateway()
        self.directory = MemoryGatewayDirectory(self.clock)
        self.tunnels = GatewayTunnels()
        self.metrics = RelayMetrics(CollectorRegistry())
        self.audit = MemoryAuditTrail()
        dialer = LocalDialer(self.tunnels)
        ids = iter(f"c-{n:08x}" for n in range(1, 1000))
        self.engineers = EngineerStreams(
            path=EngineerPath(
                credentials=OneToken(),
                authorisation=EveryAuthenticatedEngineer(),
                directory=self.directory,
                metrics=self.metrics,
            ),
            dialer=dialer,
            metrics=self.metrics,
            clock=self.clock,
            new_id=lambda: next(ids),
            asks=SessionAsks(
                dialer=dialer, metrics=self.metrics, audit=self.audit, clock=self.clock
            )
            if asks
            else None,
        )
        self.eng = linked_tunnels(self.engineers, self.clock)
        self.gw = linked_tunnels(self.gateway, self.clock)
        self.tunnels.add("gw-1", self.gw.client)
        self.directory.gateway_connected("gw-1")
        case.addCleanup(self.eng.close)
        case.addCleanup(self.gw.close)

    def settle(self) -> None:
        settle_all(self.eng, self.gw)

    def ask(
        self, body: object = None, *, token: str = "good", end: bool = True, raw: bytes = b""
    ) -> tuple[TunnelStream, Recorder]:
        stream = self.eng.client.open_stream(
            "relay",
            method="POST",
            path=SESSION_PATH,
            headers=[
                (AUTHORIZATION_HEADER, b"Bearer " + token.encode()),
                (GATEWAY_HEADER, b"gw-1"),
            ],
        )
        rec = Recorder()
        stream.attach(rec)
        stream.write(raw or json.dumps(body if body is not None else {}).encode())
        if end:
            stream.loseWriteConnection()
        self.settle()
        return stream, rec

    def connect(self, session: str | None) -> TunnelStream:
        headers = [(AUTHORIZATION_HEADER, b"Bearer good"), (GATEWAY_HEADER, b"gw-1")]
        if session is not None:
            headers.append((SESSION_HEADER, session.encode()))
        stream = self.eng.client.open_stream("web", headers=headers)
        stream.attach(Recorder())
        self.settle()
        return stream

    def events(self, rec: Recorder) -> list[SessionEvent]:
        return [SessionEvent.from_line(line) for line in rec.received.splitlines()]

    def active(self) -> float | None:
        return self.metrics.registry.get_sample_value("relay_sessions_active")


def refusal(case: SynchronousTestCase, stream: TunnelStream) -> StreamRefused:
    refused = case.failureResultOf(stream.response, StreamRefused).value
    assert isinstance(refused, StreamRefused)
    return refused


class PassThroughTests(SynchronousTestCase):
    def test_the_ask_reaches_the_gateway_as_sent_with_who_asks(self) -> None:
        world = AskWorld(self)
        world.ask({"reason": "ticket 4711: recalibrate camera"})
        [upstream] = world.gateway.streams
        asked = upstream.request
        assert asked is not None
        self.assertEqual((asked.method, asked.path), ("POST", SESSION_PATH))
        self.assertEqual(asked.headers["engineer"], "alice")
        self.assertEqual(asked.headers["connection-id"], "c-00000001")
        self.assertNotIn("authorization", asked.headers)
        self.assertEqual(
            json.loads(world.gateway.bodies[0]), {"reason": "ticket 4711: recalibrate camera"}
        )

    def test_the_gateways_events_reach_the_engineer_byte_for_byte(self) -> None:
        world = AskWorld(self)
        stream, rec = world.ask({"reason": "ticket 4711"})
        response = self.successResultOf(stream.response)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], NDJSON.decode())
        self.assertEqual(rec.received, WAITING.to_line())
        world.gateway.answered[0].write(APPROVED.to_line())
        world.settle()
        self.assertEqual(world.events(rec), [WAITING, APPROVED])
        self.assertIsNone(rec.lost)  # the stream stays open while the session lives

    def test_the_relays_answer_names_the_engineer_it_authenticated(self) -> None:
        world = AskWorld(self)
        stream, _ = world.ask({"reason": "x"})
        self.assertEqual(self.successResultOf(stream.response).headers["engineer"], "alice")

    def test_the_gateway_answers_only_once_the_ask_has_ended(self) -> None:
        world = AskWorld(self)
        stream, _ = world.ask({"reason": "x"}, end=False)
        self.assertNoResult(stream.response)
        self.assertEqual(world.gateway.bodies, [])
        stream.loseWriteConnection()
        world.settle()
        self.assertEqual(self.successResultOf(stream.response).status, 200)

    def test_a_gateway_refusal_reaches_the_engineer_unchanged(self) -> None:
        world = AskWorld(self)
        world.gateway.refusal = (Refusal.CODE_INVALID, "that code was used already")
        stream, _ = world.ask({"code": "123456"})
        refused = refusal(self, stream)
        self.assertEqual(
            (refused.status, refused.token, refused.reason),
            (403, "code-invalid", "that code was used already"),
        )

    def test_the_end_of_the_stream_reaches_the_engineer(self) -> None:
        world = AskWorld(self)
        world.gateway.events = [APPROVED, ENDED]
        _, rec = world.ask({"code": "123456"})
        world.gateway.answered[0].loseWriteConnection()
        world.settle()
        self.assertEqual(world.events(rec), [APPROVED, ENDED])
        self.assertTrue(rec.read_closed)


class RefusedAtTheRelayTests(SynchronousTestCase):
    def test_a_body_over_the_limit_is_refused_and_never_ends_at_the_gateway(self) -> None:
        world = AskWorld(self)
        stream, _ = world.ask(raw=b"x" * (MAX_ASK_BODY + 1))
        refused = refusal(self, stream)
        self.assertEqual(
            (refused.token, refused.reason),
            ("bad-request", f"a session request is at most {MAX_ASK_BODY} bytes"),
        )
        self.assertEqual(world.gateway.bodies, [])
        self.assertTrue(world.gateway.streams[0].finished)  # cancelled at the gateway too

    def test_a_body_at_the_limit_goes_through(self) -> None:
        world = AskWorld(self)
        reason = "r" * (MAX_ASK_BODY - len('{"reason": ""}'))
        stream, _ = world.ask({"reason": reason})
        self.assertEqual(self.successResultOf(stream.response).status, 200)

    def test_a_bad_token_never_reaches_the_gateway(self) -> None:
        world = AskWorld(self)
        stream, _ = world.ask({"reason": "x"}, token="bad")
        self.assertEqual(refusal(self, stream).token, "bad-token")
        self.assertEqual(world.gateway.streams, [])
        self.assertEqual(world.audit.records, [])

    def test_an_offline_gateway_is_refused_as_for_a_connect(self) -> None:
        world = AskWorld(self)
        world.tunnels.remove("gw-1", world.gw.client)
        world.directory.gateway_disconnected("gw-1")
        stream, _ = world.ask({"reason": "x"})
        refused = refusal(self, stream)
        self.assertEqual(
            (refused.token, refused.reason),
            ("gateway-offline", "gateway 'gw-1' is offline (its tunnel to the relay is down)"),
        )

    def test_an_ask_the_relay_cannot_audit_does_not_reach_the_plant(self) -> None:
        world = AskWorld(self)
        world.audit.fail = True
        stream, _ = world.ask({"reason": "x"})
        refused = refusal(self, stream)
        self.assertEqual((refused.status, refused.token), (503, "audit-unavailable"))
        self.assertEqual(world.gateway.bodies, [])
        self.assertTrue(world.gateway.streams[0].finished)

    def test_a_relay_without_session_asks_refuses_them(self) -> None:
        world = AskWorld(self, asks=False)
        stream, _ = world.ask({"reason": "x"})
        refused = refusal(self, stream)
        self.assertEqual(
            (refused.token, refused.reason), ("bad-request", "this relay passes no session asks")
        )
        self.assertEqual(world.gateway.streams, [])


class SessionHeaderTests(SynchronousTestCase):
    def test_a_well_formed_session_header_is_forwarded_on_the_connect(self) -> None:
        world = AskWorld(self)
        stream = world.connect("s-Ab3_x-9")
        self.assertEqual(self.successResultOf(stream.response).status, 200)
        [upstream] = world.gateway.streams
        assert upstream.request is not None
        self.assertEqual(upstream.request.headers["session"], "s-Ab3_x-9")

    def test_a_connect_without_a_session_carries_none(self) -> None:
        world = AskWorld(self)
        world.connect(None)
        [upstream] = world.gateway.streams
        assert upstream.request is not None
        self.assertNotIn("session", upstream.request.headers)

    def test_a_malformed_session_header_is_refused_before_the_gateway(self) -> None:
        world = AskWorld(self)
        for bad in ("abc", "s-", "s-a b", "s-" + "x" * 65, "s-é", "S-abc", "s-a/b"):
            stream = world.connect(bad)
            refused = refusal(self, stream)
            self.assertEqual((refused.status, refused.token), (400, "bad-request"), bad)
        self.assertEqual(world.gateway.streams, [])


class AuditTests(SynchronousTestCase):
    def test_the_ask_is_recorded_with_who_which_gateway_and_why(self) -> None:
        world = AskWorld(self)
        world.ask({"reason": "ticket 4711"})
        [record] = world.audit.events("session.requested")
        self.assertEqual(
            record,
            {
                "event": "session.requested",
                "sr": record["sr"],
                "who": "alice",
                "result": "ok",
                "gateway": "gw-1",
                "connection": "c-00000001",
                "way": "reason",
                "reason": "ticket 4711",
            },
        )

    def test_a_code_is_recorded_as_used_never_its_digits(self) -> None:
        world = AskWorld(self)
        world.gateway.events = [APPROVED]
        world.ask({"code": "987654"})
        self.assertEqual(world.audit.events("session.requested")[0]["way"], "code")
        self.assertNotIn("987654", json.dumps(world.audit.records))

    def test_what_the_gateway_decided_is_recorded_as_it_passes(self) -> None:
        world = AskWorld(self)
        world.ask({"reason": "x"})
        world.gateway.answered[0].write(APPROVED.to_line() + ENDED.to_line()[:10])
        world.settle()
        [started] = world.audit.events("session.started")
        self.assertEqual(
            {k: started[k] for k in ("who", "gateway", "session", "approved_by", "resumed")},
            {
                "who": "alice",
                "gateway": "gw-1",
                "session": "s-abc",
                "approved_by": "operator bob",
                "resumed": False,
            },
        )
        self.assertEqual(world.audit.events("session.ended"), [])  # half a line so far
        world.gateway.answered[0].write(ENDED.to_line()[10:])
        world.settle()
        [ended] = world.audit.events("session.ended")
        self.assertEqual((ended["session"], ended["why"]), ("s-abc", "ended by the plant: done"))

    def test_a_denial_and_a_refusal_are_recorded(self) -> None:
        world = AskWorld(self)
        world.gateway.events = [SessionEvent(SessionEventKind.DENIED, reason="not today")]
        world.ask({"reason": "x"})
        world.gateway.refusal = (Refusal.TOO_MANY_ATTEMPTS, "code entry is locked")
        self.assertEqual(refusal(self, world.ask({"code": "111111"})[0]).status, 429)
        denied = world.audit.events("session.denied")
        self.assertEqual(
            [(d["result"], d.get("refusal"), d["reason"]) for d in denied],
            [
                ("denied", None, "not today"),
                ("refused", "too-many-attempts", "code entry is locked"),
            ],
        )

    def test_a_resume_is_recorded_with_its_session(self) -> None:
        world = AskWorld(self)
        world.gateway.events = [APPROVED]
        world.ask({"resume": "s-abc"})
        self.assertEqual(world.audit.events("session.requested")[0]["session"], "s-abc")
        self.assertTrue(world.audit.events("session.started")[0]["resumed"])

    def test_an_event_the_audit_cannot_take_does_not_stop_the_session(self) -> None:
        world = AskWorld(self)
        world.gateway.events = []
        _, rec = world.ask({"reason": "x"})
        world.audit.fail = True
        world.gateway.answered[0].write(APPROVED.to_line())
        world.settle()
        self.assertEqual(world.events(rec), [APPROVED])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_garbage_from_the_gateway_is_passed_on_and_not_audited(self) -> None:
        world = AskWorld(self)
        world.gateway.events = []
        _, rec = world.ask({"reason": "x"})
        world.gateway.answered[0].write(b'not json\n{"event": "nonsense"}\n[1]\n')
        world.settle()
        self.assertEqual(rec.received, b'not json\n{"event": "nonsense"}\n[1]\n')
        self.assertEqual([r["event"] for r in world.audit.records], ["session.requested"])


class SessionsActiveTests(SynchronousTestCase):
    def test_a_live_session_is_counted_until_it_ends(self) -> None:
        world = AskWorld(self)
        world.gateway.events = [APPROVED]
        world.ask({"code": "123456"})
        self.assertEqual(world.active(), 1.0)
        world.gateway.answered[0].write(ENDED.to_line())
        world.settle()
        self.assertEqual(world.active(), 0.0)

    def test_a_session_whose_stream_drops_is_no_longer_counted(self) -> None:
        world = AskWorld(self)
        world.gateway.events = [APPROVED]
        stream, _ = world.ask({"code": "123456"})
        stream.reset()
        world.settle()
        self.assertEqual(world.active(), 0.0)

    def test_a_waiting_request_is_not_a_session(self) -> None:
        world = AskWorld(self)
        world.ask({"reason": "x"})
        self.assertEqual(world.active(), 0.0)


class AskDetailsTests(SynchronousTestCase):
    def test_each_way_of_asking_is_named(self) -> None:
        self.assertEqual(ask_details(b'{"reason": "r"}'), {"way": "reason", "reason": "r"})
        self.assertEqual(ask_details(b'{"code": "123456"}'), {"way": "code"})
        self.assertEqual(ask_details(b'{"resume": "s-1"}'), {"way": "resume", "session": "s-1"})
        self.assertEqual(ask_details(b"{}"), {"way": "unattended"})
        self.assertEqual(
            ask_details(b'{"reason": "r", "targets": ["web"], "later": 1}'),
            {"way": "reason", "reason": "r", "targets": ["web"]},
        )

    def test_an_unreadable_body_is_named_so(self) -> None:
        for body in (b"", b"[]", b"not json", b'{"reason": "r"'):
            self.assertEqual(ask_details(body), {"way": "unreadable"}, body)


class FakesTests(SynchronousTestCase):
    def test_fakes_provide_their_interfaces(self) -> None:
        verifyObject(IStreamHandler, SessionGateway())
        verifyObject(IAuditTrail, MemoryAuditTrail())
