"""The dial step: a CONNECT on a tunnel this relay holds, or the offline refusal.

(`gateway.relay.dialer`)
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.relay.credentials import Engineer
from gateway.relay.dialer import IGatewayDialer, LocalDialer
from gateway.relay.gateways import GatewayTunnels
from gateway.relay.refusals import Refused
from gateway.wire import SESSION_PATH, Refusal
from tests.helpers.tunnel import AcceptAll, linked_tunnels

ALICE = Engineer("alice")


class LocalDialerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tunnels = GatewayTunnels()
        self.dialer = LocalDialer(self.tunnels)
        self.gateway = AcceptAll()
        self.link = linked_tunnels(self.gateway, Clock())
        self.addCleanup(self.link.close)

    def refused(self, gateway_id: str = "gw-1") -> Refused:
        try:
            self.dialer.dial(gateway_id, ALICE, "web", "c-00000001")
        except Refused as e:
            return e
        raise self.failureException("dialled")

    def test_provides_the_dialer_interface(self) -> None:
        verifyObject(IGatewayDialer, self.dialer)

    def test_the_connect_names_target_engineer_and_connection(self) -> None:
        self.tunnels.add("gw-1", self.link.client)
        upstream = self.dialer.dial("gw-1", Engineer("Bob Müller"), "web", "c-0123abcd")
        self.link.settle()
        self.assertEqual(self.successResultOf(upstream.response).status, 200)
        asked = self.gateway.streams[0].request
        assert asked is not None
        self.assertEqual(
            (asked.method, asked.authority, asked.headers),
            ("CONNECT", "web", {"engineer": "Bob M?ller", "connection-id": "c-0123abcd"}),
        )

    def test_a_session_goes_with_the_connect(self) -> None:
        self.tunnels.add("gw-1", self.link.client)
        self.dialer.dial("gw-1", ALICE, "web", "c-0123abcd", session="s-42")
        self.link.settle()
        asked = self.gateway.streams[0].request
        assert asked is not None
        self.assertEqual(asked.headers["session"], "s-42")

    def test_a_session_ask_is_a_post_naming_engineer_and_connection(self) -> None:
        self.tunnels.add("gw-1", self.link.client)
        upstream = self.dialer.ask_session("gw-1", ALICE, "c-0123abcd")
        upstream.write(b'{"reason": "x"}')
        upstream.loseWriteConnection()
        self.link.settle()
        asked = self.gateway.streams[0].request
        assert asked is not None
        self.assertEqual(
            (asked.method, asked.path, asked.authority, asked.headers),
            (
                "POST",
                SESSION_PATH,
                "gw-1",
                {
                    "engineer": "alice",
                    "connection-id": "c-0123abcd",
                    "content-type": "application/json",
                },
            ),
        )
        self.assertEqual(self.gateway.recorders[0].received, b'{"reason": "x"}')

    def test_a_session_ask_to_a_gateway_without_a_tunnel_is_offline(self) -> None:
        with self.assertRaises(Refused) as caught:
            self.dialer.ask_session("gw-1", ALICE, "c-00000001")
        self.assertEqual(caught.exception.refusal, Refusal.GATEWAY_OFFLINE)

    def test_a_gateway_without_a_tunnel_here_is_offline(self) -> None:
        refused = self.refused()
        self.assertEqual(
            (refused.refusal, refused.reason),
            (
                Refusal.GATEWAY_OFFLINE,
                "gateway 'gw-1' is offline (its tunnel to the relay is down)",
            ),
        )

    def test_a_draining_tunnel_is_offline(self) -> None:
        self.tunnels.add("gw-1", self.link.client)
        self.link.client.draining = True
        self.assertEqual(
            self.refused().reason, "gateway 'gw-1' is offline (its tunnel to the relay is down)"
        )
        self.assertEqual(self.gateway.streams, [])

    def test_a_tunnel_that_cannot_open_streams_is_offline_saying_why(self) -> None:
        self.tunnels.add("gw-1", self.link.client)
        self.link.close()
        refused = self.refused()
        self.assertEqual(refused.refusal, Refusal.GATEWAY_OFFLINE)
        self.assertTrue(refused.reason.startswith("gateway 'gw-1' is offline ("), refused.reason)
        self.assertNotIn("its tunnel to the relay is down", refused.reason)
