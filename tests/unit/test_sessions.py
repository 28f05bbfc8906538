"""The consent service on a ``task.Clock``: requests, approvals, codes, sessions and their ends.

Every time limit is driven by advancing the clock; every decision is checked in the audit trail
(``MemoryAuditTrail``) and in what the engineer's session stream was told (``RecordingChannel``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.audit import MemoryAuditTrail
from gateway.config import AccessMode, Address, ConsentRules, Target, TargetKind
from gateway.edge.access import AccessPolicy, ISessionLookup
from gateway.edge.consent import (
    Actor,
    ConsentRefused,
    EngineerRefused,
    IConsent,
    IEngineerSessions,
    ISessionChannel,
    Permission,
)
from gateway.edge.events import IStreamEvents
from gateway.edge.sessions import ConsentService, duration, starting_mode
from gateway.edge.state import StateDirectory
from gateway.edge.testing import RecordingChannel, RecordingEvents, StreamAborts
from gateway.wire import Refusal, SessionAsk, SessionEventKind

TARGETS = (
    Target("web", Address("192.168.10.2", 80), kind=TargetKind.HTTP),
    Target("hmi", Address("192.168.10.3", 80)),
)
ALICE = Actor("operator", "alice")
BOB = Actor("operator", "bob")
START = 1_700_000_000.0


class ConsentTestCase(SynchronousTestCase):
    mode = AccessMode.ATTENDED

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        tmp = tempfile.TemporaryDirectory(prefix="test-sessions-")
        self.addCleanup(tmp.cleanup)
        self.state_path = Path(tmp.name) / "state"
        self.state = StateDirectory.open(self.state_path, Path(tmp.name) / "gateway.toml")
        self.audit = MemoryAuditTrail()
        self.events = RecordingEvents()
        self.aborts = StreamAborts()
        self.policy = AccessPolicy(
            TARGETS, self.mode, on_mode_change=self.events.access_mode_changed
        )
        self.service = self.make_service()

    def make_service(self, **overrides: Any) -> ConsentService:
        options: dict[str, Any] = {
            "policy": self.policy,
            "state": self.state,
            "audit": self.audit,
            "clock": self.clock,
            "events": self.events,
            "streams": self.aborts,
            "rules": ConsentRules(),
        }
        options.update(overrides)
        service = ConsentService(**options)
        self.policy.sessions = service
        return service

    def ask(self, engineer: str = "eve", **ask: Any) -> RecordingChannel:
        channel = RecordingChannel()
        self.service.ask(engineer, SessionAsk(**ask), channel)
        return channel

    def refused_ask(self, refusal: Refusal, engineer: str = "eve", **ask: Any) -> str:
        channel = RecordingChannel()
        error = self.assertRaises(
            EngineerRefused, self.service.ask, engineer, SessionAsk(**ask), channel
        )
        self.assertEqual(error.refusal, refusal, error.reason)
        self.assertEqual(channel.events, [])  # a refusal sends nothing on the stream
        return str(error.reason)

    def refused(self, kind: str, call: Any, *args: Any, **kwargs: Any) -> str:
        error = self.assertRaises(ConsentRefused, call, *args, **kwargs)
        self.assertEqual(error.kind, kind, error.reason)
        return str(error.reason)

    def request_id(self) -> str:
        [request] = self.service.requests()
        return request.id

    def audited(self, event: str) -> list[dict[str, Any]]:
        return self.audit.events(event)

    def approved(self, **approve: Any) -> tuple[RecordingChannel, str]:
        """An engineer's request, approved by alice; the channel and the session id."""
        channel = self.ask(reason="ticket 4711: recalibrate camera")
        session = self.service.approve(self.request_id(), ALICE, **approve)
        return channel, session.id


class InterfaceTests(ConsentTestCase):
    def test_it_is_the_consent_service_of_every_face(self) -> None:
        for interface in (IConsent, IEngineerSessions, ISessionLookup, IStreamEvents):
            self.assertTrue(verifyObject(interface, self.service))

    def test_the_fakes_provide_what_they_claim(self) -> None:
        self.assertTrue(verifyObject(ISessionChannel, RecordingChannel()))

    def test_durations_read_as_people_say_them(self) -> None:
        self.assertEqual(duration(120), "2 minutes")
        self.assertEqual(duration(60), "1 minute")
        self.assertEqual(duration(300), "5 minutes")
        self.assertEqual(duration(90), "90 seconds")
        self.assertEqual(duration(1), "1 second")


class RequestTests(ConsentTestCase):
    def test_a_request_waits_for_the_plant_and_is_listed(self) -> None:
        channel = self.ask(reason="ticket 4711: recalibrate camera")
        [request] = self.service.requests()
        self.assertTrue(request.id.startswith("r-"))
        self.assertEqual(
            (request.engineer, request.reason), ("eve", "ticket 4711: recalibrate camera")
        )
        self.assertEqual(request.targets, ("hmi", "web"))
        self.assertEqual((request.asked, request.expires), (START, START + 300))
        [waiting] = channel.events
        self.assertEqual(waiting.event, SessionEventKind.WAITING)
        self.assertEqual(waiting.request, request.id)
        self.assertEqual(waiting.asked, "2023-11-14T22:13:20+00:00")
        self.assertEqual(waiting.expires, "2023-11-14T22:18:20+00:00")
        self.assertFalse(channel.closed)
        [record] = self.audited("session.requested")
        self.assertEqual(record["who"], "eve")
        self.assertEqual(record["request"], request.id)
        self.assertEqual(record["reason"], "ticket 4711: recalibrate camera")
        self.assertEqual(self.events.named("request_opened"), [(request,)])

    def test_a_request_nobody_answers_is_denied_after_the_timeout(self) -> None:
        channel = self.ask(reason="pump 3")
        request_id = self.request_id()
        self.clock.advance(299)
        self.assertEqual(len(self.service.requests()), 1)
        self.clock.advance(1)
        self.assertEqual(self.service.requests(), [])
        denied = channel.last
        self.assertEqual(denied.event, SessionEventKind.DENIED)
        self.assertEqual(denied.reason, "nobody at the plant answered within 5 minutes")
        self.assertTrue(channel.closed)
        [record] = self.audited("session.denied")
        self.assertEqual((record["result"], record["who"]), ("expired", "gateway"))
        reason = self.refused("already-decided", self.service.approve, request_id, ALICE)
        self.assertEqual(
            reason,
            f"request {request_id} was already expired: nobody at the plant answered within "
            "5 minutes",
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_request_timeout_comes_from_the_rules(self) -> None:
        self.service = self.make_service(rules=ConsentRules(request_timeout=90))
        channel = self.ask(reason="pump 3")
        self.clock.advance(90)
        self.assertEqual(channel.last.reason, "nobody at the plant answered within 90 seconds")

    def test_an_approval_starts_a_session_and_tells_the_engineer(self) -> None:
        channel = self.ask(reason="ticket 4711")
        request_id = self.request_id()
        session = self.service.approve(request_id, ALICE)
        self.assertTrue(session.id.startswith("s-"))
        self.assertEqual(session.engineer, "eve")
        self.assertEqual(session.targets, ("hmi", "web"))  # default: all allowlisted
        self.assertEqual(session.permission, Permission.FULL)
        self.assertEqual((session.started, session.expires), (START, START + 60 * 60))
        self.assertEqual(session.approved_by, "alice")
        self.assertEqual(self.service.requests(), [])
        self.assertEqual(self.service.sessions(), [session])
        approved = channel.last
        self.assertEqual(approved.event, SessionEventKind.APPROVED)
        self.assertEqual(approved.session, session.id)
        self.assertEqual(approved.targets, ["hmi", "web"])
        self.assertEqual(approved.http_targets, ["web"])  # the client answers browsers there
        self.assertEqual((approved.permission, approved.approved_by), ("full", "alice"))
        self.assertEqual(approved.expires, "2023-11-14T23:13:20+00:00")
        self.assertFalse(channel.closed)
        [record] = self.audited("session.approved")
        self.assertEqual(
            (record["who"], record["request"], record["session"]), ("alice", request_id, session.id)
        )
        self.assertEqual((record["minutes"], record["permission"]), (60, "full"))
        self.assertEqual(len(self.audited("session.started")), 1)
        self.assertEqual(self.events.named("request_closed")[0][1], "approved")

    def test_an_approval_may_narrow_the_targets_shorten_and_grant_view(self) -> None:
        channel, _ = self.approved(minutes=15, targets=("web",), permission=Permission.VIEW)
        [session] = self.service.sessions()
        self.assertEqual((session.targets, session.permission), (("web",), Permission.VIEW))
        self.assertEqual(session.expires, START + 15 * 60)
        self.assertEqual(channel.last.permission, "view")

    def test_a_second_approval_is_refused_naming_the_first(self) -> None:
        self.ask(reason="ticket 4711")
        request_id = self.request_id()
        self.service.approve(request_id, ALICE)
        reason = self.refused("already-decided", self.service.approve, request_id, BOB)
        self.assertEqual(reason, f"request {request_id} was already approved by alice")
        self.refused("already-decided", self.service.deny, request_id, BOB, "no")
        self.assertEqual(len(self.service.sessions()), 1)

    def test_two_staff_approving_at_once_one_wins(self) -> None:
        self.ask(reason="ticket 4711")
        request_id = self.request_id()
        outcomes = []
        for who in (ALICE, BOB):
            try:
                outcomes.append(self.service.approve(request_id, who).approved_by)
            except ConsentRefused as e:
                outcomes.append(e.kind)
        self.assertEqual(outcomes, ["alice", "already-decided"])
        self.assertEqual(len(self.audited("session.approved")), 1)

    def test_an_unknown_request_is_refused(self) -> None:
        reason = self.refused("unknown-request", self.service.approve, "r-nope", ALICE)
        self.assertEqual(reason, "no request 'r-nope' on this gateway (see `gateway requests`)")
        self.refused("unknown-request", self.service.deny, "r-nope", ALICE)

    def test_bad_approvals_are_refused_and_leave_the_request_waiting(self) -> None:
        self.ask(reason="ticket 4711")
        request_id = self.request_id()
        approve = self.service.approve
        self.assertEqual(
            self.refused("bad-minutes", approve, request_id, ALICE, minutes=0),
            "a session lasts 1 to 480 minutes, not 0",
        )
        self.refused("bad-minutes", approve, request_id, ALICE, minutes=481)
        self.assertEqual(
            self.refused("target-not-allowed", approve, request_id, ALICE, targets=("plc",)),
            "target 'plc' is not in this gateway's allowlist (hmi, web)",
        )
        self.refused("no-targets", approve, request_id, ALICE, targets=())
        self.refused("bad-permission", approve, request_id, ALICE, permission="root")
        self.assertEqual([r.id for r in self.service.requests()], [request_id])
        self.assertEqual(self.audited("session.approved"), [])
        self.assertEqual(self.service.approve(request_id, ALICE).approved_by, "alice")

    def test_a_denial_reaches_the_engineer_with_its_reason(self) -> None:
        channel = self.ask(reason="ticket 4711")
        request_id = self.request_id()
        self.service.deny(request_id, ALICE, "not during the night shift")
        denied = channel.last
        self.assertEqual(denied.event, SessionEventKind.DENIED)
        self.assertEqual(denied.reason, "denied by alice: not during the night shift")
        self.assertTrue(channel.closed)
        [record] = self.audited("session.denied")
        self.assertEqual((record["who"], record["result"]), ("alice", "denied"))
        self.assertEqual(record["reason"], "not during the night shift")
        self.assertEqual(self.service.sessions(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_request_is_withdrawn_when_the_engineer_stops_waiting(self) -> None:
        channel = self.ask(reason="ticket 4711")
        request_id = self.request_id()
        self.service.channel_lost(channel)
        self.assertEqual(self.service.requests(), [])
        [record] = self.audited("session.denied")
        self.assertEqual((record["who"], record["result"]), ("eve", "withdrawn"))
        self.refused("already-decided", self.service.approve, request_id, ALICE)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_newer_request_of_the_same_engineer_replaces_the_older(self) -> None:
        first = self.ask(reason="first try")
        second = self.ask(reason="second try")
        [request] = self.service.requests()
        self.assertEqual(request.reason, "second try")
        self.assertEqual(first.last.event, SessionEventKind.DENIED)
        self.assertEqual(first.last.reason, f"replaced by your newer request {request.id}")
        self.assertTrue(first.closed)
        self.assertFalse(second.closed)

    def test_a_reason_is_needed_and_kept_to_one_line(self) -> None:
        self.refused_ask(Refusal.BAD_REQUEST, reason="   ")
        self.ask(reason="line one\nline two\x1b[31m")
        self.assertEqual(self.service.requests()[0].reason, "line one line two?[31m")

    def test_asking_for_targets_off_the_allowlist_is_refused(self) -> None:
        reason = self.refused_ask(Refusal.TARGET_NOT_ALLOWED, reason="x", targets=["plc"])
        self.assertEqual(reason, "target 'plc' is not in this gateway's allowlist")
        self.ask(reason="x", targets=["web"])
        self.assertEqual(self.service.requests()[0].targets, ("web",))

    def test_a_bare_ask_in_attended_mode_needs_a_session(self) -> None:
        reason = self.refused_ask(Refusal.SESSION_REQUIRED)
        self.assertIn("gateway connect --reason", reason)
        self.assertIn("--code", reason)

    def test_several_ways_in_at_once_is_a_bad_request(self) -> None:
        self.refused_ask(Refusal.BAD_REQUEST, reason="x", code="123456")


class SessionTests(ConsentTestCase):
    def test_a_session_ends_at_its_expiry_and_its_streams_are_cut(self) -> None:
        channel, session_id = self.approved(minutes=30)
        self.clock.advance(30 * 60 - 1)
        self.assertEqual(len(self.service.sessions()), 1)
        self.clock.advance(1)
        self.assertEqual(self.service.sessions(), [])
        ended = channel.last
        self.assertEqual(
            (ended.event, ended.session, ended.why), (SessionEventKind.ENDED, session_id, "expired")
        )
        self.assertTrue(channel.closed)
        self.assertEqual(self.aborts.sessions, [session_id])
        [record] = self.audited("session.ended")
        self.assertEqual(
            (record["who"], record["why"], record["seconds"]), ("gateway", "expired", 1800)
        )
        self.assertIsNone(self.service.grant(session_id))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_plant_ends_a_session_and_the_engineer_is_told_why(self) -> None:
        channel, session_id = self.approved()
        ended = self.service.end(session_id, BOB, "shift is over")
        self.assertEqual(ended.id, session_id)
        self.assertEqual(channel.last.why, "ended by the plant: shift is over")
        self.assertTrue(channel.closed)
        self.assertEqual(self.aborts.sessions, [session_id])
        [record] = self.audited("session.ended")
        self.assertEqual(record["who"], "bob")
        self.assertEqual(
            self.events.named("session_ended")[0][1], "ended by the plant: shift is over"
        )
        reason = self.refused("unknown-session", self.service.end, session_id, BOB)
        self.assertEqual(
            reason, f"no live session {session_id!r} on this gateway (see `gateway sessions`)"
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_plant_switches_a_live_session_between_view_and_full(self) -> None:
        channel, session_id = self.approved(permission=Permission.VIEW)
        self.assertIs(self.service.grant(session_id).permission, Permission.VIEW)  # type: ignore[union-attr]
        changed = self.service.set_permission(session_id, Permission.FULL, BOB)
        self.assertIs(changed.permission, Permission.FULL)
        self.assertIs(self.service.grant(session_id).permission, Permission.FULL)  # type: ignore[union-attr]
        self.assertEqual([s.permission for s in self.service.sessions()], [Permission.FULL])
        self.assertEqual(self.aborts.narrowed, [])  # more rights: nothing to cut
        self.service.set_permission(session_id, Permission.VIEW, ALICE)
        self.assertEqual(self.aborts.narrowed, [session_id])
        self.assertEqual(self.aborts.sessions, [])
        records = self.audited("session.changed")
        self.assertEqual(
            [(r["who"], r["session"], r["previous"], r["permission"]) for r in records],
            [("bob", session_id, "view", "full"), ("alice", session_id, "full", "view")],
        )
        self.assertFalse(channel.closed)
        told = [e for e in channel.events if e.event is SessionEventKind.CHANGED]
        self.assertEqual(
            [(e.session, e.permission, e.approved_by) for e in told],
            [(session_id, "full", "bob"), (session_id, "view", "alice")],
        )

    def test_one_target_is_switched_while_the_others_keep_theirs(self) -> None:
        """View on the camera's page while the line runs, full control of the HMI."""
        channel, session_id = self.approved()
        self.service.set_permission(session_id, Permission.VIEW, ALICE, ("web",))
        grant = self.service.grant(session_id)
        assert grant is not None
        self.assertIs(grant.permission_on("web"), Permission.VIEW)
        self.assertIs(grant.permission_on("hmi"), Permission.FULL)
        [shown] = self.service.sessions()
        self.assertEqual(
            {t: shown.permission_on(t).value for t in shown.targets},
            {"hmi": "full", "web": "view"},
        )
        self.assertEqual(self.aborts.narrowed_targets, [("web",)])  # only web's are cut
        [record] = self.audited("session.changed")
        self.assertEqual((record["targets"], record["previous"]), (["web"], "full"))
        told = [e for e in channel.events if e.event is SessionEventKind.CHANGED]
        self.assertEqual([(e.targets, e.permission) for e in told], [(["web"], "view")])
        # Back to full on web: one permission again, nothing left over.
        self.service.set_permission(session_id, Permission.FULL, BOB, ("web",))
        [shown] = self.service.sessions()
        self.assertEqual(shown.per_target, ())
        # The whole session to view, after a per-target switch: one permission for all.
        self.service.set_permission(session_id, Permission.VIEW, ALICE, ("hmi",))
        self.service.set_permission(session_id, Permission.VIEW, ALICE)
        [shown] = self.service.sessions()
        self.assertEqual((shown.permission, shown.per_target), (Permission.VIEW, ()))
        records = self.audited("session.changed")
        self.assertEqual(
            [(r["targets"], r["previous"], r["permission"]) for r in records],
            [
                (["web"], "full", "view"),
                (["web"], "view", "full"),
                (["hmi"], "full", "view"),
                (["web"], "full", "view"),  # hmi was view already: only web changed
            ],
        )

    def test_a_target_the_session_does_not_cover_is_refused(self) -> None:
        _, session_id = self.approved(targets=("web",))
        reason = self.refused(
            "target-not-covered",
            self.service.set_permission,
            session_id,
            Permission.VIEW,
            ALICE,
            ("hmi",),
        )
        self.assertEqual(reason, f"session {session_id} does not cover 'hmi' (it covers: web)")
        self.assertEqual(self.audited("session.changed"), [])

    def test_a_switch_to_the_same_permission_changes_and_records_nothing(self) -> None:
        _, session_id = self.approved()
        self.service.set_permission(session_id, Permission.FULL, BOB)
        self.assertEqual(self.audited("session.changed"), [])

    def test_switching_an_unknown_session_is_refused(self) -> None:
        self.refused(
            "unknown-session", self.service.set_permission, "s-000000", Permission.FULL, BOB
        )
        self.refused(
            "bad-permission", self.service.set_permission, self.approved()[1], "admin", BOB
        )

    def test_end_all_ends_every_session(self) -> None:
        first, _ = self.approved()
        second = self.ask("mallory", reason="other ticket")
        self.service.approve(self.request_id(), ALICE)
        ended = self.service.end_all(ALICE)
        self.assertEqual(len(ended), 2)
        self.assertEqual(self.service.sessions(), [])
        self.assertEqual(first.last.why, "ended by the plant")
        self.assertEqual(second.last.why, "ended by the plant")

    def test_a_session_ends_when_the_engineers_client_is_gone_for_the_grace_period(self) -> None:
        channel, session_id = self.approved()
        self.service.channel_lost(channel)
        self.clock.advance(119)
        self.assertEqual(len(self.service.sessions()), 1)
        self.clock.advance(1)
        self.assertEqual(self.service.sessions(), [])
        self.assertEqual(self.aborts.sessions, [session_id])
        [record] = self.audited("session.ended")
        self.assertEqual(record["why"], "the engineer's client was gone for 2 minutes")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_coming_back_within_the_grace_period_resumes_the_session(self) -> None:
        channel, session_id = self.approved()
        self.service.channel_lost(channel)
        self.clock.advance(100)
        back = self.ask(resume=session_id)
        self.assertEqual(back.last.event, SessionEventKind.APPROVED)
        self.assertEqual(back.last.session, session_id)
        self.clock.advance(1000)
        self.assertEqual(len(self.service.sessions()), 1)  # the grace timer was cancelled
        self.service.channel_lost(back)
        self.clock.advance(120)
        self.assertEqual(self.service.sessions(), [])

    def test_open_connections_keep_the_engineer_present(self) -> None:
        channel, session_id = self.approved()
        connection = _connection("r-1", session_id)
        self.service.stream_opened(connection)
        self.assertEqual(self.service.sessions()[0].connections, ("r-1",))
        self.service.channel_lost(channel)
        self.clock.advance(1000)
        self.assertEqual(len(self.service.sessions()), 1)
        self.service.stream_closed(connection, 1, 2, "closed")
        self.assertEqual(self.service.sessions()[0].connections, ())
        self.clock.advance(120)
        self.assertEqual(self.service.sessions(), [])

    def test_only_its_engineer_can_resume_a_session(self) -> None:
        _, session_id = self.approved()
        reason = self.refused_ask(Refusal.SESSION_ENDED, "mallory", resume=session_id)
        self.assertIn("not live on this gateway", reason)
        self.refused_ask(Refusal.SESSION_ENDED, resume="s-gone")

    def test_the_grace_period_comes_from_the_rules(self) -> None:
        self.service = self.make_service(rules=ConsentRules(grace_seconds=30))
        channel, _ = self.approved()
        self.service.channel_lost(channel)
        self.clock.advance(30)
        [record] = self.audited("session.ended")
        self.assertEqual(record["why"], "the engineer's client was gone for 30 seconds")

    def test_the_lookup_describes_a_live_session_to_the_decision(self) -> None:
        _, session_id = self.approved(targets=("web",), permission=Permission.VIEW)
        grant = self.service.grant(session_id)
        assert grant is not None
        self.assertEqual((grant.session, grant.engineer), (session_id, "eve"))
        self.assertEqual((grant.targets, grant.permission), (frozenset({"web"}), Permission.VIEW))
        self.assertIsNone(self.service.grant("s-nope"))


class CodeTests(ConsentTestCase):
    def test_a_code_is_six_random_digits_and_never_recorded(self) -> None:
        grant = self.service.create_code(ALICE)
        self.assertRegex(grant.code, r"^[0-9]{6}$")
        self.assertTrue(grant.id.startswith("c-"))
        self.assertEqual(
            (grant.targets, grant.permission, grant.minutes), (("hmi", "web"), Permission.FULL, 60)
        )
        self.assertEqual(grant.expires, START + 600)
        [record] = self.audited("code.created")
        self.assertEqual((record["who"], record["code"]), ("alice", grant.id))
        self.assertNotIn(grant.code, repr(self.audit.records))
        codes = {self.service.create_code(ALICE).code for _ in range(10)}
        self.assertEqual(len(codes), 10)

    def test_a_code_lets_the_first_engineer_in_at_once(self) -> None:
        grant = self.service.create_code(
            ALICE, minutes=20, targets=("web",), permission=Permission.VIEW
        )
        channel = self.ask(code=grant.code)
        approved = channel.last
        self.assertEqual(approved.event, SessionEventKind.APPROVED)
        self.assertEqual((approved.targets, approved.permission), (["web"], "view"))
        self.assertEqual(approved.approved_by, f"code {grant.code[:3]}... from alice")
        [session] = self.service.sessions()
        self.assertEqual((session.engineer, session.expires), ("eve", START + 20 * 60))
        [used] = self.audited("code.used")
        self.assertEqual(
            (used["who"], used["code"], used["session"]), ("eve", grant.id, session.id)
        )
        self.assertNotIn(grant.code, repr(self.audit.records))

    def test_a_code_works_once_only(self) -> None:
        grant = self.service.create_code(ALICE)
        self.ask(code=grant.code)
        reason = self.refused_ask(Refusal.CODE_INVALID, "mallory", code=grant.code)
        self.assertEqual(reason, "this code was used already: a code lets one engineer in, once")
        self.assertEqual(len(self.service.sessions()), 1)
        self.assertEqual(self.audited("code.failed")[0]["result"], "used")

    def test_a_code_expires_after_ten_minutes(self) -> None:
        grant = self.service.create_code(ALICE)
        self.clock.advance(600)
        reason = self.refused_ask(Refusal.CODE_INVALID, code=grant.code)
        self.assertEqual(
            reason, "this code has expired (codes work for 10 minutes); ask the plant for a new one"
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_code_is_good_until_its_last_second(self) -> None:
        grant = self.service.create_code(ALICE)
        self.clock.advance(599)
        self.assertEqual(self.ask(code=grant.code).last.event, SessionEventKind.APPROVED)

    def test_a_code_with_letters_is_refused_without_counting(self) -> None:
        for text in ("12a456", "12345", "1234567", "١٢٣٤٥٦"):
            reason = self.refused_ask(Refusal.CODE_INVALID, code=text)
            self.assertEqual(reason, "a session code is 6 digits, like 123456")
        self.assertIsNone(self.service.code_entry_locked_until())
        self.assertEqual(self.audited("code.failed"), [])

    def test_spaces_in_a_code_read_out_over_the_phone_are_fine(self) -> None:
        grant = self.service.create_code(ALICE)
        spaced = f"{grant.code[:3]} {grant.code[3:]}"
        self.assertEqual(self.ask(code=spaced).last.event, SessionEventKind.APPROVED)

    def test_a_code_limited_to_targets_covers_only_those(self) -> None:
        grant = self.service.create_code(ALICE, targets=("web",))
        reason = self.refused_ask(Refusal.TARGET_NOT_ALLOWED, code=grant.code, targets=["hmi"])
        self.assertEqual(reason, "this code covers only web")
        self.assertEqual(self.ask(code=grant.code, targets=["web"]).last.targets, ["web"])

    def test_five_wrong_codes_lock_code_entry_even_for_the_right_one(self) -> None:
        reasons = []
        for attempt in range(5):
            reasons.append(
                self.refused_ask(Refusal.CODE_INVALID, "mallory", code=f"00000{attempt}")
            )
            self.clock.advance(1)
        self.assertEqual(
            reasons[0], "this code is not valid on this gateway; check the digits with the plant"
        )
        self.assertIn(
            "after 5 wrong codes code entry is locked until 2023-11-14T22:23:24+00:00", reasons[4]
        )
        until = self.service.code_entry_locked_until()
        self.assertEqual(until, START + 4 + 600)
        grant = self.service.create_code(ALICE)
        reason = self.refused_ask(Refusal.TOO_MANY_ATTEMPTS, code=grant.code)
        self.assertEqual(
            reason,
            "code entry on this gateway is locked after 5 wrong codes, until "
            "2023-11-14T22:23:24+00:00; ask the plant to approve a request instead, or wait",
        )
        self.assertEqual(len(self.audited("code.failed")), 6)
        [locked] = self.audited("code.locked")
        self.assertEqual((locked["until"], locked["failures"]), ("2023-11-14T22:23:24+00:00", 5))
        self.assertEqual(self.service.sessions(), [])
        # Ten minutes later code entry is open again, and the code (still valid) works.
        assert until is not None
        self.clock.advance(until - self.clock.seconds())
        self.assertIsNone(self.service.code_entry_locked_until())
        self.assertEqual(self.ask(code=grant.code).last.event, SessionEventKind.APPROVED)

    def test_wrong_codes_spread_over_more_than_ten_minutes_do_not_lock(self) -> None:
        for attempt in range(8):
            self.refused_ask(Refusal.CODE_INVALID, code=f"00000{attempt}")
            self.clock.advance(200)
        self.assertIsNone(self.service.code_entry_locked_until())

    def test_codes_are_refused_while_access_is_disabled(self) -> None:
        self.service.set_mode(AccessMode.DISABLED, ALICE)
        self.refused("access-disabled", self.service.create_code, ALICE)

    def test_bad_code_requests_are_refused(self) -> None:
        self.refused("bad-minutes", self.service.create_code, ALICE, minutes=0)
        self.refused("target-not-allowed", self.service.create_code, ALICE, targets=("plc",))
        self.assertEqual(self.audited("code.created"), [])


class ModeTests(ConsentTestCase):
    def test_a_mode_change_is_saved_audited_and_told(self) -> None:
        old = self.service.set_mode(AccessMode.UNATTENDED, ALICE)
        self.assertIs(old, AccessMode.ATTENDED)
        self.assertIs(self.service.mode(), AccessMode.UNATTENDED)
        self.assertIs(self.policy.mode, AccessMode.UNATTENDED)
        [record] = self.audited("mode.changed")
        self.assertEqual(
            (record["who"], record["old"], record["new"]), ("alice", "attended", "unattended")
        )
        self.assertEqual(
            self.events.named("access_mode_changed"), [(AccessMode.ATTENDED, AccessMode.UNATTENDED)]
        )
        self.assertIs(self.service.set_mode(AccessMode.UNATTENDED, ALICE), AccessMode.UNATTENDED)
        self.assertEqual(len(self.audited("mode.changed")), 1)  # no change, no record

    def test_the_plants_last_choice_wins_after_a_restart(self) -> None:
        self.service.set_mode(AccessMode.DISABLED, ALICE)
        again = StateDirectory.open(self.state_path, "gateway.toml")
        self.assertIs(starting_mode(again, AccessMode.UNATTENDED), AccessMode.DISABLED)
        policy = AccessPolicy(TARGETS, starting_mode(again, AccessMode.UNATTENDED))
        restarted = ConsentService(
            policy=policy, state=again, audit=self.audit, clock=self.clock, events=self.events
        )
        self.assertIs(restarted.mode(), AccessMode.DISABLED)
        restarted.set_mode(AccessMode.ATTENDED, ALICE)
        self.assertIs(starting_mode(again, AccessMode.UNATTENDED), AccessMode.ATTENDED)

    def test_without_a_saved_choice_the_configured_mode_applies(self) -> None:
        self.assertIs(starting_mode(self.state, AccessMode.UNATTENDED), AccessMode.UNATTENDED)

    def test_switching_off_ends_every_session_and_request_and_cuts_every_stream(self) -> None:
        session_channel, session_id = self.approved()
        waiting = self.ask("mallory", reason="other ticket")
        self.service.set_mode(AccessMode.DISABLED, BOB)
        self.assertEqual(session_channel.last.why, "remote access was switched off")
        self.assertEqual(waiting.last.event, SessionEventKind.DENIED)
        self.assertEqual(waiting.last.reason, "remote access was switched off")
        self.assertEqual((self.service.sessions(), self.service.requests()), ([], []))
        self.assertEqual(self.aborts.sessions, [session_id])
        self.assertEqual(self.aborts.all, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        reason = self.refused_ask(Refusal.ACCESS_DISABLED, reason="please")
        self.assertEqual(reason, "remote access is switched off on this gateway")

    def test_modes_are_taken_by_name_too(self) -> None:
        self.service.set_mode("unattended", ALICE)  # type: ignore[arg-type]
        self.assertIs(self.service.mode(), AccessMode.UNATTENDED)


class UnattendedTests(ConsentTestCase):
    mode = AccessMode.UNATTENDED

    def test_a_bare_ask_gets_an_implicit_session_without_expiry(self) -> None:
        channel = self.ask()
        approved = channel.last
        self.assertEqual(approved.event, SessionEventKind.APPROVED)
        self.assertEqual(approved.approved_by, "unattended mode")
        self.assertIsNone(approved.expires)
        [session] = self.service.sessions()
        self.assertTrue(session.implicit)
        self.assertIsNone(session.expires)
        self.assertEqual(session.targets, ("hmi", "web"))
        [started] = self.audited("session.started")
        self.assertTrue(started["implicit"])
        self.assertEqual(self.events.named("session_started")[0][1], "unattended")

    def test_each_engineer_has_one_implicit_session(self) -> None:
        first = self.service.implicit_session("eve")
        assert not hasattr(first, "refusal")
        again = self.service.implicit_session("eve")
        other = self.service.implicit_session("mallory")
        self.assertEqual(first, again)
        self.assertNotEqual(first, other)
        self.assertEqual(self.ask().last.session, first.session)
        self.assertEqual(len(self.service.sessions()), 2)

    def test_an_implicit_session_ends_when_its_engineer_had_no_stream_for_the_grace_period(
        self,
    ) -> None:
        grant = self.service.implicit_session("eve")
        session_id = grant.session  # type: ignore[union-attr]
        connection = _connection("g-1", session_id)
        self.service.stream_opened(connection)
        self.clock.advance(1000)
        self.service.stream_closed(connection, 0, 0, "closed")
        self.clock.advance(119)
        self.assertEqual(len(self.service.sessions()), 1)
        self.clock.advance(1)
        self.assertEqual(self.service.sessions(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_staff_can_end_an_implicit_session(self) -> None:
        channel = self.ask()
        session_id = channel.last.session
        assert session_id is not None
        self.service.end(session_id, ALICE, "not now")
        self.assertEqual(channel.last.why, "ended by the plant: not now")
        self.assertEqual(self.aborts.sessions, [session_id])

    def test_a_request_with_a_reason_is_let_in_at_once(self) -> None:
        channel = self.ask(reason="ticket 4711")
        self.assertEqual(channel.last.event, SessionEventKind.APPROVED)
        self.assertEqual(self.service.sessions()[0].reason, "ticket 4711")
        self.assertEqual(self.service.requests(), [])

    def test_switching_to_attended_ends_the_implicit_sessions_only(self) -> None:
        implicit = self.ask()
        grant = self.service.create_code(ALICE)
        coded = self.ask("mallory", code=grant.code)
        self.service.set_mode(AccessMode.ATTENDED, ALICE)
        self.assertIn("switched to attended mode", implicit.last.why or "")
        self.assertFalse(coded.closed)
        [session] = self.service.sessions()
        self.assertEqual(session.engineer, "mallory")


class AuditFailureTests(ConsentTestCase):
    def test_new_requests_codes_and_approvals_are_refused_while_live_sessions_carry_on(
        self,
    ) -> None:
        channel, session_id = self.approved()
        self.ask("mallory", reason="waiting already")
        waiting_id = self.request_id()
        self.audit.fail = True
        reason = self.refused_ask(Refusal.AUDIT_UNAVAILABLE, "trent", reason="new one")
        self.assertIn("cannot write its audit trail", reason)
        self.refused("audit-unavailable", self.service.approve, waiting_id, ALICE)
        self.assertEqual([r.id for r in self.service.requests()], [waiting_id])
        self.refused("audit-unavailable", self.service.create_code, ALICE)
        self.refused("audit-unavailable", self.service.set_mode, AccessMode.UNATTENDED, ALICE)
        self.assertIs(self.service.mode(), AccessMode.ATTENDED)
        self.assertIs(starting_mode(self.state, AccessMode.UNATTENDED), AccessMode.UNATTENDED)
        # The live session carries on, and ending things still works.
        self.assertIsNotNone(self.service.grant(session_id))
        self.assertFalse(channel.closed)
        self.service.deny(waiting_id, ALICE, "no")
        self.service.end(session_id, ALICE)
        self.assertTrue(channel.closed)
        self.assertGreaterEqual(len(self.events.named("audit_failed")), 5)
        # Once the trail can be written again, new sessions are possible.
        self.audit.fail = False
        self.ask("trent", reason="new one")
        self.assertEqual(len(self.service.requests()), 1)

    def test_full_access_needs_its_record_while_view_always_applies(self) -> None:
        _, session_id = self.approved()
        self.audit.fail = True
        self.service.set_permission(session_id, Permission.VIEW, ALICE)  # narrowing: always
        self.assertIs(self.service.grant(session_id).permission, Permission.VIEW)  # type: ignore[union-attr]
        self.refused(
            "audit-unavailable", self.service.set_permission, session_id, Permission.FULL, ALICE
        )
        self.assertIs(self.service.grant(session_id).permission, Permission.VIEW)  # type: ignore[union-attr]
        self.audit.fail = False
        self.service.set_permission(session_id, Permission.FULL, ALICE)
        self.assertIs(self.service.grant(session_id).permission, Permission.FULL)  # type: ignore[union-attr]

    def test_switching_off_works_even_when_it_cannot_be_recorded(self) -> None:
        self.audit.fail = True
        self.service.set_mode(AccessMode.DISABLED, ALICE)
        self.assertIs(self.service.mode(), AccessMode.DISABLED)

    def test_an_implicit_session_needs_its_record(self) -> None:
        self.service.set_mode(AccessMode.UNATTENDED, ALICE)
        self.audit.fail = True
        refused = self.service.implicit_session("eve")
        self.assertEqual(refused.refusal, Refusal.AUDIT_UNAVAILABLE)  # type: ignore[union-attr]
        self.assertEqual(self.service.sessions(), [])


class ChangeTests(ConsentTestCase):
    def test_when_changed_fires_on_requests_sessions_and_modes(self) -> None:
        changed = self.service.when_changed()
        self.assertNoResult(changed)
        channel = self.ask(reason="x")
        self.successResultOf(changed)
        changed = self.service.when_changed()
        self.service.approve(self.request_id(), ALICE)
        self.successResultOf(changed)
        changed = self.service.when_changed()
        self.service.set_mode(AccessMode.DISABLED, ALICE)
        self.successResultOf(changed)
        self.assertTrue(channel.closed)

    def test_a_cancelled_wait_is_forgotten(self) -> None:
        changed = self.service.when_changed()
        changed.cancel()
        self.failureResultOf(changed)
        self.ask(reason="x")  # firing must not touch the cancelled Deferred again


class StopTests(ConsentTestCase):
    def test_stopping_cancels_every_timer_and_tells_the_engineers(self) -> None:
        self.service.startService()
        session_channel, _ = self.approved()
        waiting = self.ask("mallory", reason="x")
        self.service.create_code(ALICE)
        for attempt in range(5):
            self.assertRaises(EngineerRefused, self.ask, "trent", code=f"99999{attempt}")
        self.service.channel_lost(session_channel)  # a grace timer too
        self.assertNotEqual(self.clock.getDelayedCalls(), [])
        self.service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(waiting.last.reason, "the gateway is shutting down")
        self.assertEqual(self.aborts.sessions, [])  # the tunnel drains the streams
        self.assertEqual(self.service.sessions(), [])
        self.refused_ask(Refusal.SHUTTING_DOWN, reason="too late")


def _connection(connection_id: str, session: str) -> Any:
    from gateway.edge.events import ConnectionRecord
    from gateway.splice import SpliceEnd

    return ConnectionRecord(
        id=connection_id,
        target="web",
        address="192.168.10.2:80",
        engineer="eve",
        session=session,
        started=START,
        to_target=SpliceEnd(),
        from_target=SpliceEnd(),
    )
