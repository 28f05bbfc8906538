"""``AccessPolicy.decide`` with the consent service answering for sessions, in every mode.

Order: the mode, then the allowlist, then the session (live, the engineer's own as the relay
authenticated them, covering the target).  ``view`` is stored and shown, not enforced yet.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.audit import MemoryAuditTrail
from gateway.config import AccessMode, Address, Target, TargetKind
from gateway.edge.access import AccessPolicy, AccessRequest, Allowed, Permission, Refused
from gateway.edge.consent import Actor
from gateway.edge.sessions import ConsentService
from gateway.edge.state import StateDirectory
from gateway.edge.testing import RecordingChannel, RecordingEvents, StreamAborts
from gateway.wire import Refusal, SessionAsk, clean_reason

WEB = Target("web", Address("192.168.10.2", 80))
HMI = Target("hmi", Address("192.168.10.3", 80), kind=TargetKind.HTTP)
ALICE = Actor("operator", "alice")


def asking(target: str = "web", **overrides: Any) -> AccessRequest:
    request = AccessRequest(target=target, engineer="eve", connection_id="r-1", at=1000.0)
    return attrs.evolve(request, **overrides)


class DecideTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        tmp = tempfile.TemporaryDirectory(prefix="test-consent-decide-")
        self.addCleanup(tmp.cleanup)
        state = StateDirectory.open(Path(tmp.name) / "state", "gateway.toml")
        self.audit = MemoryAuditTrail()
        self.policy = AccessPolicy((WEB, HMI), AccessMode.ATTENDED)
        self.consent = ConsentService(
            policy=self.policy,
            state=state,
            audit=self.audit,
            clock=self.clock,
            events=RecordingEvents(),
            streams=StreamAborts(),
        )
        self.policy.sessions = self.consent

    def session(self, engineer: str = "eve", **approve: Any) -> str:
        self.consent.ask(engineer, SessionAsk(reason="ticket 1"), RecordingChannel())
        request = next(r for r in self.consent.requests() if r.engineer == engineer)
        return self.consent.approve(request.id, ALICE, **approve).id

    def allowed(self, request: AccessRequest) -> Allowed:
        decision = self.policy.decide(request)
        if not isinstance(decision, Allowed):
            raise self.failureException(f"refused: {decision}")
        return decision

    def refused(self, request: AccessRequest, refusal: Refusal) -> str:
        decision = self.policy.decide(request)
        if not isinstance(decision, Refused):
            raise self.failureException(f"allowed: {decision}")
        self.assertEqual(decision.refusal, refusal, decision.reason)
        self.assertEqual(clean_reason(decision.reason).decode(), decision.reason)  # header-safe
        return decision.reason


class AttendedDecideTests(DecideTestCase):
    def test_a_stream_without_a_session_is_told_how_to_get_one(self) -> None:
        reason = self.refused(asking(), Refusal.SESSION_REQUIRED)
        self.assertIn("attended mode", reason)
        self.assertIn("session approved on the plant's status page", reason)
        self.assertIn("gateway connect --reason", reason)
        self.assertIn("gateway connect --code", reason)
        self.assertNotIn("not available in this release", reason)

    def test_a_stream_in_the_engineers_live_session_is_allowed_and_names_it(self) -> None:
        session = self.session()
        decision = self.allowed(asking(session=session))
        self.assertEqual((decision.target, decision.session), (WEB, session))
        self.assertEqual(self.allowed(asking("hmi", session=session)).target, HMI)

    def test_another_engineers_session_does_not_open_anything(self) -> None:
        session = self.session()
        reason = self.refused(asking(session=session, engineer="mallory"), Refusal.SESSION_ENDED)
        self.assertEqual(
            reason,
            f"session {session} is not live on this gateway (it ended, expired, or is not "
            "yours); ask the plant for a new one",
        )

    def test_an_ended_expired_or_made_up_session_is_refused(self) -> None:
        ended = self.session()
        self.consent.end(ended, ALICE)
        self.refused(asking(session=ended), Refusal.SESSION_ENDED)
        expiring = self.session(minutes=1)
        self.clock.advance(60)
        self.refused(asking(session=expiring), Refusal.SESSION_ENDED)
        self.refused(asking(session="s-forged"), Refusal.SESSION_ENDED)

    def test_a_target_the_session_does_not_cover_is_refused(self) -> None:
        session = self.session(targets=("web",))
        reason = self.refused(asking("hmi", session=session), Refusal.TARGET_NOT_ALLOWED)
        self.assertEqual(reason, f"session {session} does not cover target 'hmi' (it covers: web)")

    def test_the_allowlist_comes_before_the_session(self) -> None:
        session = self.session()
        reason = self.refused(asking("plc", session=session), Refusal.TARGET_NOT_ALLOWED)
        self.assertEqual(reason, "target 'plc' is not in this gateway's allowlist")

    def test_a_view_session_may_use_http_targets_but_no_tcp_one(self) -> None:
        session = self.session(permission=Permission.VIEW)
        self.allowed(asking("hmi", session=session))  # its requests are then held to view
        reason = self.refused(asking(session=session), Refusal.PERMISSION_DENIED)
        self.assertEqual(
            reason,
            f"session {session} is view-only, and 'web' is a tcp target: the gateway cannot "
            "tell reading from writing there, so only a session with full access can use it",
        )
        # What the stream claims is not what the plant granted.
        self.refused(asking(session=session, permission=Permission.FULL), Refusal.PERMISSION_DENIED)
        full = self.session("bob", permission=Permission.FULL)
        self.allowed(attrs.evolve(asking(session=full), engineer="bob"))


class DisabledDecideTests(DecideTestCase):
    def test_disabled_refuses_even_inside_a_session(self) -> None:
        session = self.session()
        self.policy.set_mode(AccessMode.DISABLED)  # the bare switch: the session is still there
        reason = self.refused(asking(session=session), Refusal.ACCESS_DISABLED)
        self.assertEqual(reason, "remote access is switched off on this gateway")
        self.refused(asking("plc"), Refusal.ACCESS_DISABLED)


class UnattendedDecideTests(DecideTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.policy.set_mode(AccessMode.UNATTENDED)

    def test_a_stream_without_a_session_joins_its_engineers_implicit_session(self) -> None:
        first = self.allowed(asking())
        second = self.allowed(asking("hmi"))
        other = self.allowed(asking(engineer="mallory"))
        self.assertIsNotNone(first.session)
        self.assertEqual(first.session, second.session)
        self.assertNotEqual(first.session, other.session)
        [eve, mallory] = sorted(self.consent.sessions(), key=lambda s: s.engineer)
        self.assertEqual(
            (eve.id, eve.implicit, eve.approved_by), (first.session, True, "unattended mode")
        )
        self.assertEqual(mallory.id, other.session)

    def test_a_stream_naming_a_session_is_held_to_it(self) -> None:
        code = self.consent.create_code(ALICE, targets=("web",))
        channel = RecordingChannel()
        self.consent.ask("eve", SessionAsk(code=code.code), channel)
        session = channel.last.session
        self.assertEqual(self.allowed(asking(session=session)).session, session)
        self.refused(asking("hmi", session=session), Refusal.TARGET_NOT_ALLOWED)
        self.refused(asking(session="s-forged"), Refusal.SESSION_ENDED)

    def test_no_new_implicit_session_without_an_audit_trail(self) -> None:
        known = self.allowed(asking()).session
        self.audit.fail = True
        self.refused(asking(engineer="mallory"), Refusal.AUDIT_UNAVAILABLE)
        self.assertEqual(self.allowed(asking()).session, known)  # live sessions carry on

    def test_unknown_targets_are_refused_before_any_session_is_made(self) -> None:
        self.refused(asking("plc"), Refusal.TARGET_NOT_ALLOWED)
        self.assertEqual(self.consent.sessions(), [])
