"""Gateways arriving at the relay: identified by the one gateway-id rule, one live tunnel per id.

Real certificates (`tests.helpers.pki`, and subjects that `gateway pki` would no longer issue, made
here with ``cryptography``) on a fake transport; the tunnel between relay and gateway is real
HTTP/2 joined in memory, so the gateway hears the relay's GOAWAY and its reason.
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

from gateway.relay.directory import MemoryGatewayDirectory, Presence
from gateway.relay.gateways import GatewayPeer, GatewayTunnels
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

    def __init__(self, protocol: Any, certificate: crypto.X509 | None) -> None:
        super().__init__(protocol, isServer=False, peerAddress=PEER)
        self.certificate = certificate

    def getPeerCertificate(self) -> crypto.X509 | None:
        return self.certificate


class Arrival:
    """One gateway's tunnel to the relay: the relay's end watched by a `GatewayPeer`."""

    def __init__(self, relay: RelayState, certificate: crypto.X509 | None) -> None:
        self.peer = GatewayPeer(relay.tunnels, relay.directory, relay.metrics)
        self.relay_end = TunnelConnection(client_side=True, clock=relay.clock, observer=self.peer)
        self.gateway_end = TunnelConnection(
            client_side=False, clock=relay.clock, handler=AcceptAll()
        )
        self.pump: IOPump = connect(
            self.gateway_end,
            FakeTransport(self.gateway_end, isServer=True),
            self.relay_end,
            CertifiedTransport(self.relay_end, certificate),
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
        self._case = case

    def good_certificate(self) -> crypto.X509:
        return crypto.load_certificate(crypto.FILETYPE_PEM, self.pki.gateway_cert.read_bytes())

    def arrive(self, certificate: crypto.X509 | None) -> Arrival:
        arrival = Arrival(self, certificate)
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
        self.assertEqual(arrival.peer.name, "gateway test-gateway")
        self.assertIn("gateway test-gateway connected from 198.51.100.7", lines(events))

    def test_a_certificate_whose_subject_is_not_a_gateway_id_is_refused(self) -> None:
        for bad in ("plant_7", "Plant.7"):
            with capturedLogs() as events:
                arrival = self.relay.arrive(certificate_named(self.relay.pki, bad))
            logged = lines(events)
            self.assertIsNone(self.relay.tunnels.get(bad))
            self.assertEqual(self.relay.presence(bad), Presence.UNKNOWN)
            # The relay says why, naming the address the certificate came from.
            self.assertIn(
                f"gateway certificate from 198.51.100.7 not accepted: gateway id {bad!r}: not "
                "valid",
                logged,
            )
            # The gateway hears why, in the GOAWAY it logs.
            self.assertIn(
                f"closed the tunnel (GOAWAY NO_ERROR: certificate: gateway id {bad!r}: not valid",
                logged,
            )
            self.assertIn("'_' and '.' cannot appear in a host name label", logged)
            self.assertTrue(arrival.relay_end.closed)
            self.assertTrue(arrival.gateway_end.closed)
        self.assertEqual(self.relay.metric("relay_gateways_connected"), 0)
        self.assertEqual(
            self.relay.metric("relay_auth_failures_total", kind="gateway_certificate"), 2
        )
        self.assertEqual(
            self.relay.metric("relay_auth_failures_total", kind="gateway_handshake"), None
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


class OneTunnelPerGatewayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.relay = RelayState(self)

    def test_a_second_connection_replaces_the_first_and_tells_it_why(self) -> None:
        first = self.relay.arrive(self.relay.good_certificate())
        with capturedLogs() as events:
            second = self.relay.arrive(self.relay.good_certificate())
            first.settle()
        logged = lines(events)
        self.assertIn("replacing its previous tunnel", logged)
        self.assertIn("is this certificate installed on two machines?", logged)
        self.assertTrue(first.gateway_end.closed)
        self.assertIs(self.relay.tunnels.get("test-gateway"), second.relay_end)
        self.assertEqual(self.relay.presence("test-gateway"), Presence.HERE)
        self.assertEqual(self.relay.metric("relay_gateways_connected"), 1)

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

    def test_losing_a_replaced_tunnel_keeps_the_gateway_online(self) -> None:
        first = self.relay.arrive(self.relay.good_certificate())
        second = self.relay.arrive(self.relay.good_certificate())
        first.settle()
        first.close()
        self.assertIs(self.relay.tunnels.get("test-gateway"), second.relay_end)
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
