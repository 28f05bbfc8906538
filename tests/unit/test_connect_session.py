# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The session of ``gateway connect``: asking the plant, waiting, forwarding inside it, its end.

The client runs on a `MemoryReactorClock` against the in-memory relay of `test_connect`, whose
session streams the tests drive with the gateway's own events (`wire.SessionEvent`), so the
waiting lines, the held connections, the exit codes and the resume after an outage are checked
against the wire contract.  Time is the clock's: a 5-minute wait takes no time.
"""

from __future__ import annotations

import attrs
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure

from gateway.connect import MAX_HELD, WAITING_EVERY, Phase
from gateway.connect.session import waited_text, when_text
from gateway.wire import Refusal, SessionEvent, SessionEventKind
from tests.unit.test_connect import OPTIONS, RELAY, EngineerClientTestCase

REASON = attrs.evolve(OPTIONS, reason="ticket 4711: recalibrate camera")
CODE = attrs.evolve(OPTIONS, code="123456")
NOON = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC
WAITING = SessionEvent(
    SessionEventKind.WAITING,
    request="r-1",
    targets=["web"],
    asked="2026-05-28T20:26:40+00:00",
    expires="2026-05-28T20:31:40+00:00",
)
APPROVED = SessionEvent(
    SessionEventKind.APPROVED,
    session="s-9",
    targets=["web"],
    permission="full",
    expires="2026-05-28T21:26:40+00:00",
    approved_by="alice (status page)",
)
ASKED = (
    "gateway 'plant7' is in attended mode: the plant has your request r-1 (it expires at 20:31 UTC)"
)


def waiting_line(waited: str) -> str:
    return (
        "waiting for the plant to approve: engineer erin, gateway plant7, reason "
        f"'ticket 4711: recalibrate camera' (waited {waited})"
    )


LET_IN = (
    "the plant let you in: session s-9, target web, full permission, until 21:26 UTC (approved "
    "by alice (status page)); open http://127.0.0.1:18080/"
)
HOLDING = "a connection to the local port waits until the plant lets you in (the page opens then)"


class AttendedTestCase(EngineerClientTestCase):
    options = REASON

    def setUp(self) -> None:
        super().setUp()
        self.reactor.advance(NOON)
        self.relay.session_default = "hold"

    def waiting(self) -> None:
        self.start()
        self.relay.send(WAITING)
        self.endpoint.settle()


class RequestTests(AttendedTestCase):
    def test_the_ask_carries_the_reason_and_the_target(self) -> None:
        self.start()
        [(stream, body, _)] = self.relay.asks
        assert stream.request is not None
        self.assertEqual(stream.request.headers["content-type"], "application/json")
        self.assertEqual(body, {"reason": "ticket 4711: recalibrate camera", "targets": ["web"]})

    def test_waiting_is_told_at_once_and_then_every_so_often(self) -> None:
        self.waiting()
        self.assertEqual(self.reports, [ASKED, waiting_line("0:00")])
        self.advance(WAITING_EVERY - 1)
        self.assertEqual(len(self.reports), 2)
        self.advance(1)
        self.assertEqual(self.reports[-1], waiting_line("0:30"))
        self.advance(4 * WAITING_EVERY)
        self.assertEqual(len(self.reports), 7)
        self.assertEqual(self.reports[-1], waiting_line("2:30"))

    def test_connections_wait_for_the_approval_then_go_through_in_the_session(self) -> None:
        self.waiting()
        first, first_transport = self.browser()
        first.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.browser()
        self.assertEqual(self.relay.connects, [])
        self.assertEqual(first_transport.producerState, "paused")
        self.assertEqual(self.reports[-1], HOLDING)
        self.assertEqual(self.reports.count(HOLDING), 1)
        self.relay.send(APPROVED)
        self.endpoint.settle()
        self.assertEqual(self.reports[-1], LET_IN)
        self.assertEqual(len(self.relay.connects), 2)
        for stream in self.relay.connects:
            assert stream.request is not None
            self.assertEqual(stream.request.headers["session"], "s-9")
        self.assertEqual(self.relay.recorders[0].received, b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(first_transport.producerState, "producing")
        self.browser()
        self.assertEqual(len(self.relay.connects), 3)
        self.advance(3 * WAITING_EVERY)
        self.assertEqual(self.reports[-1], LET_IN)  # no more waiting lines
        self.assertNoResult(self.client.finished)

    def test_the_engineer_is_told_when_the_plant_switches_view_and_full(self) -> None:
        self.waiting()
        self.relay.send(APPROVED)
        self.endpoint.settle()
        for permission, by, on in (
            ("view", "alice (status page)", ["web"]),
            ("full", "bob (loopback)", []),
        ):
            self.relay.send(
                SessionEvent(
                    SessionEventKind.CHANGED,
                    session="s-9",
                    permission=permission,
                    approved_by=by,
                    targets=on,
                )
            )
            self.endpoint.settle()
        self.assertEqual(
            self.reports[-2:],
            [
                "the plant changed session s-9 (alice (status page)) on web: view only: pages "
                "load, anything that would change the processor is refused",
                "the plant changed session s-9 (bob (loopback)): full control",
            ],
        )
        self.assertNoResult(self.client.finished)

    def test_a_held_connection_that_goes_away_is_forgotten(self) -> None:
        self.waiting()
        browser, _ = self.browser()
        browser.connectionLost(Failure(ConnectionRefusedError()))
        self.relay.send(APPROVED)
        self.endpoint.settle()
        self.assertEqual(self.relay.connects, [])

    def test_connections_over_the_limit_are_closed_while_waiting(self) -> None:
        self.waiting()
        held = [self.browser()[1] for _ in range(MAX_HELD)]
        _, over = self.browser()
        self.assertTrue(over.disconnecting)
        self.assertFalse(any(t.disconnecting for t in held))
        self.assertIn(f"{MAX_HELD} connections wait for the plant already", self.reports[-1])

    def test_a_denial_ends_the_client_with_its_reason(self) -> None:
        self.waiting()
        _, held = self.browser()
        denied = SessionEvent(
            SessionEventKind.DENIED, request="r-1", reason="denied by alice: not during a shift"
        )
        self.relay.send(denied, end=True)
        self.endpoint.settle()
        self.assertEqual(
            self.reports[-1], "request r-1 was not approved: denied by alice: not during a shift"
        )
        self.assertEqual(self.exit_code(), 1)
        self.stop()
        self.assertTrue(held.disconnecting)

    def test_a_request_nobody_answers_expires_and_ends_the_client(self) -> None:
        self.waiting()
        expired = SessionEvent(
            SessionEventKind.DENIED,
            request="r-1",
            reason="nobody at the plant answered within 5 minutes",
        )
        self.advance(300, step=30)
        self.relay.send(expired, end=True)
        self.endpoint.settle()
        self.assertEqual(
            self.reports[-1],
            "request r-1 was not approved: nobody at the plant answered within 5 minutes",
        )
        self.assertEqual(self.exit_code(), 1)

    def test_a_request_whose_stream_was_cut_is_asked_again(self) -> None:
        self.waiting()
        self.relay.asks[-1][0].reset()
        self.endpoint.settle()
        self.assertIn("the stream of request r-1 to gateway 'plant7' was cut", self.reports[-1])
        self.advance(16)
        self.assertEqual(len(self.relay.asks), 2)
        self.assertEqual(self.relay.asks[-1][1]["reason"], "ticket 4711: recalibrate camera")
        self.relay.send(attrs.evolve(WAITING, request="r-2"))
        self.endpoint.settle()
        self.assertIn("asked the plant again: request r-2", self.reports[-2])

    def test_stopping_while_waiting_tells_nothing_and_leaves_no_timer(self) -> None:
        self.waiting()
        self.browser()
        told = list(self.reports)
        d = self.client.stopService()
        self.endpoint.settle()
        self.successResultOf(d)
        self.assertEqual(self.reports, told)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertTrue(self.relay.asks[0][2].lost)  # the gateway sees the engineer go


class CodeTests(AttendedTestCase):
    options = CODE

    def test_a_code_gets_in_at_once(self) -> None:
        self.start()
        self.assertEqual(self.relay.asks[0][1], {"code": "123456"})
        self.relay.send(attrs.evolve(APPROVED, approved_by="code 123... from alice"))
        self.endpoint.settle()
        self.assertIn("the plant let you in: session s-9", self.reports[-1])
        self.browser()
        [stream] = self.relay.connects
        assert stream.request is not None
        self.assertEqual(stream.request.headers["session"], "s-9")

    def test_a_refused_code_ends_the_client_with_the_reason(self) -> None:
        for refusal, reason in [
            (Refusal.CODE_INVALID, "this code was used already: a code lets one engineer in, once"),
            (Refusal.CODE_INVALID, "this code has expired (codes work for 10 minutes)"),
            (Refusal.CODE_INVALID, "this code is not valid on this gateway"),
            (Refusal.TOO_MANY_ATTEMPTS, "code entry on this gateway is locked after 5 wrong"),
        ]:
            with self.subTest(reason=reason):
                self.setUp()
                self.relay.session_default = (refusal, reason)
                self.start()
                self.assertEqual(self.reports, [reason])
                self.assertEqual(self.exit_code(), 1)
                self.stop()


class EndTests(AttendedTestCase):
    def test_a_session_that_ends_says_why_and_exits_0(self) -> None:
        for why in ("ended by the plant: done for today", "expired", SWITCHED_OFF):
            with self.subTest(why=why):
                self.setUp()
                self.start()
                self.relay.send(APPROVED)
                self.endpoint.settle()
                self.browser()
                self.relay.send(SessionEvent(SessionEventKind.ENDED, session="s-9", why=why))
                self.relay.connects[0].reset()  # the gateway closes the session's streams
                self.endpoint.settle()
                self.assertEqual(self.reports[-1], f"session s-9 ended: {why}")
                self.assertEqual(self.exit_code(), 0)
                self.stop()

    def test_an_unattended_session_a_restarted_gateway_forgot_is_replaced(self) -> None:
        self.client = self.engineer_client(self.endpoint, OPTIONS)
        self.relay.session_default = "implicit"
        self.start()
        gone = "session s-1 is not live on this gateway (it ended, expired, or is not yours)"
        self.relay.session_answers = [(Refusal.SESSION_ENDED, gone)]
        self.relay.implicit = "s-2"
        self.relay.asks[-1][0].reset()  # the gateway process that knew s-1 is gone
        self.endpoint.settle()
        _, transport = self.browser()
        self.assertEqual(self.relay.connects, [])
        self.advance(16)
        self.assertEqual([body for _, body, _ in self.relay.asks], [{}, {"resume": "s-1"}, {}])
        self.assertEqual(
            self.reports[-1],
            "gateway 'plant7' no longer knows session s-1 (it restarted); carrying on in new "
            "session s-2",
        )
        [stream] = self.relay.connects
        assert stream.request is not None
        self.assertEqual(stream.request.headers["session"], "s-2")
        self.assertFalse(transport.disconnecting)
        self.assertNoResult(self.client.finished)

    def test_an_unattended_session_ended_by_the_plant_ends_the_client(self) -> None:
        self.client = self.engineer_client(self.endpoint, OPTIONS)
        self.relay.session_default = "implicit"
        self.start()
        self.relay.send(SessionEvent(SessionEventKind.ENDED, session="s-1", why=SWITCHED_OFF))
        self.endpoint.settle()
        self.assertEqual(self.reports[-1], f"session s-1 ended: {SWITCHED_OFF}")
        self.assertEqual(self.exit_code(), 0)


SWITCHED_OFF = "remote access was switched off"


class RefusedAskTests(AttendedTestCase):
    def refused(self, refusal: Refusal, reason: str, *, unattended: bool = False) -> None:
        if unattended:
            self.client = self.engineer_client(self.endpoint, OPTIONS)
        self.relay.session_default = (refusal, reason)
        self.start()

    def test_attended_mode_without_reason_or_code_is_refused_with_the_gateways_words(
        self,
    ) -> None:
        reason = "this gateway is in attended mode: ... `gateway connect --reason ...`"
        self.refused(Refusal.SESSION_REQUIRED, reason, unattended=True)
        self.assertEqual(self.reports, [reason])
        self.assertEqual(self.exit_code(), 1)

    def test_a_bad_token_or_a_gateway_out_of_reach_is_fatal(self) -> None:
        for refusal, reason in [
            (Refusal.BAD_TOKEN, "the engineer token was not accepted"),
            (Refusal.TOKEN_EXPIRED, "the engineer token expired on 2026-05-01"),
            (Refusal.NOT_AUTHORISED, "engineer 'erin' may not reach gateway 'plant7'"),
            (Refusal.UNKNOWN_GATEWAY, "no gateway named 'plant7' has connected to this relay"),
            (Refusal.ACCESS_DISABLED, "remote access is switched off on this gateway"),
        ]:
            with self.subTest(refusal=refusal):
                self.setUp()
                self.refused(refusal, reason)
                self.assertEqual(self.reports, [reason])
                self.assertEqual(self.exit_code(), 1)
                self.stop()

    def test_a_gateway_unknown_to_a_relay_just_back_is_waited_for_a_while(self) -> None:
        unknown = "no gateway named 'plant7' has connected to this relay"
        self.endpoint.refuse = ConnectionRefusedError()
        self.relay.session_default = (Refusal.UNKNOWN_GATEWAY, unknown)
        self.start()
        self.advance(20)
        self.endpoint.refuse = None  # the relay is back, the gateway not yet
        self.advance(30, step=2)
        self.assertNoResult(self.client.finished)
        self.assertEqual(self.reports[-1], f"{unknown}; asking again when it is back")
        self.advance(60, step=2)  # still unknown a minute after: a wrong --gateway
        self.assertEqual(self.reports[-1], unknown)
        self.assertEqual(self.exit_code(), 1)

    def test_an_offline_gateway_is_waited_for_with_one_line(self) -> None:
        offline = "gateway 'plant7' is offline (its tunnel to the relay is down)"
        self.relay.session_answers = [(Refusal.GATEWAY_OFFLINE, offline)] * 5
        self.start()
        self.advance(120, step=5)
        self.assertEqual(self.reports, [f"{offline}; asking again when it is back"])
        self.assertEqual(len(self.relay.asks), 6)
        self.relay.send(WAITING)
        self.endpoint.settle()
        self.assertEqual(self.reports[1], ASKED)
        self.assertNoResult(self.client.finished)


class ResumeTests(AttendedTestCase):
    def live(self) -> None:
        self.start()
        self.relay.send(APPROVED)
        self.endpoint.settle()

    def test_a_relay_restart_resumes_the_session(self) -> None:
        self.live()
        self.endpoint.refuse = ConnectionRefusedError()
        self.endpoint.ends[0].transport.loseConnection()
        self.endpoint.settle()
        self.advance(30)
        # Back, but it has not seen the gateway again yet: waited out, since we knew it.
        self.endpoint.refuse = None
        unknown = "no gateway named 'plant7' has connected to this relay"
        self.relay.session_answers = [(Refusal.UNKNOWN_GATEWAY, unknown)]
        self.advance(60, step=2)
        self.assertEqual(self.relay.asks[-1][1], {"resume": "s-9"})
        self.relay.send(APPROVED)
        self.endpoint.settle()
        self.assertEqual(
            self.reports,
            [
                LET_IN,
                f"connection to relay {RELAY} lost; reconnecting",
                f"{unknown}; asking again when it is back",
                "session s-9 resumed",
            ],
        )
        self.assertNoResult(self.client.finished)

    def test_a_session_gone_by_the_time_we_are_back_ends_the_client(self) -> None:
        self.live()
        gone = "session s-9 is not live on this gateway (it ended, expired, or is not yours)"
        self.relay.session_answers = [(Refusal.SESSION_ENDED, gone)]
        self.endpoint.ends[0].transport.loseConnection()
        self.endpoint.settle()
        self.advance(2)
        self.assertEqual(self.reports[-1], gone)
        self.assertEqual(self.exit_code(), 0)

    def test_connections_wait_while_the_session_is_confirmed_after_a_cut(self) -> None:
        self.live()
        self.relay.asks[-1][0].reset()
        self.endpoint.settle()
        _, transport = self.browser()
        self.assertEqual(self.relay.connects, [])  # held until the gateway answers
        self.advance(16)
        self.assertEqual(self.relay.asks[-1][1], {"resume": "s-9"})
        self.relay.send(APPROVED)
        self.endpoint.settle()
        self.assertEqual(self.reports[-1], "session s-9 resumed")
        [stream] = self.relay.connects
        assert stream.request is not None
        self.assertEqual(stream.request.headers["session"], "s-9")
        self.assertFalse(transport.disconnecting)

    def test_a_garbled_event_line_is_asked_again(self) -> None:
        self.live()
        self.relay.asks[-1][0].write(b"not json\n")
        self.endpoint.settle()
        self.advance(16)
        self.assertEqual(self.relay.asks[-1][1], {"resume": "s-9"})
        self.assertEqual(self.client.keeper.phase, Phase.LIVE)


class TextTests(AttendedTestCase):
    def test_waited_and_when_read_as_people_say_them(self) -> None:
        self.assertEqual(waited_text(42), "0:42")
        self.assertEqual(waited_text(3725), "1:02:05")
        self.assertEqual(when_text("2026-05-28T21:26:40+00:00", NOON), "21:26 UTC")
        self.assertEqual(when_text("2026-05-30T08:00:00+00:00", NOON), "2026-05-30 08:00 UTC")
        self.assertEqual(when_text(None, NOON), "no expiry")
        self.assertEqual(when_text("soon", NOON), "soon")
