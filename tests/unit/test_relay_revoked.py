"""Revoked gateways: refused as they arrive, and a live tunnel cut within a second.

The tunnel between relay and gateway is real HTTP/2 joined in memory (as in
``test_relay_gateways``), so the gateway hears the relay's GOAWAY and its reason.
"""

from __future__ import annotations

from twisted.logger import capturedLogs
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from gateway.enrollment import revocations
from gateway.enrollment.revocations import Revocations
from gateway.relay.gateways import GatewayPeer
from gateway.relay.revoked import CHECK_INTERVAL, RevocationWatch
from gateway.tunnel.connection import TunnelConnection
from tests.helpers.tunnel import AcceptAll
from tests.unit.test_relay_gateways import PEER, Arrival, CertifiedTransport, RelayState, lines


class Revoked:
    def __init__(self, case: SynchronousTestCase) -> None:
        self.relay = RelayState(case)
        self.state = self.relay.pki.directory / "state"
        self.list = Revocations(self.state)
        self.watch = RevocationWatch(
            self.list,
            self.relay.tunnels,
            self.relay.clock,
            self.relay.metrics,
            audit=self.relay.audit,
        )
        self.watch.startService()
        case.addCleanup(self.watch.stopService)
        self.case = case

    def arrive(self) -> Arrival:
        """A gateway arriving at a relay whose `GatewayPeer` asks the revocation list."""
        relay = self.relay
        arrival = Arrival.__new__(Arrival)
        arrival.peer = GatewayPeer(
            relay.tunnels,
            relay.directory,
            relay.metrics,
            audit=relay.audit,
            revoked=self.list.why_revoked,
        )
        arrival.relay_end = TunnelConnection(
            client_side=True, clock=relay.clock, observer=arrival.peer
        )
        arrival.gateway_end = TunnelConnection(
            client_side=False, clock=relay.clock, handler=AcceptAll()
        )
        arrival.pump = connect(
            arrival.gateway_end,
            FakeTransport(arrival.gateway_end, isServer=True),
            arrival.relay_end,
            CertifiedTransport(arrival.relay_end, relay.good_certificate(), PEER),
            clock=relay.clock,
        )
        arrival.settle()
        self.case.addCleanup(arrival.close)
        return arrival

    def serial(self) -> str:
        return f"{self.relay.good_certificate().to_cryptography().serial_number:x}"


class RevocationTests(SynchronousTestCase):
    def test_revoking_the_id_cuts_the_live_tunnel_within_a_second(self) -> None:
        r = Revoked(self)
        arrival = r.arrive()
        self.assertIsNotNone(r.relay.tunnels.get("test-gateway"))
        revocations.revoke(r.state, "test-gateway", now=1.0)
        with capturedLogs() as events:
            r.relay.clock.advance(CHECK_INTERVAL)
            arrival.settle()
        self.assertTrue(arrival.relay_end.closed)
        self.assertIsNone(r.relay.tunnels.get("test-gateway"))
        logged = lines(events)
        self.assertIn("closing the tunnel of gateway test-gateway", logged)
        self.assertIn("certificate: gateway 'test-gateway' was revoked by the vendor", logged)
        self.assertEqual(r.relay.metric("relay_gateways_revoked_total"), 1)
        [record] = r.relay.audit.events("gateway.revoked")
        self.assertEqual((record["who"], record["result"]), ("test-gateway", "closed"))

    def test_a_revoked_gateway_is_refused_when_it_arrives(self) -> None:
        r = Revoked(self)
        revocations.revoke(r.state, "test-gateway", now=1.0)
        r.list.refresh()
        arrival = r.arrive()
        self.assertTrue(arrival.relay_end.closed)
        self.assertIsNone(r.relay.tunnels.get("test-gateway"))
        record = r.relay.audit.events("gateway.refused")[-1]
        self.assertEqual(record["who"], "test-gateway")
        self.assertIn("revoked", record["why"])

    def test_revoking_another_certificate_leaves_the_tunnel_up(self) -> None:
        r = Revoked(self)
        arrival = r.arrive()
        revocations.revoke(r.state, "test-gateway", now=1.0, serial="abc")
        r.relay.clock.advance(CHECK_INTERVAL)
        arrival.settle()
        self.assertFalse(arrival.relay_end.closed)
        revocations.revoke(r.state, "test-gateway", now=1.0, serial=r.serial())
        r.relay.clock.advance(CHECK_INTERVAL)
        arrival.settle()
        self.assertTrue(arrival.relay_end.closed)

    def test_another_gateways_revocation_leaves_the_tunnel_up(self) -> None:
        r = Revoked(self)
        arrival = r.arrive()
        revocations.revoke(r.state, "plant9", now=1.0)
        r.relay.clock.advance(CHECK_INTERVAL * 4)
        arrival.settle()
        self.assertFalse(arrival.relay_end.closed)
