# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The tunnel's TLS options, composed: real certificates, real handshakes, in memory.

Each test builds the options the programs build (`client_options` for the gateway and the
engineer's client, `server_options` for the relay's listeners) and runs a handshake through
`FastTLSFactory` over `twisted.test.iosim`, so what is pinned (TLS 1.2 minimum, ALPN h2, the
pinned CA, the host name, a client certificate) is proven by a peer that breaks the rule.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.identity import gateway_id_from_certificate
from gateway.net.endpoints import quiet_factory
from gateway.tls import (
    TLSFileError,
    client_options,
    load_ca,
    load_identity,
    server_options,
)
from gateway.tls.errors import describe_tls_failure
from gateway.tls.fast import FastTLSFactory
from tests.helpers.pki import TestPKI, make_other_ca_gateway, make_pki


class Recorder(Protocol):
    """Remembers what arrived, whether the connection was made, and why it ended."""

    def __init__(self) -> None:
        self.received = b""
        self.made = False
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason


class Loopback:
    """A TLS client and server connected in memory; ``pump`` moves the bytes."""

    def __init__(
        self,
        server: Any,
        client: Any,
        *,
        factory: type[TLSMemoryBIOFactory] = FastTLSFactory,
    ) -> None:
        self.server_app, self.client_app = Recorder(), Recorder()
        clock = Clock()
        server_factory = factory(server, False, quiet_factory(lambda: self.server_app), clock=clock)
        client_factory = factory(client, True, quiet_factory(lambda: self.client_app), clock=clock)

        def build(f: TLSMemoryBIOFactory) -> TLSMemoryBIOProtocol:
            proto = f.buildProtocol(None)
            assert isinstance(proto, TLSMemoryBIOProtocol)
            return proto

        client_tls, server_tls, self.pump = connectedServerAndClient(
            lambda: build(server_factory), lambda: build(client_factory), clock=clock
        )
        self.client_tls: TLSMemoryBIOProtocol = client_tls
        self.server_tls: TLSMemoryBIOProtocol = server_tls

    def say(self, data: bytes = b"hello relay") -> Loopback:
        """The client sends ``data`` once the connection is up; everything is pumped."""
        self.pump.flush()
        if self.client_app.reason is None:
            self.client_app.transport.write(data)  # type: ignore[union-attr]
            self.pump.flush()
        return self

    def failure(self, app: Recorder) -> str:
        """Why ``app``'s connection ended, as the product explains it ("" while it is open)."""
        return "" if app.reason is None else describe_tls_failure(app.reason)


def temporary_directory(case: SynchronousTestCase) -> Path:
    path = Path(tempfile.mkdtemp(prefix="test-tls-"))
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


class WithPKI(SynchronousTestCase):
    """A fresh vendor PKI: CA, relay pair for localhost/127.0.0.1, gateway pair."""

    def setUp(self) -> None:
        self.pki: TestPKI = make_pki(temporary_directory(self), gateway_id="plant-7")

    def relay(self, *, client_ca: Path | None = None) -> Any:
        return server_options(self.pki.relay_cert, self.pki.relay_key, client_ca=client_ca)

    def gateway(self, host: str = "localhost", *, with_cert: bool = True) -> Any:
        if not with_cert:
            return client_options(host, self.pki.ca_cert)
        return client_options(
            host, self.pki.ca_cert, cert_path=self.pki.gateway_cert, key_path=self.pki.gateway_key
        )


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class OldTLS:
    """A peer that speaks only TLS 1.0 and 1.1 (security level 0, so OpenSSL still allows it)."""

    def __init__(self, pki: TestPKI, *, server: bool) -> None:
        self._context = SSL.Context(SSL.TLS_METHOD)
        self._context.set_min_proto_version(SSL.TLS1_VERSION)
        self._context.set_max_proto_version(SSL.TLS1_1_VERSION)
        self._context.set_cipher_list(b"ALL:@SECLEVEL=0")
        if server:
            self._context.use_certificate_file(str(pki.relay_cert))
            self._context.use_privatekey_file(str(pki.relay_key))

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._context, None)

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._context, None)


class ClientOptionsTests(WithPKI):
    def test_gateway_reaches_its_relay_over_h2(self) -> None:
        link = Loopback(self.relay(client_ca=self.pki.ca_cert), self.gateway()).say()
        self.assertEqual(link.server_app.received, b"hello relay")
        self.assertEqual(link.client_tls.negotiatedProtocol, b"h2")
        self.assertEqual(link.server_tls.negotiatedProtocol, b"h2")

    def test_tls_is_1_2_or_newer(self) -> None:
        link = Loopback(self.relay(), self.gateway(with_cert=False)).say()
        version = link.client_tls.getHandle().get_protocol_version_name()
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))

    def test_gateway_refuses_a_relay_that_speaks_only_tls_1_1(self) -> None:
        # The old relay works: a client that allows TLS 1.1 gets through.
        control = Loopback(OldTLS(self.pki, server=True), OldTLS(self.pki, server=False)).say()
        self.assertEqual(control.server_app.received, b"hello relay")
        self.assertEqual(control.client_tls.getHandle().get_protocol_version_name(), "TLSv1.1")

        link = Loopback(OldTLS(self.pki, server=True), self.gateway()).say()
        self.assertEqual(link.server_app.received, b"")
        self.assertIsNotNone(link.client_app.reason)
        self.assertIn("protocol version", str(link.client_app.reason.value))  # type: ignore[union-attr]

    def test_tls_1_0_and_1_1_are_switched_off_not_just_outranked(self) -> None:
        # OpenSSL's default security level forbids TLS 1.0/1.1 by itself, but an openssl.cnf
        # may lower it; the configured minimum keeps both ends on TLS 1.2+ regardless.
        link = Loopback(self.relay(client_ca=self.pki.ca_cert), self.gateway()).say()
        for end in (link.client_tls, link.server_tls):
            options = end.getHandle().set_options(0)  # adds nothing, returns the bitmask
            self.assertEqual(options & SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1)
            self.assertEqual(options & SSL.OP_NO_TLSv1_1, SSL.OP_NO_TLSv1_1)

    def test_relay_refuses_a_client_that_speaks_only_tls_1_1(self) -> None:
        link = Loopback(self.relay(), OldTLS(self.pki, server=False)).say()
        self.assertEqual(link.server_app.received, b"")
        self.assertIn("does not speak TLS 1.2+", link.failure(link.server_app))

    def test_gateway_trusts_only_the_pinned_ca(self) -> None:
        impostor = make_pki(self.pki.directory / "impostor")  # same names, another CA
        relay = server_options(impostor.relay_cert, impostor.relay_key, client_ca=None)
        link = Loopback(relay, self.gateway()).say()
        self.assertEqual(link.server_app.received, b"")
        self.assertIn("not signed by the pinned CA", link.failure(link.client_app))

    def test_gateway_checks_the_relays_host_name(self) -> None:
        link = Loopback(self.relay(), self.gateway("relay.example.com")).say()
        self.assertEqual(link.server_app.received, b"")
        assert link.client_app.reason is not None
        self.assertIsInstance(link.client_app.reason.value, VerificationError)
        self.assertIn("does not carry the expected host name", link.failure(link.client_app))

    def test_gateway_reaches_its_relay_by_ip_address(self) -> None:
        link = Loopback(self.relay(), self.gateway("127.0.0.1")).say()
        self.assertEqual(link.server_app.received, b"hello relay")


class ServerOptionsTests(WithPKI):
    def test_relay_with_a_client_ca_demands_a_client_certificate(self) -> None:
        link = Loopback(self.relay(client_ca=self.pki.ca_cert), self.gateway(with_cert=False)).say()
        self.assertEqual(link.server_app.received, b"")
        self.assertIn("requires a client certificate", link.failure(link.server_app))

    def test_relay_with_a_client_ca_refuses_another_cas_gateway(self) -> None:
        cert, key = make_other_ca_gateway(self.pki.directory, "plant-7")
        gateway = client_options("localhost", self.pki.ca_cert, cert_path=cert, key_path=key)
        link = Loopback(self.relay(client_ca=self.pki.ca_cert), gateway).say()
        self.assertEqual(link.server_app.received, b"")
        self.assertIn("not signed by the pinned CA", link.failure(link.server_app))

    def test_relay_learns_the_gateways_certificate(self) -> None:
        link = Loopback(self.relay(client_ca=self.pki.ca_cert), self.gateway()).say()
        peer = link.server_tls.getPeerCertificate()
        self.assertIsNotNone(peer)
        self.assertEqual(gateway_id_from_certificate(peer.to_cryptography()), "plant-7")

    def test_engineer_listener_without_a_client_ca_takes_anonymous_clients(self) -> None:
        link = Loopback(self.relay(), self.gateway(with_cert=False)).say()
        self.assertEqual(link.server_app.received, b"hello relay")
        self.assertIsNone(link.server_tls.getPeerCertificate())

    def test_gateway_offers_h2_and_nothing_else(self) -> None:
        identity = load_identity(self.pki.relay_cert, self.pki.relay_key)
        web = CertificateOptions(
            privateKey=identity.privateKey.original,
            certificate=identity.original,
            acceptableProtocols=[b"http/1.1", b"h2"],  # would rather speak HTTP/1.1
        )
        link = Loopback(web, self.gateway()).say()
        self.assertEqual(link.server_tls.negotiatedProtocol, b"h2")


class FileErrorTests(WithPKI):
    def assertOneLine(self, error: TLSFileError, *names: object) -> None:
        text = str(error)
        self.assertNotIn("\n", text)
        for name in names:
            self.assertIn(str(name), text)

    def test_missing_ca_names_the_file(self) -> None:
        missing = self.pki.directory / "nope.pem"
        error = self.assertRaises(TLSFileError, load_ca, missing)
        self.assertOneLine(error, missing, "cannot read CA certificate", "No such file")

    def test_garbled_ca_names_the_file(self) -> None:
        garbled = self.pki.directory / "garbled.pem"
        garbled.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        error = self.assertRaises(TLSFileError, load_ca, garbled)
        self.assertOneLine(error, garbled, "not a PEM certificate")

    def test_missing_key_names_the_file(self) -> None:
        missing = self.pki.directory / "nope.key"
        error = self.assertRaises(TLSFileError, load_identity, self.pki.gateway_cert, missing)
        self.assertOneLine(error, missing, "cannot read private key")

    def test_garbled_key_is_named_but_never_quoted(self) -> None:
        garbled = self.pki.directory / "garbled.key"
        garbled.write_bytes(
            b"-----BEGIN PRIVATE KEY-----\nSECRETSECRET\n-----END PRIVATE KEY-----\n"
        )
        error = self.assertRaises(TLSFileError, load_identity, self.pki.gateway_cert, garbled)
        self.assertOneLine(error, garbled, "not a PEM private key")
        self.assertNotIn("SECRET", str(error))

    def test_certificate_given_as_the_key_is_refused(self) -> None:
        error = self.assertRaises(
            TLSFileError, load_identity, self.pki.gateway_cert, self.pki.gateway_cert
        )
        self.assertOneLine(error, self.pki.gateway_cert, "not a PEM private key")

    def test_key_of_another_certificate_is_refused(self) -> None:
        error = self.assertRaises(
            TLSFileError, load_identity, self.pki.gateway_cert, self.pki.relay_key
        )
        self.assertOneLine(error, self.pki.relay_key, "does not match", self.pki.gateway_cert)

    def test_server_options_report_a_missing_client_ca(self) -> None:
        missing = self.pki.directory / "no-ca.pem"
        error = self.assertRaises(
            TLSFileError,
            server_options,
            self.pki.relay_cert,
            self.pki.relay_key,
            client_ca=missing,
        )
        self.assertOneLine(error, missing)

    def test_client_options_report_a_garbled_pinned_ca(self) -> None:
        garbled = self.pki.directory / "garbled-ca.pem"
        garbled.write_bytes(b"hello")
        error = self.assertRaises(TLSFileError, client_options, "localhost", garbled)
        self.assertOneLine(error, garbled, "not a PEM certificate")
