"""Gateways arriving at the relay: identified by the one gateway-id rule, one live tunnel per id.

Real certificates (`tests.helpers.pki`, and subjects that `gateway pki` would no longer issue, made
here with ``cryptography``) on a fake transport; the tunnel between relay and gateway is real
HTTP/2 joined in memory, so the gateway hears the relay's GOAWAY and its reason.  A gateway that
goes silent is one whose in-memory pump is not run while the clock advances.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.audit import MemoryAuditTrail
from gateway.relay.directory import MemoryGatewayDirectory, Presence
from gateway.relay.gateways import GatewayPeer, GatewayTunnels, LiveTunnel, Standing, standing
from gateway.relay.metrics import RelayMetrics
from gateway.tunnel.connection import ITunnelObserver, TunnelConnection
from tests.helpers.pki import TestPKI, make_pki
from tests.helpers.tunnel import AcceptAll

PEER = IPv4Address("TCP", "198.51.100.7", 40000)


def certificate_named(pki: TestPKI, *common_names: str) -> crypto.X509:
    """A client certificate from ``pki``'s CA whose subject has these common names, as old
    tooling could issue them (``gateway pki`` now refuses ids that break the rule)."""
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return crypto.X509.from_cryptography(certificate)


class CertifiedTransport(FakeTransport):
    """An in-memory transport whose peer presented ``certificate`` in its TLS handshake."""

    def __init__(
        self, protocol: Any, certificate: crypto.X509 | None, peer: IPv4Address = PEER
    ) -> None:
        super().__init__(protocol, isServer=False, peerAddress=peer)
        self.certificate = certificate

    def getPeerCertificate(self) -> crypto.X509 | None:
        return self.certificate


class Arrival:
    """One gateway's tunnel to the relay: the relay's end watched by a `GatewayPeer`."""

    def __init__(
        self, relay: RelayState, certificate: crypto.X509 | None, peer: IPv4Address = PEER
    ) -> None:
        self.peer = GatewayPeer(relay.tunnels, relay.directory, relay.metrics, audit=relay.audit)
        self.relay_end = TunnelConnection(client_side=True, clock=relay.clock, observer=self.peer)
        self.gateway_end = TunnelConnection(
            client_side=False, clock=relay.clock, handler=AcceptAll()
        )
        self.pump: IOPump = connect(
            self.gateway_end,
            FakeTransport(self.gateway_end, isServer=True),
            self.relay_end,
            CertifiedTransport(self.relay_end, certificate, peer),
            clock=relay.clock,
        )
        self.settle()

    def settle(self) -> None:
        for _ in range(100):
            if not self.pump.flush():
                return

    def close(self) -> None:
        for end in (self.relay_end, self.gateway_end):
            if not end.closed:
                end.connectionLost(Failure(ConnectionError("test over")))


class RelayState:
    def __init__(self, case: SynchronousTestCase) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-relay-gateways-")
        case.addCleanup(tmp.cleanup)
        self.pki = make_pki(Path(tmp.name))
        self.clock = Clock()
        self.clock.advance(1000)
        self.tunnels = GatewayTunnels()
        self.directory = MemoryGatewayDirectory(self.clock)
        self.metrics = RelayMetrics(CollectorRegistry())
        self.audit = MemoryAuditTrail()
        self._case = case

    def good_certificate(self) -> crypto.X509:
        return crypto.load_certificate(crypto.FILETYPE_PEM, self.pki.gateway_cert.read_bytes())

    def arrive(self, certificate: crypto.X509 | None, peer: IPv4Address = PEER) -> Arrival:
        arrival = Arrival(self, certificate, peer)
        self._case.addCleanup(arrival.close)
        return arrival

    def presence(self, gateway_id: str) -> Presence:
        return self._case.successResultOf(self.directory.locate(gateway_id)).presence

    def metric(self, name: str, **labels: str) -> float | None:
        value: float | None = self.metrics.registry.get_sample_value(name, labels)
        return value


def lines(events: Any) -> str:
    return "\n".join(formatEvent(e) for e in events)


class GatewayIdentityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.relay = RelayState(self)

    def test_a_gateway_is_taken_in_under_the_id_its_certificate_names(self) -> None:
        with capturedLogs() as events:
            arrival = self.relay.arrive(self.relay.good_certificate())
        self.assertIs(self.relay.tunnels.get("test-gateway"), arrival.relay_end)
        self.assertEqual(self.relay.presence("test-gateway"), Presence.HERE)
        self.assertEqual(self.relay.metric("relay_gateways_connected"), 1)
        self.assertEqual(arrival.peer.name, "gateway test-gateway from 198.51.100.7:40000")
        self.assertIn("gateway test-gateway connected from 198.51.100.7:40000", lines(events))
        [record] = self.relay.audit.events("gateway.connected")
        self.assertEqual(
            (record["who"], record["result"], record["peer"]),
            ("test-gateway", "ok", "198.51.100.7:40000"),
        )
        self.assertEqual(self.relay.audit.events("gateway.disconnected"), [])

    def test_a_gateway_that_goes_away_is_recorded_in_the_audit_trail(self) -> None:
        arrival = self.relay.arrive(self.relay.good_certificate())
        arrival.close()
        self.assertIsNone(self.relay.tunnels.get("test-gateway"))
        [record] = self.relay.audit.events("gateway.disconnected")
        self.assertEqual((record["who"], record["peer"]), ("test-gateway", "198.51.100.7:40000"))

    def test_a_certificate_whose_subject_is_not_a_gateway_id_is_refused(self) -> None:
        for bad in ("plant_7", "Plant.7"):
            with capturedLogs() as events:
                arrival = self.relay.arrive(certificate_named(self.relay.pki, bad))
            logged = lines(events)
            self.assertIsNone(self.relay.tunnels.get(bad))
            self.assertEqual(self.relay.presence(bad), Presence.UNKNOWN)
            # The relay says why, naming the address the certificate came from.
            self.assertIn(
                f"gateway certificate from 198.51.100.7:40000 not accepted: "
                f"gateway id {bad!r}: not valid",
                logged,
            )
            # The gateway hears why, in the GOAWAY it logs.
            self.assertIn(
                f"closed the tunnel (GOAWAY NO_ERROR: certificate: gateway id {bad!r}: not valid",
                logged,
            )
            self.assertIn("'_' and '.' cannot appear in a host name label", logged)
            # Recorded for the audit: who tried, from where, and why not (never registered).
            record = self.relay.audit.events("gateway.refused")[-1]
            self.assertEqual((record["who"], record["result"]), (None, "refused"))
            self.assertEqual(record["peer"], "198.51.100.7:40000")
            self.assertIn("not valid", record["why"])
            self.assertTrue(arrival.relay_end.closed)
            self.assertTrue(arrival.gateway_end.closed)
        self.assertEqual(self.relay.metric("relay_gateways_connected"), 0)
        self.assertEqual(
            self.relay.metric("relay_auth_failures_total", kind="gateway_certificate"), 2
        )
        self.assertEqual(
            self.relay.metric("relay_auth_failures_total", kind="gateway_handshake"), 0
        )

    def test_a_certificate_naming_two_gateways_is_refused(self) -> None:
        with capturedLogs() as events:
            arrival = self.relay.arrive(certificate_named(self.relay.pki, "plant7", "plant8"))
        self.assertIn("has 2 common names", lines(events))
        self.assertEqual(len(self.relay.tunnels), 0)
        self.assertTrue(arrival.gateway_end.closed)
        self.assertEqual(
            self.relay.metric("relay_auth_failures_total", kind="gateway_certificate"), 1
        )

    def test_a_connection_without_a_certificate_is_refused(self) -> None:
        with capturedLogs() as events:
            self.relay.arrive(None)
        self.assertIn("the gateway presented no certificate", lines(events))
        self.assertEqual(len(self.relay.tunnels), 0)


SECOND = IPv4Address("TCP", "203.0.113.9", 50000)


class OneTunnelPerGatewayTests(SynchronousTestCase):
    """The tunnel that is there keeps its place while it answers; a dead one is replaced."""

    def setUp(self) -> None:
        self.relay = RelayState(self)

    def test_a_second_connection_while_the_first_answers_is_refused_and_told_why(self) -> None:
        first = self.relay.arrive(self.relay.good_certificate())
        with capturedLogs() as events:
            second = self.relay.arrive(self.relay.good_certificate(), SECOND)
            first.settle()
        logged = lines(events)
        # The relay says who holds the id; the refused gateway hears it in the GOAWAY it logs.
        self.assertIn(
            "gateway test-gateway from 203.0.113.9:50000 refused: a gateway with this id is "
            "already connected from 198.51.100.7:40000",
            logged,
        )
        self.assertIn(
            "closed the tunnel (GOAWAY NO_ERROR: a gateway with id test-gateway is already "
            "connected from 198.51.100.7:40000; is this certificate installed on two machines?)",
            logged,
        )
        self.assertNotIn("disconnected", logged)  # the refused one was never in
        self.assertTrue(second.gateway_end.closed)
        self.assertFalse(first.gateway_end.closed)
        self.assertIs(self.relay.tunnels.get("test-gateway"), first.relay_end)
        self.assertEqual(self.relay.presence("test-gateway"), Presence.HERE)
        self.assertEqual(self.relay.metric("relay_gateways_connected"), 1)
        self.assertEqual(self.relay.metric("relay_gateway_id_conflicts_total", result="refused"), 1)
        [record] = self.relay.audit.events("gateway.id_conflict")
        self.assertEqual(
            (record["who"], record["result"], record["peer"], record["holder"]),
            ("test-gateway", "refused", "203.0.113.9:50000", "198.51.100.7:40000"),
        )

    def test_a_newcomer_waits_for_a_silent_tunnel_s_ping_and_is_refused_if_it_answers(
        self,
    ) -> None:
        first = self.relay.arrive(self.relay.good_certificate())
        self.relay.clock.advance(10.5)  # the first's next PING is out, not delivered yet
        with capturedLogs() as events:
            second = self.relay.arrive(self.relay.good_certificate(), SECOND)
        self.assertIn("waiting for that tunnel's heartbeat", lines(events))
        self.assertFalse(second.gateway_end.closed)
        self.assertIs(self.relay.tunnels.get("test-gateway"), first.relay_end)
        first.settle()  # the first answers its PING
        second.settle()
        self.assertTrue(second.gateway_end.closed)
        self.assertIs(self.relay.tunnels.get("test-gateway"), first.relay_end)
        self.assertEqual(self.relay.metric("relay_gateway_id_conflicts_total", result="refused"), 1)

    def test_a_tunnel_that_stops_answering_is_replaced_by_the_waiting_newcomer(self) -> None:
        first = self.relay.arrive(self.relay.good_certificate())
        self.relay.clock.advance(10.5)
        second = self.relay.arrive(self.relay.good_certificate(), SECOND)
        with capturedLogs() as events:
            self.relay.clock.advance(10.1)  # the first's PING unanswered for its timeout
            second.settle()
            first.settle()
        logged = lines(events)
        self.assertIn("no heartbeat answer from gateway test-gateway from 198.51.100.7", logged)
        self.assertIn(
            "gateway test-gateway connected from 203.0.113.9:50000; its previous tunnel from "
            "198.51.100.7:40000 stopped answering",
            logged,
        )
        self.assertTrue(first.relay_end.closed)
        self.assertFalse(second.gateway_end.closed)
        self.assertIs(self.relay.tunnels.get("test-gateway"), second.relay_end)
        self.assertEqual(self.relay.presence("test-gateway"), Presence.HERE)
        self.assertEqual(self.relay.metric("relay_gateways_connected"), 1)
        self.assertEqual(
            self.relay.metric("relay_gateway_id_conflicts_total", result="replaced"), 1
        )
        self.assertEqual(self.relay.audit.events("gateway.id_conflict")[0]["result"], "replaced")

    def test_a_waiting_newcomer_that_goes_away_leaves_nothing_behind(self) -> None:
        first = self.relay.arrive(self.relay.good_certificate())
        self.relay.clock.advance(10.5)
        second = self.relay.arrive(self.relay.good_certificate(), SECOND)
        second.close()
        first.settle()
        self.relay.clock.advance(30)
        first.settle()
        self.assertIs(self.relay.tunnels.get("test-gateway"), first.relay_end)
        holder = self.relay.tunnels.holder("test-gateway")
        assert holder is not None
        self.assertEqual(holder.waiting, [])
        self.assertIsNone(self.relay.metric("relay_gateway_id_conflicts_total", result="refused"))

    def test_a_tunnel_stands_alive_until_its_next_ping_is_due(self) -> None:
        live = LiveTunnel(tunnel=None, peer="", last_answer=100.0)  # type: ignore[arg-type]
        self.assertIs(standing(live, 109.9, interval=10), Standing.ALIVE)
        self.assertIs(standing(live, 110.0, interval=10), Standing.ASKED)

    def test_a_lost_tunnel_leaves_the_gateway_known_and_offline(self) -> None:
        arrival = self.relay.arrive(self.relay.good_certificate())
        self.relay.clock.advance(30)
        with capturedLogs() as events:
            arrival.close()
        self.assertIn("gateway test-gateway disconnected", lines(events))
        self.assertIsNone(self.relay.tunnels.get("test-gateway"))
        location = self.successResultOf(self.relay.directory.locate("test-gateway"))
        self.assertEqual((location.presence, location.last_seen), (Presence.OFFLINE, 1030))
        self.assertEqual(self.relay.metric("relay_gateways_connected"), 0)

    def test_losing_a_refused_newcomer_keeps_the_gateway_online(self) -> None:
        first = self.relay.arrive(self.relay.good_certificate())
        second = self.relay.arrive(self.relay.good_certificate(), SECOND)
        second.close()
        self.assertIs(self.relay.tunnels.get("test-gateway"), first.relay_end)
        self.assertEqual(self.relay.presence("test-gateway"), Presence.HERE)
        self.assertEqual(self.relay.metric("relay_gateways_connected"), 1)

    def test_a_connection_lost_before_http2_counts_as_a_failed_handshake(self) -> None:
        peer = GatewayPeer(self.relay.tunnels, self.relay.directory, self.relay.metrics)
        connection = TunnelConnection(client_side=True, clock=self.relay.clock, observer=peer)
        connection.connectionLost(Failure(ConnectionError("handshake failed")))
        self.assertEqual(
            self.relay.metric("relay_auth_failures_total", kind="gateway_handshake"), 1
        )
        self.assertEqual(len(self.relay.tunnels), 0)

    def test_the_peer_provides_the_observer_interface(self) -> None:
        peer = GatewayPeer(self.relay.tunnels, self.relay.directory, self.relay.metrics)
        verifyObject(ITunnelObserver, peer)
