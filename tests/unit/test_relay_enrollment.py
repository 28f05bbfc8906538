"""The relay's enrollment listener: one bounded HTTP/1.1 request, and without a certificate
nothing but enrollment.

Real certificates and CSRs (`tests.helpers.pki`), a `StringTransport` standing for the TLS
transport (what ALPN chose, which certificate the peer presented), and a `Clock`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import crypto
from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.audit import MemoryAuditTrail
from gateway.config import EnrollmentSettings
from gateway.enrollment import keys, revocations
from gateway.enrollment.revocations import Revocations
from gateway.enrollment.tokens import TokenStore
from gateway.enrollment.wire import REQUEST_TIMEOUT
from gateway.logsafe import RateLimitedLog
from gateway.relay.enrollment import (
    EnrollmentDesk,
    EnrollmentProtocol,
    NoCertificate,
    choose_protocol,
)
from gateway.relay.metrics import RelayMetrics
from gateway.tunnel.connection import TunnelConnection
from tests.helpers.pki import make_pki

PEER = IPv4Address("TCP", "198.51.100.7", 40000)


class TLSTransport(StringTransport):
    """What the enrollment protocol sees of TLS: ALPN's choice and the peer's certificate."""

    def __init__(self, alpn: bytes | None, certificate: crypto.X509 | None = None) -> None:
        super().__init__(peerAddress=PEER)
        self.negotiatedProtocol = alpn
        self.certificate = certificate
        self.aborted = False

    def getPeerCertificate(self) -> crypto.X509 | None:
        return self.certificate

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def post(path: str, body: dict[str, Any] | bytes) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nhost: relay\r\ncontent-length: {len(data)}\r\n\r\n"
    return head.encode() + data


def answer(transport: StringTransport) -> tuple[int, dict[str, Any]]:
    raw = transport.value()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


class Relay:
    def __init__(self, test: SynchronousTestCase, *, enabled: bool = True) -> None:
        work = Path(tempfile.mkdtemp())
        test.addCleanup(shutil.rmtree, work)
        self.pki = make_pki(work / "pki", gateway_id="plant7")
        self.state = work / "state"
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.audit = MemoryAuditTrail()
        self.metrics = RelayMetrics(CollectorRegistry())
        self.tokens = TokenStore(self.state, self.clock.seconds)
        self.revocations = Revocations(self.state)
        settings = EnrollmentSettings(self.pki.ca_cert, self.pki.ca_key, 30.0) if enabled else None
        self.desk = EnrollmentDesk(
            settings,
            tokens=self.tokens,
            revocations=self.revocations,
            clock=self.clock,
            metrics=self.metrics,
            audit=self.audit,
        )
        self.lines = RateLimitedLog(self.clock)
        test.addCleanup(self.lines.stop)

    def connect(self, certificate: crypto.X509 | None = None) -> TLSTransport:
        transport = TLSTransport(b"http/1.1", certificate)
        protocol = EnrollmentProtocol(self.desk, self.clock, self.lines)
        protocol.makeConnection(transport)
        self.protocol = protocol
        return transport

    def gateway_certificate(self) -> crypto.X509:
        cert = x509.load_pem_x509_certificate(self.pki.gateway_cert.read_bytes())
        return crypto.X509.from_cryptography(cert)

    def events(self) -> list[tuple[str, str]]:
        return [(r["event"], r["result"]) for r in self.audit.records]


class EnrollTests(SynchronousTestCase):
    def test_a_token_and_a_csr_get_a_certificate_for_the_tokens_gateway(self) -> None:
        relay = Relay(self)
        token = relay.tokens.issue("plant7", seconds=600).token
        key = keys.new_key()
        transport = relay.connect()
        relay.protocol.dataReceived(
            post("/v1/enroll", {"token": token, "csr": keys.make_csr(key, "plant7").decode()})
        )
        status, body = answer(transport)
        self.assertEqual(status, 200)
        cert = x509.load_pem_x509_certificate(body["certificate"].encode())
        self.assertEqual(cert.subject.rfc4514_string(), "CN=plant7")
        self.assertEqual(cert.public_key(), key.public_key())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(
            relay.events(), [("enrollment.token_used", "ok"), ("gateway.enrolled", "ok")]
        )
        self.assertEqual(relay.clock.getDelayedCalls(), [])

    def test_a_csr_for_another_gateway_is_refused_and_uses_up_the_token(self) -> None:
        relay = Relay(self)
        token = relay.tokens.issue("plant7", seconds=600).token
        transport = relay.connect()
        csr = keys.make_csr(keys.new_key(), "plant8").decode()
        relay.protocol.dataReceived(post("/v1/enroll", {"token": token, "csr": csr}))
        status, body = answer(transport)
        self.assertEqual((status, body["error"]), (400, "bad-csr"))
        self.assertIn("'plant8'", body["reason"])
        self.assertEqual(relay.events()[-1], ("gateway.enrolled", "refused"))
        transport = relay.connect()
        good = keys.make_csr(keys.new_key(), "plant7").decode()
        relay.protocol.dataReceived(post("/v1/enroll", {"token": token, "csr": good}))
        self.assertEqual(answer(transport)[1]["error"], "bad-token")

    def test_an_unknown_token_is_refused_and_audited(self) -> None:
        relay = Relay(self)
        transport = relay.connect()
        csr = keys.make_csr(keys.new_key(), "plant7").decode()
        relay.protocol.dataReceived(post("/v1/enroll", {"token": "plant7." + "x" * 43, "csr": csr}))
        self.assertEqual(answer(transport)[0], 403)
        self.assertEqual(relay.events(), [("enrollment.token_failed", "refused")])

    def test_a_revoked_gateway_cannot_enroll(self) -> None:
        relay = Relay(self)
        token = relay.tokens.issue("plant7", seconds=600).token
        revocations.revoke(relay.state, "plant7", now=1.0)
        relay.revocations.refresh()
        transport = relay.connect()
        csr = keys.make_csr(keys.new_key(), "plant7").decode()
        relay.protocol.dataReceived(post("/v1/enroll", {"token": token, "csr": csr}))
        self.assertEqual(answer(transport)[1]["error"], "revoked")

    def test_a_relay_without_enrollment_says_so(self) -> None:
        relay = Relay(self, enabled=False)
        transport = relay.connect()
        relay.protocol.dataReceived(post("/v1/enroll", {"token": "t", "csr": "c"}))
        status, body = answer(transport)
        self.assertEqual((status, body["error"]), (404, "not-enabled"))


class RenewTests(SynchronousTestCase):
    def test_the_current_certificate_gets_a_new_one(self) -> None:
        relay = Relay(self)
        transport = relay.connect(relay.gateway_certificate())
        key = keys.new_key()
        relay.protocol.dataReceived(
            post("/v1/renew", {"csr": keys.make_csr(key, "plant7").decode()})
        )
        status, body = answer(transport)
        self.assertEqual(status, 200)
        cert = x509.load_pem_x509_certificate(body["certificate"].encode())
        self.assertEqual(cert.public_key(), key.public_key())
        self.assertEqual(relay.events(), [("gateway.renewed", "ok")])

    def test_renewal_without_a_certificate_is_refused(self) -> None:
        relay = Relay(self)
        transport = relay.connect(None)
        relay.protocol.dataReceived(
            post("/v1/renew", {"csr": keys.make_csr(keys.new_key(), "plant7").decode()})
        )
        status, body = answer(transport)
        self.assertEqual((status, body["error"]), (403, "certificate-required"))

    def test_renewal_for_another_id_is_refused(self) -> None:
        relay = Relay(self)
        transport = relay.connect(relay.gateway_certificate())
        relay.protocol.dataReceived(
            post("/v1/renew", {"csr": keys.make_csr(keys.new_key(), "plant8").decode()})
        )
        self.assertEqual(answer(transport)[1]["error"], "bad-csr")

    def test_a_revoked_gateway_or_certificate_cannot_renew(self) -> None:
        relay = Relay(self)
        certificate = relay.gateway_certificate()
        serial = certificate.to_cryptography().serial_number
        revocations.revoke(relay.state, "plant7", now=1.0, serial=f"{serial:x}")
        transport = relay.connect(certificate)
        relay.protocol.dataReceived(
            post("/v1/renew", {"csr": keys.make_csr(keys.new_key(), "plant7").decode()})
        )
        self.assertEqual(answer(transport)[1]["error"], "revoked")
        self.assertEqual(relay.events(), [("gateway.renewal_refused", "refused")])


class HardeningTests(SynchronousTestCase):
    def test_only_the_two_paths_are_served(self) -> None:
        relay = Relay(self)
        for request in (
            b"GET /v1/enroll HTTP/1.1\r\nhost: r\r\n\r\n",
            b"GET /v1/info HTTP/1.1\r\nhost: r\r\n\r\n",
            post("/v1/sessions", {}),
        ):
            transport = relay.connect()
            relay.protocol.dataReceived(request)
            self.assertEqual(answer(transport)[0], 404, request)
            self.assertTrue(transport.disconnecting)

    def test_a_large_or_unsized_body_is_refused_before_it_is_read(self) -> None:
        relay = Relay(self)
        for head in (
            b"POST /v1/enroll HTTP/1.1\r\nhost: r\r\ncontent-length: 100000\r\n\r\n",
            b"POST /v1/enroll HTTP/1.1\r\nhost: r\r\ntransfer-encoding: chunked\r\n\r\n",
        ):
            transport = relay.connect()
            relay.protocol.dataReceived(head)
            self.assertEqual(answer(transport)[0], 413)

    def test_a_huge_head_is_refused(self) -> None:
        relay = Relay(self)
        transport = relay.connect()
        relay.protocol.dataReceived(b"POST /v1/enroll HTTP/1.1\r\nx: " + b"a" * 20000)
        self.assertEqual(answer(transport)[0], 400)

    def test_garbage_is_refused(self) -> None:
        relay = Relay(self)
        transport = relay.connect()
        relay.protocol.dataReceived(b"\x16\x03\x01 not http\r\n\r\n")
        self.assertEqual(answer(transport)[0], 400)

    def test_one_request_per_connection(self) -> None:
        relay = Relay(self)
        transport = relay.connect()
        relay.protocol.dataReceived(post("/v1/info", {}) + post("/v1/info", {}))
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1)

    def test_a_slow_request_is_cut_off(self) -> None:
        relay = Relay(self)
        transport = relay.connect()
        relay.protocol.dataReceived(b"POST /v1/enroll HTTP/1.1\r\n")
        relay.clock.advance(REQUEST_TIMEOUT)
        self.assertTrue(transport.aborted)
        self.assertEqual(relay.clock.getDelayedCalls(), [])

    def test_a_body_that_is_not_json_is_refused(self) -> None:
        relay = Relay(self)
        transport = relay.connect()
        relay.protocol.dataReceived(post("/v1/enroll", b"[1, 2]"))
        self.assertEqual(answer(transport)[0], 400)


class ChoiceTests(SynchronousTestCase):
    """What a connection to the gateway listener becomes once its TLS handshake is done."""

    def setUp(self) -> None:
        self.relay = Relay(self)
        self.choose = choose_protocol(
            self.relay.desk, self.relay.clock, self.relay.metrics, self.relay.lines
        )

    def test_http11_is_enrollment_with_or_without_a_certificate(self) -> None:
        self.assertIsInstance(self.choose(TLSTransport(b"http/1.1")), EnrollmentProtocol)
        certified = TLSTransport(b"http/1.1", self.relay.gateway_certificate())
        self.assertIsInstance(self.choose(certified), EnrollmentProtocol)

    def test_a_tunnel_without_a_certificate_is_closed(self) -> None:
        for alpn in (b"h2", None):
            transport = TLSTransport(alpn)
            protocol = self.choose(transport)
            self.assertIsInstance(protocol, NoCertificate)
            protocol.makeConnection(transport)
            self.assertTrue(transport.disconnecting)
            self.assertEqual(transport.value(), b"")

    def test_a_tunnel_with_a_certificate_is_the_tunnel(self) -> None:
        self.assertIsNone(self.choose(TLSTransport(b"h2", self.relay.gateway_certificate())))


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


class HandoffTests(SynchronousTestCase):
    """The tunnel connection waits for the TLS handshake before it speaks HTTP/2."""

    def test_a_handed_off_connection_never_speaks_http2(self) -> None:
        clock, other = Clock(), Recorder()
        connection = TunnelConnection(client_side=True, clock=clock, handoff=lambda t: other)
        transport = TLSTransport(b"http/1.1")
        connection.makeConnection(transport)
        self.assertEqual(transport.value(), b"")
        connection.handshakeCompleted()
        self.assertEqual(transport.value(), b"")
        connection.dataReceived(b"POST /v1/enroll")
        self.assertEqual(other.received, [b"POST /v1/enroll"])
        self.assertEqual(clock.getDelayedCalls(), [])  # its own deadline, not the tunnel's
        connection.close(why="stopping")
        self.assertEqual(transport.value(), b"")  # no GOAWAY in an HTTP/1.1 connection
        connection.connectionLost()
        self.assertTrue(other.lost)
        self.assertTrue(connection.closed)

    def test_without_a_handoff_http2_starts_after_the_handshake(self) -> None:
        connection = TunnelConnection(client_side=True, clock=Clock(), handoff=lambda t: None)
        transport = TLSTransport(b"h2")
        connection.makeConnection(transport)
        self.assertEqual(transport.value(), b"")
        connection.handshakeCompleted()
        self.assertTrue(transport.value().startswith(b"PRI * HTTP/2.0"))
        connection.connectionLost()

    def test_a_tunnel_without_handoff_starts_at_once(self) -> None:
        connection = TunnelConnection(client_side=True, clock=Clock())
        transport = TLSTransport(b"h2")
        connection.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"PRI * HTTP/2.0"))
        connection.connectionLost()


class RelayServiceTests(SynchronousTestCase):
    """``makeService`` with ``[enrollment]``: the gateway CA's key must be private and match."""

    def config(self, **changes: Any) -> Any:
        import attrs

        from gateway.config import EnrollmentSettings
        from tests.unit.test_relay_service import relay_config

        base = relay_config(self)
        pki_dir = base.gateways.ca.parent
        settings = EnrollmentSettings(base.gateways.ca, pki_dir / "ca.key", 30.0)
        return attrs.evolve(base, enrollment=attrs.evolve(settings, **changes))

    def test_the_gateway_listener_hands_off_enrollment(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from gateway.relay.service import makeService

        daemon = makeService(self.config(), MemoryReactorClock())  # type: ignore[arg-type]
        connection = daemon.gateway_factory.buildProtocol(PEER)
        self.assertIsNotNone(connection.handoff)
        self.assertIsNotNone(daemon.enrollment.signer)

    def test_a_readable_ca_key_stops_start_up(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from gateway.relay.service import makeService
        from gateway.tls import TLSFileError

        config = self.config()
        config.enrollment.ca_key.chmod(0o644)
        with self.assertRaisesRegex(TLSFileError, "readable by others"):
            makeService(config, MemoryReactorClock())  # type: ignore[arg-type]

    def test_a_ca_the_listener_does_not_trust_stops_start_up(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from gateway.relay.service import makeService
        from gateway.tls import TLSFileError

        where = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, where)
        other = make_pki(where / "other")
        config = self.config(ca_cert=other.ca_cert, ca_key=other.ca_key)
        with self.assertRaisesRegex(TLSFileError, "not the CA in \\[gateways\\] ca"):
            makeService(config, MemoryReactorClock())  # type: ignore[arg-type]
