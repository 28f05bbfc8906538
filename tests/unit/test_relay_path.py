"""The engineer path's steps on their own: authenticate, authorise, locate, and the verdict.

(`gateway.relay.path`, `gateway.relay.authorisation`, `gateway.relay.refusals`)
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.relay.authorisation import EveryAuthenticatedEngineer, IEngineerAuthorisation
from gateway.relay.credentials import Engineer
from gateway.relay.directory import GatewayLocation, IGatewayDirectory, MemoryGatewayDirectory
from gateway.relay.metrics import RelayMetrics
from gateway.relay.path import (
    Admitted,
    EngineerPath,
    EngineerRequest,
    new_connection_id,
    session_problem,
)
from gateway.relay.refusals import Refused
from gateway.tunnel.stream import StreamRequest
from gateway.wire import GATEWAY_INFO_PATH, SESSION_PATH, GatewayInfo, Refusal
from tests.unit.test_relay_engineers import OneToken, OnlyGateway


@implementer(IGatewayDirectory)
class AskedDirectory(MemoryGatewayDirectory):
    """The memory directory, noting which gateways it was asked about."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.asked: list[str] = []

    def locate(self, gateway_id: str) -> Deferred[GatewayLocation]:
        self.asked.append(gateway_id)
        return super().locate(gateway_id)


def request(
    *,
    token: str | None = "good",
    gateway: str = "plant7",
    method: str = "CONNECT",
    path: str = "",
    target: str = "web",
    session: str | None = None,
) -> EngineerRequest:
    return EngineerRequest("c-0000abcd", token, gateway, method, path, target, session)


class EngineerPathTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = AskedDirectory(self.clock)
        self.metrics = RelayMetrics(CollectorRegistry())
        self.path = self.build()

    def build(self, authorisation: IEngineerAuthorisation | None = None) -> EngineerPath:
        return EngineerPath(
            credentials=OneToken(),
            authorisation=authorisation or EveryAuthenticatedEngineer(),
            directory=self.directory,
            metrics=self.metrics,
        )

    def refused(self, d: Deferred[GatewayInfo | Admitted]) -> Refused:
        refused = self.failureResultOf(d, Refused).value
        assert isinstance(refused, Refused)
        return refused

    def test_a_good_token_authenticates_its_engineer(self) -> None:
        self.assertEqual(self.path.authenticate(request()), Engineer("alice"))
        self.assertEqual(self.metrics.bad_tokens._value.get(), 0)

    def test_a_bad_or_missing_token_is_refused_and_counted(self) -> None:
        for token in ("bad", None, ""):
            refused = self.refused(self.path.admit(request(token=token)))
            self.assertEqual(
                (refused.refusal, refused.reason),
                (Refusal.BAD_TOKEN, "the engineer token was not accepted"),
            )
        self.assertEqual(self.metrics.bad_tokens._value.get(), 3)
        self.assertEqual(self.directory.asked, [])

    def test_an_unknown_gateway_is_refused(self) -> None:
        refused = self.refused(self.path.admit(request(gateway="x")))
        self.assertEqual(
            (refused.refusal, refused.reason),
            (Refusal.UNKNOWN_GATEWAY, "no gateway named 'x' has connected to this relay"),
        )

    def test_an_offline_gateway_is_refused(self) -> None:
        self.directory.gateway_connected("x")
        self.directory.gateway_disconnected("x")
        refused = self.refused(self.path.admit(request(gateway="x")))
        self.assertEqual(
            (refused.refusal, refused.reason),
            (Refusal.GATEWAY_OFFLINE, "gateway 'x' is offline (its tunnel to the relay is down)"),
        )

    def test_an_online_gateway_admits_the_engineer(self) -> None:
        self.directory.gateway_connected("plant7")
        asked = request()
        verdict = self.successResultOf(self.path.admit(asked))
        self.assertEqual(verdict, Admitted(asked, Engineer("alice")))

    def test_anything_but_connect_to_a_target_is_a_bad_request(self) -> None:
        self.directory.gateway_connected("plant7")
        for asked in (request(method="GET", path="/"), request(target="")):
            refused = self.refused(self.path.admit(asked))
            self.assertEqual(
                (refused.refusal, refused.reason),
                (Refusal.BAD_REQUEST, "expected CONNECT to a target name"),
            )

    def test_gateway_info_answers_for_known_gateways_online_or_not(self) -> None:
        info = request(method="GET", path=GATEWAY_INFO_PATH, target="relay")
        self.assertEqual(self.refused(self.path.admit(info)).refusal, Refusal.UNKNOWN_GATEWAY)
        self.directory.gateway_connected("plant7")
        self.assertEqual(
            self.successResultOf(self.path.admit(info)), GatewayInfo("plant7", online=True)
        )
        self.directory.gateway_disconnected("plant7")
        self.assertEqual(
            self.successResultOf(self.path.admit(info)), GatewayInfo("plant7", online=False)
        )

    def test_authorisation_comes_before_the_directory_is_asked(self) -> None:
        self.directory.gateway_connected("plant7")
        authorisation = OnlyGateway("plant8")
        refused = self.refused(self.build(authorisation).admit(request()))
        self.assertEqual(refused.reason, "not for 'plant7'")
        self.assertEqual(authorisation.asked, [(Engineer("alice"), "plant7")])
        self.assertEqual(self.directory.asked, [])

    def test_an_authorised_engineer_goes_on_to_the_directory(self) -> None:
        self.directory.gateway_connected("plant7")
        self.successResultOf(self.build(OnlyGateway("plant7")).admit(request()))
        self.assertEqual(self.directory.asked, ["plant7"])

    def test_every_authenticated_engineer_is_authorised_at_once(self) -> None:
        everyone = EveryAuthenticatedEngineer()
        verifyObject(IEngineerAuthorisation, everyone)
        self.assertIsNone(self.successResultOf(everyone.authorise(Engineer("bob"), "any")))

    def test_the_verdict_is_ready_in_the_same_turn(self) -> None:
        self.directory.gateway_connected("plant7")
        self.assertTrue(self.path.admit(request()).called)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_fake_directory_provides_the_interface(self) -> None:
        verifyObject(IGatewayDirectory, self.directory)

    def test_a_session_ask_is_admitted_to_go_through(self) -> None:
        self.directory.gateway_connected("plant7")
        asked = request(method="POST", path=SESSION_PATH, target="relay")
        self.assertTrue(asked.wants_session)
        self.assertEqual(self.successResultOf(self.path.admit(asked)), Admitted(asked, ALICE))

    def test_a_session_ask_is_refused_like_a_connect(self) -> None:
        ask = request(method="POST", path=SESSION_PATH, target="relay")
        self.assertEqual(self.refused(self.path.admit(ask)).refusal, Refusal.UNKNOWN_GATEWAY)
        self.directory.gateway_connected("plant7")
        self.directory.gateway_disconnected("plant7")
        self.assertEqual(self.refused(self.path.admit(ask)).refusal, Refusal.GATEWAY_OFFLINE)
        bad = request(token="bad", method="POST", path=SESSION_PATH)
        self.assertEqual(self.refused(self.path.admit(bad)).refusal, Refusal.BAD_TOKEN)

    def test_only_a_post_is_a_session_ask(self) -> None:
        self.directory.gateway_connected("plant7")
        for method in ("GET", "PUT"):
            asked = request(method=method, path=SESSION_PATH)
            self.assertFalse(asked.wants_session)
            self.assertEqual(self.refused(self.path.admit(asked)).refusal, Refusal.BAD_REQUEST)

    def test_a_well_formed_session_header_is_admitted(self) -> None:
        self.directory.gateway_connected("plant7")
        asked = request(session="s-4f2a_x-Z")
        self.assertEqual(self.successResultOf(self.path.admit(asked)), Admitted(asked, ALICE))

    def test_a_malformed_session_header_is_a_bad_request_before_any_lookup(self) -> None:
        self.directory.gateway_connected("plant7")
        self.directory.asked.clear()
        refused = self.refused(self.path.admit(request(session="../etc")))
        self.assertEqual(
            (refused.refusal, refused.reason),
            (
                Refusal.BAD_REQUEST,
                "the session header is not a session id (s- and up to 64 letters, digits, - or _)",
            ),
        )
        self.assertEqual(self.directory.asked, [])

    def test_a_bad_token_is_told_before_a_bad_session_header(self) -> None:
        refused = self.refused(self.path.admit(request(token="bad", session="nonsense")))
        self.assertEqual(refused.refusal, Refusal.BAD_TOKEN)


class SessionHeaderFormTests(SynchronousTestCase):
    def test_gateway_session_ids_pass(self) -> None:
        for good in ("s-1", "s-4f2a9c", "s-" + "a" * 64, "s-A_b-C"):
            self.assertIsNone(session_problem(good), good)

    def test_anything_else_is_refused(self) -> None:
        for bad in ("", "s-", "s", "x-123", "S-123", "s-" + "a" * 65, "s-a b", "s-a\x00", "s-ü"):
            self.assertIsNotNone(session_problem(bad), bad)


ALICE = Engineer("alice")


class EngineerRequestTests(SynchronousTestCase):
    def read(self, **headers: str) -> EngineerRequest:
        raw = StreamRequest("CONNECT", "web", "", headers)
        return EngineerRequest.read(raw, "c-00000001")

    def test_the_bearer_token_and_gateway_are_read_from_the_headers(self) -> None:
        asked = self.read(authorization="Bearer rsg_x", gateway="plant7")
        self.assertEqual(
            (asked.token, asked.gateway_id, asked.target, asked.connection_id),
            ("rsg_x", "plant7", "web", "c-00000001"),
        )

    def test_the_scheme_is_case_insensitive_and_spaces_are_trimmed(self) -> None:
        self.assertEqual(self.read(authorization="bearer  rsg_x ").token, "rsg_x")

    def test_the_session_header_is_read_as_sent(self) -> None:
        self.assertEqual(self.read(session="s-1").session, "s-1")
        self.assertIsNone(self.read().session)

    def test_no_bearer_token_means_none(self) -> None:
        self.assertIsNone(self.read().token)
        self.assertIsNone(self.read(authorization="Basic cnNnX3g=").token)
        self.assertEqual(self.read().gateway_id, "")


class ConnectionIdTests(SynchronousTestCase):
    def test_ids_are_short_and_random(self) -> None:
        ids = {new_connection_id() for _ in range(200)}
        self.assertEqual(len(ids), 200)
        for cid in ids:
            self.assertRegex(cid, re.compile(r"^c-[0-9a-f]{8}$"))
