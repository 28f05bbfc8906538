# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""Tests for the gateway's access decision (`gateway.edge.access`).

Deny by default: a stream is allowed only when the access mode allows remote access right now and
its target is on the allowlist, and the address it goes to always comes from gateway.toml.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import AccessMode, Address, Target
from gateway.edge.access import AccessPolicy, AccessRequest, Allowed, Permission, Refused
from gateway.wire import Refusal, clean_reason

WEB = Target("web", Address("192.168.10.2", 80))
HMI = Target("hmi", Address("192.168.10.3", 8080), connect_timeout=2.0)
TARGETS = (WEB, HMI)


def asking(target: str, **overrides: Any) -> AccessRequest:
    """A stream to ``target`` as the forwarder would put it to the policy."""
    request = AccessRequest(target=target, engineer="alice", connection_id="r-1", at=1000.0)
    return attrs.evolve(request, **overrides)


class PolicyTestCase(SynchronousTestCase):
    def allowed(self, policy: AccessPolicy, name: str) -> Allowed:
        decision = policy.decide(asking(name))
        if not isinstance(decision, Allowed):
            raise self.failureException(f"{name!r} refused: {decision}")
        return decision

    def refused(self, policy: AccessPolicy, name: str, refusal: Refusal) -> Refused:
        decision = policy.decide(asking(name))
        if not isinstance(decision, Refused):
            raise self.failureException(f"{name!r} allowed: {decision}")
        self.assertEqual(decision.refusal, refusal, decision.reason)
        self.assertEqual(clean_reason(decision.reason).decode(), decision.reason)  # header-safe
        return decision


class DisabledTests(PolicyTestCase):
    def test_disabled_refuses_an_allowlisted_target(self) -> None:
        policy = AccessPolicy(TARGETS, AccessMode.DISABLED)
        for name in ("web", "hmi"):
            refused = self.refused(policy, name, Refusal.ACCESS_DISABLED)
            self.assertEqual(refused.refusal.token, "access-disabled")
            self.assertEqual(refused.refusal.status, 403)
            self.assertIn("switched off", refused.reason)

    def test_disabled_refuses_unknown_targets_without_revealing_the_allowlist(self) -> None:
        policy = AccessPolicy(TARGETS, AccessMode.DISABLED)
        refused = self.refused(policy, "plc", Refusal.ACCESS_DISABLED)
        self.assertNotIn("allowlist", refused.reason)


class UnattendedTests(PolicyTestCase):
    def test_unattended_allows_an_allowlisted_target(self) -> None:
        policy = AccessPolicy(TARGETS, AccessMode.UNATTENDED)
        self.assertEqual(self.allowed(policy, "web"), Allowed(WEB))
        self.assertEqual(self.allowed(policy, "hmi"), Allowed(HMI))

    def test_the_address_always_comes_from_the_configuration(self) -> None:
        policy = AccessPolicy(TARGETS, AccessMode.UNATTENDED)
        self.assertEqual(self.allowed(policy, "web").target.address, Address("192.168.10.2", 80))
        self.assertEqual(self.allowed(policy, "hmi").target.connect_timeout, 2.0)
        for name in ("192.168.10.2:80", "192.168.10.2:22", "web:22", "10.0.0.1:502", "[::1]:80"):
            self.refused(policy, name, Refusal.TARGET_NOT_ALLOWED)

    def test_unattended_refuses_a_target_not_on_the_allowlist_naming_it(self) -> None:
        policy = AccessPolicy(TARGETS, AccessMode.UNATTENDED)
        refused = self.refused(policy, "plc", Refusal.TARGET_NOT_ALLOWED)
        self.assertEqual(refused.refusal.token, "target-not-allowed")
        self.assertEqual(refused.refusal.status, 403)
        self.assertEqual(refused.reason, "target 'plc' is not in this gateway's allowlist")

    def test_target_names_are_matched_exactly(self) -> None:
        policy = AccessPolicy(TARGETS, AccessMode.UNATTENDED)
        for name in ("WEB", " web", "web ", "we", "web.", ""):
            self.refused(policy, name, Refusal.TARGET_NOT_ALLOWED)

    def test_empty_allowlist_refuses_everything(self) -> None:
        policy = AccessPolicy((), AccessMode.UNATTENDED)
        self.refused(policy, "web", Refusal.TARGET_NOT_ALLOWED)
        self.assertEqual(policy.target_names, [])


class AttendedTests(PolicyTestCase):
    def test_attended_refuses_an_allowlisted_target_without_an_approved_session(self) -> None:
        policy = AccessPolicy(TARGETS, AccessMode.ATTENDED)
        refused = self.refused(policy, "web", Refusal.SESSION_REQUIRED)
        self.assertEqual(refused.refusal.token, "session-required")
        self.assertEqual(refused.refusal.status, 403)
        self.assertIn("attended mode", refused.reason)
        self.assertIn("session approved on the plant's status page", refused.reason)

    def test_attended_refuses_an_unknown_target_as_not_allowed(self) -> None:
        policy = AccessPolicy(TARGETS, AccessMode.ATTENDED)
        self.refused(policy, "plc", Refusal.TARGET_NOT_ALLOWED)


class ModeChangeTests(PolicyTestCase):
    def test_mode_can_be_changed_while_running(self) -> None:
        policy = AccessPolicy(TARGETS, AccessMode.ATTENDED)
        self.refused(policy, "web", Refusal.SESSION_REQUIRED)
        policy.set_mode(AccessMode.UNATTENDED)
        self.assertEqual(self.allowed(policy, "web"), Allowed(WEB))
        policy.set_mode(AccessMode.DISABLED)
        self.refused(policy, "web", Refusal.ACCESS_DISABLED)
        policy.set_mode(AccessMode.UNATTENDED)
        self.allowed(policy, "web")

    def test_every_mode_change_is_told_once_with_old_and_new(self) -> None:
        changes: list[tuple[AccessMode, AccessMode]] = []
        policy = AccessPolicy(
            TARGETS, AccessMode.ATTENDED, on_mode_change=lambda *c: changes.append(c)
        )
        self.assertIs(policy.set_mode(AccessMode.DISABLED), AccessMode.ATTENDED)
        policy.set_mode(AccessMode.DISABLED)  # no change: nothing to tell
        policy.set_mode(AccessMode.UNATTENDED)
        self.assertEqual(
            changes,
            [
                (AccessMode.ATTENDED, AccessMode.DISABLED),
                (AccessMode.DISABLED, AccessMode.UNATTENDED),
            ],
        )
        self.assertIs(policy.mode, AccessMode.UNATTENDED)

    def test_the_allowlist_is_listed_by_name(self) -> None:
        self.assertEqual(AccessPolicy(TARGETS, AccessMode.DISABLED).target_names, ["hmi", "web"])


class RequestTests(PolicyTestCase):
    def test_the_decision_rests_on_the_name_not_on_the_rest_of_the_request(self) -> None:
        """Until sessions exist, who asks, with which claimed session and permission, on which
        connection and when changes nothing: each mode decides as it did on a bare name."""
        variants: list[dict[str, Any]] = [
            {},
            {"engineer": "mallory", "connection_id": "g-7", "at": 0.0},
            {"session": "s-forged"},
            {"permission": Permission.VIEW},
        ]
        for mode in AccessMode:
            policy = AccessPolicy(TARGETS, mode)
            for name in ("web", "plc"):
                first = policy.decide(asking(name))
                for overrides in variants:
                    self.assertEqual(policy.decide(asking(name, **overrides)), first)

    def test_a_claimed_session_does_not_open_attended_mode(self) -> None:
        policy = AccessPolicy(TARGETS, AccessMode.ATTENDED)
        decision = policy.decide(asking("web", session="s-1"))
        self.assertIsInstance(decision, Refused)
        assert isinstance(decision, Refused)
        self.assertEqual(decision.refusal, Refusal.SESSION_REQUIRED)

    def test_unattended_streams_belong_to_no_session(self) -> None:
        policy = AccessPolicy(TARGETS, AccessMode.UNATTENDED)
        self.assertIsNone(self.allowed(policy, "web").session)
