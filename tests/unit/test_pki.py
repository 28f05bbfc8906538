# Twisted's trial and test doubles are only partly annotated; strict mode would flag every call.
# mypy: disable-error-code="no-untyped-call"
"""Tests for the vendor PKI (`gateway.pki`), ``gateway pki`` (`gateway.cli.pki`) and the test PKI.

The certificates are checked three ways: field by field with `cryptography`, by OpenSSL's own
chain verification through pyOpenSSL, and in a real (in-memory) mutual-TLS handshake with the
same Twisted TLS options the relay and the gateway use.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from service_identity import VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    optionsForClientTLS,
)
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import main, parser
from gateway.cli.common import Console, UsageError
from gateway.pki import (
    CLOCK_SKEW,
    CertificateInfo,
    PKIError,
    create_ca,
    describe_certificate,
    gateway_id_from_subject,
    issue_gateway_certificate,
    issue_relay_certificate,
)
from tests.helpers.pki import TestPKI, make_expired_gateway, make_other_ca_gateway, make_pki

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


def temporary_directory(case: SynchronousTestCase) -> Path:
    """A fresh directory removed after the test (trial's mktemp would litter pytest's cwd)."""
    path = Path(tempfile.mkdtemp(prefix="test-pki-"))
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_key(path: Path) -> PrivateKeyTypes:
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def extension(cert: x509.Certificate, kind: type[Any]) -> x509.Extension[Any]:
    return cert.extensions.get_extension_for_class(kind)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class PKITestCase(SynchronousTestCase):
    """Gives every test a fresh directory and a CA that was created at `NOW`."""

    def setUp(self) -> None:
        self.dir = temporary_directory(self)
        self.ca_cert, self.ca_key = self.dir / "ca.pem", self.dir / "ca.key"
        create_ca(self.ca_cert, self.ca_key, now=NOW)

    def gateway(self, gateway_id: str = "plant-7", **kwargs: Any) -> CertificateInfo:
        kwargs.setdefault("now", NOW)
        return issue_gateway_certificate(
            self.ca_cert,
            self.ca_key,
            self.dir / f"{gateway_id}.pem",
            self.dir / f"{gateway_id}.key",
            gateway_id=gateway_id,
            **kwargs,
        )

    def relay(self, *names: str, **kwargs: Any) -> CertificateInfo:
        kwargs.setdefault("now", NOW)
        return issue_relay_certificate(
            self.ca_cert,
            self.ca_key,
            self.dir / "relay.pem",
            self.dir / "relay.key",
            names=names or ("relay.example.com",),
            **kwargs,
        )

    def assertRefused(self, fragment: str, call: Callable[[], object]) -> str:
        """``call`` raises PKIError whose one-line message contains ``fragment``."""
        error = self.assertRaises(PKIError, call)
        message = str(error)
        self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        return message


class CATests(PKITestCase):
    def test_ca_may_sign_leaf_certificates_only(self) -> None:
        """path_length=0: a leaf key that leaks cannot mint more certificates."""
        ca = load(self.ca_cert)
        constraints = extension(ca, x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertEqual(constraints.value, x509.BasicConstraints(ca=True, path_length=0))
        usage = extension(ca, x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.key_cert_sign)
        self.assertTrue(usage.value.crl_sign)
        self.assertFalse(usage.value.digital_signature)
        self.assertEqual(
            extension(ca, x509.SubjectKeyIdentifier).value,
            x509.SubjectKeyIdentifier.from_public_key(ca.public_key()),
        )
        ca.verify_directly_issued_by(ca)  # self-signed

    def test_default_is_ecdsa_p256_signed_with_sha256(self) -> None:
        ca = load(self.ca_cert)
        key = ca.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        self.assertEqual(key.curve.name, "secp256r1")
        assert ca.signature_hash_algorithm is not None
        self.assertEqual(ca.signature_hash_algorithm.name, "sha256")
        self.assertEqual(describe_certificate(self.ca_cert)[0].key_type, "ECDSA P-256")

    def test_ca_name_and_lifetime(self) -> None:
        info = create_ca(
            self.dir / "b.pem", self.dir / "b.key", name="ACME support CA", days=30, now=NOW
        )
        self.assertEqual(info.subject, "CN=ACME support CA")
        self.assertEqual(info.issuer, "CN=ACME support CA")
        self.assertTrue(info.is_ca)
        self.assertEqual(info.not_before, NOW - timedelta(minutes=5))
        self.assertEqual(info.not_after, NOW + timedelta(days=30))

    def test_key_files_are_private(self) -> None:
        """Keys 0600 and certificates 0644 whatever the umask says."""
        for umask in (0o000, 0o077):
            old = os.umask(umask)
            try:
                cert, key = self.dir / f"ca-{umask}.pem", self.dir / f"ca-{umask}.key"
                create_ca(cert, key)
            finally:
                os.umask(old)
            self.assertEqual(mode(key), 0o600)
            self.assertEqual(mode(cert), 0o644)

    def test_key_is_never_readable_by_others_even_while_written(self) -> None:
        """The key's file is born 0600 and exclusive, then renamed into place."""
        opened: list[tuple[str, int, int]] = []
        real_open = os.open

        def recording_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
            opened.append((os.fspath(path), flags, mode))
            return real_open(path, flags, mode, **kw)

        self.patch(os, "open", recording_open)
        create_ca(self.dir / "new.pem", self.dir / "new.key")
        key_opens = [(flags, m) for path, flags, m in opened if ".new.key." in path]
        self.assertEqual(len(key_opens), 1)
        flags, created_mode = key_opens[0]
        self.assertEqual(flags & (os.O_CREAT | os.O_EXCL), os.O_CREAT | os.O_EXCL)
        self.assertEqual(created_mode, 0o600)
        self.assertFalse(any(path.endswith("new.key") for path, _, _ in opened))

    def test_key_is_unencrypted_pkcs8_pem(self) -> None:
        data = self.ca_key.read_bytes()
        self.assertTrue(data.startswith(b"-----BEGIN PRIVATE KEY-----\n"))
        key = serialization.load_pem_private_key(data, password=None)
        self.assertEqual(
            key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            load(self.ca_cert)
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )

    def test_refuses_to_overwrite_without_force(self) -> None:
        before = (self.ca_cert.read_bytes(), self.ca_key.read_bytes())
        message = self.assertRefused(
            "exists; pass --force to replace it", lambda: create_ca(self.ca_cert, self.ca_key)
        )
        self.assertEqual(message, f"{self.ca_cert} exists; pass --force to replace it")
        self.assertEqual((self.ca_cert.read_bytes(), self.ca_key.read_bytes()), before)

    def test_an_existing_key_alone_blocks_the_pair(self) -> None:
        """Refusing before generating anything leaves no mismatched pair behind."""
        (self.dir / "solo.key").write_bytes(b"precious")
        self.assertRefused(
            "solo.key exists", lambda: create_ca(self.dir / "solo.pem", self.dir / "solo.key")
        )
        self.assertFalse((self.dir / "solo.pem").exists())
        self.assertEqual((self.dir / "solo.key").read_bytes(), b"precious")

    def test_force_replaces_both_files(self) -> None:
        old = describe_certificate(self.ca_cert)[0]
        new = create_ca(self.ca_cert, self.ca_key, force=True)
        self.assertNotEqual(old.sha256_fingerprint, new.sha256_fingerprint)
        self.assertEqual(describe_certificate(self.ca_cert), [new])
        self.assertEqual(mode(self.ca_key), 0o600)

    def test_no_temporary_files_are_left_behind(self) -> None:
        self.gateway()
        self.assertEqual(
            sorted(p.name for p in self.dir.iterdir()),
            ["ca.key", "ca.pem", "plant-7.key", "plant-7.pem"],
        )

    def test_missing_directory_is_reported(self) -> None:
        missing = self.dir / "nowhere"
        self.assertRefused(
            f"directory {missing} does not exist",
            lambda: create_ca(missing / "ca.pem", missing / "ca.key"),
        )

    def test_unknown_key_type_is_refused(self) -> None:
        self.assertRefused(
            "use 'ec' or 'rsa'",
            lambda: create_ca(self.dir / "x.pem", self.dir / "x.key", key_type="dsa"),
        )

    def test_days_must_be_positive(self) -> None:
        self.assertRefused(
            "at least 1", lambda: create_ca(self.dir / "x.pem", self.dir / "x.key", days=0)
        )
        self.assertRefused(
            "year 9999",
            lambda: create_ca(self.dir / "x.pem", self.dir / "x.key", days=10**7),
        )

    def test_naive_now_is_a_programming_error(self) -> None:
        self.assertRaises(
            ValueError,
            create_ca,
            self.dir / "x.pem",
            self.dir / "x.key",
            now=datetime(2030, 1, 1),
        )


class LeafTests(PKITestCase):
    """What relay and gateway certificates have in common."""

    def test_leaf_is_signed_by_the_ca_and_names_it(self) -> None:
        self.gateway()
        ca, leaf = load(self.ca_cert), load(self.dir / "plant-7.pem")
        leaf.verify_directly_issued_by(ca)
        self.assertEqual(leaf.issuer, ca.subject)
        self.assertEqual(
            extension(leaf, x509.AuthorityKeyIdentifier).value.key_identifier,
            extension(ca, x509.SubjectKeyIdentifier).value.digest,
        )
        self.assertEqual(
            extension(leaf, x509.SubjectKeyIdentifier).value,
            x509.SubjectKeyIdentifier.from_public_key(leaf.public_key()),
        )
        assert leaf.signature_hash_algorithm is not None
        self.assertEqual(leaf.signature_hash_algorithm.name, "sha256")

    def test_leaf_cannot_act_as_a_ca(self) -> None:
        self.relay()
        leaf = load(self.dir / "relay.pem")
        constraints = extension(leaf, x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertFalse(constraints.value.ca)
        usage = extension(leaf, x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.digital_signature)
        self.assertFalse(usage.value.key_encipherment)  # EC keys cannot encrypt
        self.assertFalse(usage.value.key_cert_sign)

    def test_validity_allows_for_clock_skew(self) -> None:
        info = self.gateway(days=90)
        self.assertEqual(CLOCK_SKEW, timedelta(minutes=5))
        self.assertEqual(info.not_before, NOW - CLOCK_SKEW)
        self.assertEqual(info.not_after, NOW + timedelta(days=90))
        self.assertEqual(info.not_after.tzinfo, UTC)

    def test_serials_are_random_and_fit_20_bytes(self) -> None:
        serials = {self.gateway(f"gw-{i}").serial for i in range(4)}
        self.assertEqual(len(serials), 4)
        for serial in serials:
            self.assertTrue(0 < serial < 2**159)

    def test_rsa_gives_rsa_3072_with_key_encipherment(self) -> None:
        info = self.gateway(key_type="rsa")
        self.assertEqual(info.key_type, "RSA 3072")
        leaf = load(info.path)
        self.assertIsInstance(leaf.public_key(), rsa.RSAPublicKey)
        usage = extension(leaf, x509.KeyUsage).value
        self.assertTrue(usage.digital_signature)
        self.assertTrue(usage.key_encipherment)

    def test_wrong_ca_key_is_refused(self) -> None:
        create_ca(self.dir / "other.pem", self.dir / "other.key")
        message = self.assertRefused(
            "does not match the CA certificate",
            lambda: issue_gateway_certificate(
                self.ca_cert,
                self.dir / "other.key",
                self.dir / "gw.pem",
                self.dir / "gw.key",
                gateway_id="gw",
            ),
        )
        self.assertTrue(message.startswith(f"{self.dir / 'other.key'}: "))
        self.assertFalse((self.dir / "gw.pem").exists())
        self.assertFalse((self.dir / "gw.key").exists())

    def test_a_leaf_certificate_cannot_issue(self) -> None:
        self.relay()
        self.assertRefused(
            "relay.pem: not a CA certificate",
            lambda: issue_gateway_certificate(
                self.dir / "relay.pem",
                self.dir / "relay.key",
                self.dir / "gw.pem",
                self.dir / "gw.key",
                gateway_id="gw",
            ),
        )

    def test_expired_ca_is_refused(self) -> None:
        self.assertRefused(
            f"the CA certificate expired on {NOW + timedelta(days=3650):%Y-%m-%d}",
            lambda: self.gateway(now=NOW + timedelta(days=3651)),
        )

    def test_issuing_never_overwrites_the_ca_itself(self) -> None:
        """Gateway id "ca" defaults to DIR/ca.pem: even --force must not destroy the CA."""
        before = self.ca_cert.read_bytes()
        self.assertRefused("refusing to overwrite the CA's own files", lambda: self.gateway("ca"))
        self.assertRefused(
            "refusing to overwrite the CA's own files",
            lambda: self.gateway("ca", force=True),
        )
        self.assertEqual(self.ca_cert.read_bytes(), before)

    def test_unreadable_ca_files_are_reported_without_their_contents(self) -> None:
        def issue() -> CertificateInfo:
            return self.gateway(force=True)

        self.ca_key.unlink()
        self.assertRefused(f"{self.ca_key}: no such file", issue)

        secret = "TOPSECRETKEYMATERIAL"
        self.ca_key.write_text(
            f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"
        )
        message = self.assertRefused(f"{self.ca_key}: not a PEM private key", issue)
        self.assertNotIn(secret, message)

        encrypted = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"password"),
        )
        self.ca_key.write_bytes(encrypted)
        self.assertRefused("encrypted private keys are not supported", issue)

        self.ca_cert.write_text("not a certificate\n")
        self.assertRefused(f"{self.ca_cert}: not a PEM certificate", issue)

    def test_mismatch_message_holds_no_key_material(self) -> None:
        create_ca(self.dir / "other.pem", self.dir / "other.key")
        key_lines = (self.dir / "other.key").read_text().splitlines()[1:-1]
        message = self.assertRefused(
            "does not match",
            lambda: issue_relay_certificate(
                self.ca_cert,
                self.dir / "other.key",
                self.dir / "r.pem",
                self.dir / "r.key",
                names=["relay"],
            ),
        )
        for line in key_lines:
            self.assertNotIn(line, message)


class RelayCertificateTests(PKITestCase):
    def test_relay_certificate_serves_tls_for_its_names(self) -> None:
        info = self.relay("relay.example.com", "203.0.113.10", "::1", "*.relay.example.com")
        leaf = load(info.path)
        self.assertEqual(
            extension(leaf, x509.ExtendedKeyUsage).value,
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        )
        self.assertEqual(info.common_name, "relay.example.com")
        self.assertEqual(
            info.names, ("relay.example.com", "203.0.113.10", "::1", "*.relay.example.com")
        )
        san = extension(leaf, x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName)[0], "relay.example.com")
        self.assertEqual(
            tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)), info.names[1:3]
        )

    def test_gateways_accept_it_for_its_names_only(self) -> None:
        """The same service_identity checks the gateway's TLS client runs."""
        leaf = load(self.relay("relay.example.com", "127.0.0.1").path)
        verify_certificate_hostname(leaf, "relay.example.com")
        verify_certificate_ip_address(leaf, "127.0.0.1")
        self.assertRaises(VerificationError, verify_certificate_hostname, leaf, "evil.example")
        self.assertRaises(VerificationError, verify_certificate_ip_address, leaf, "127.0.0.2")

    def test_ip_first_name_is_the_common_name_in_canonical_form(self) -> None:
        info = self.relay("[2001:DB8::0001]", "relay.example.com")
        self.assertEqual(info.common_name, "2001:db8::1")
        self.assertEqual(info.names, ("2001:db8::1", "relay.example.com"))

    def test_duplicate_names_are_listed_once(self) -> None:
        info = self.relay("Relay.example.com", "relay.example.com", "127.0.0.1", "127.0.0.1")
        self.assertEqual(info.names, ("Relay.example.com", "127.0.0.1"))

    def test_bad_ip_name_is_refused(self) -> None:
        for bad, problem in [
            ("300.1.2.3", "not a valid IPv4 address"),
            ("10.0.0", "not a valid IPv4 address"),
            ("2001:db8::g", "not a valid IPv6 address"),
            ("fe80::1%eth0", "scoped IPv6 addresses cannot go in a certificate"),
        ]:
            self.assertRefused(f"{bad}: {problem}", partial(self.relay, "ok.example", bad))
        self.assertFalse((self.dir / "relay.pem").exists())

    def test_bad_dns_name_is_refused(self) -> None:
        for bad in [
            "-relay.example.com",
            "relay-.example.com",
            "relay..example.com",
            "under_score.example.com",
            "exa mple.com",
            "relay.example.com.",
            "a." + "b" * 64 + ".com",
            "*",
            "relay.*.example.com",
            "x" * 254,
        ]:
            self.assertRefused("not a valid DNS name", partial(self.relay, bad))
        self.assertRefused("xn--", lambda: self.relay("bücher.example"))

    def test_names_must_not_be_empty(self) -> None:
        self.assertRefused(
            "at least one relay name",
            lambda: issue_relay_certificate(
                self.ca_cert, self.ca_key, self.dir / "r.pem", self.dir / "r.key", names=[]
            ),
        )
        self.assertRefused("empty relay name", lambda: self.relay("  "))

    def test_first_name_must_fit_the_common_name(self) -> None:
        long_name = ("a" * 40) + "." + ("b" * 40) + ".example"
        self.assertRefused("list a shorter name first", lambda: self.relay(long_name))
        self.assertEqual(self.relay("relay.example", long_name).names[1], long_name)


class GatewayCertificateTests(PKITestCase):
    def test_gateway_id_is_the_subject_common_name(self) -> None:
        info = self.gateway("plant-7-line2")
        leaf = load(info.path)
        self.assertEqual(info.subject, "CN=plant-7-line2")
        self.assertEqual(gateway_id_from_subject(leaf.subject), "plant-7-line2")
        self.assertEqual(info.names, ())

    def test_gateway_certificate_is_a_client_certificate(self) -> None:
        leaf = load(self.gateway().path)
        self.assertEqual(
            extension(leaf, x509.ExtendedKeyUsage).value,
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
        )

    def test_bad_gateway_id_is_refused(self) -> None:
        for bad in [
            "",
            "-plant",
            ".plant",
            "plant 7",
            "plant/7",
            "../ca",
            "plänt",
            "p\n",
            "p" * 64,
            "plant-",
            "Plant7",
            "plant_7",
            "plant.7",
            "web--plant7",
        ]:
            self.assertRefused(
                "not valid, use 1-63 lower-case letters, digits or '-'", partial(self.gateway, bad)
            )
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["ca.key", "ca.pem"])

    def test_longest_gateway_id_is_accepted(self) -> None:
        self.assertEqual(self.gateway("g" * 63).common_name, "g" * 63)


class GatewayIdFromSubjectTests(SynchronousTestCase):
    def name(self, *attributes: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
        return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])

    def test_single_valid_common_name_is_the_gateway_id(self) -> None:
        subject = self.name((NameOID.ORGANIZATION_NAME, "ACME"), (NameOID.COMMON_NAME, "gw-1"))
        self.assertEqual(gateway_id_from_subject(subject), "gw-1")

    def test_no_common_name_names_no_gateway(self) -> None:
        self.assertIsNone(gateway_id_from_subject(self.name((NameOID.ORGANIZATION_NAME, "gw"))))

    def test_two_common_names_are_ambiguous(self) -> None:
        subject = self.name((NameOID.COMMON_NAME, "gw-1"), (NameOID.COMMON_NAME, "gw-2"))
        self.assertIsNone(gateway_id_from_subject(subject))

    def test_common_name_that_is_no_gateway_id_names_no_gateway(self) -> None:
        self.assertIsNone(gateway_id_from_subject(self.name((NameOID.COMMON_NAME, "gw 1"))))


class DescribeTests(PKITestCase):
    def test_describes_every_certificate_in_a_chain_file(self) -> None:
        self.gateway()
        chain = self.dir / "chain.pem"
        chain.write_bytes((self.dir / "plant-7.pem").read_bytes() + self.ca_cert.read_bytes())
        infos = describe_certificate(chain)
        self.assertEqual(
            [i.subject for i in infos], ["CN=plant-7", "CN=Remote service gateway vendor CA"]
        )
        self.assertEqual([i.is_ca for i in infos], [False, True])
        self.assertEqual({i.path for i in infos}, {chain})

    def test_fingerprint_is_colon_separated_sha256(self) -> None:
        info = describe_certificate(self.ca_cert)[0]
        digest = load(self.ca_cert).fingerprint(hashes.SHA256())
        self.assertEqual(info.sha256_fingerprint, ":".join(f"{b:02X}" for b in digest))

    def test_a_key_beside_the_certificate_is_skipped(self) -> None:
        combined = self.dir / "combined.pem"
        combined.write_bytes(self.ca_cert.read_bytes() + self.ca_key.read_bytes())
        self.assertEqual(len(describe_certificate(combined)), 1)

    def test_a_key_file_is_not_a_certificate(self) -> None:
        message = self.assertRefused(
            "holds a private key, not a certificate", lambda: describe_certificate(self.ca_key)
        )
        for line in self.ca_key.read_text().splitlines()[1:-1]:
            self.assertNotIn(line, message)

    def test_unusable_files_are_reported(self) -> None:
        self.assertRefused("no such file", lambda: describe_certificate(self.dir / "nope.pem"))
        junk = self.dir / "junk.pem"
        junk.write_text("hello\n")
        self.assertRefused("not a PEM certificate", lambda: describe_certificate(junk))
        junk.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        self.assertRefused("damaged PEM certificate", lambda: describe_certificate(junk))

    def test_expired_certificate_is_reported_expired(self) -> None:
        pki = make_pki(self.dir / "pki")
        cert, _ = make_expired_gateway(pki)
        info = describe_certificate(cert)[0]
        now = datetime.now(UTC)
        self.assertFalse(info.is_valid_at(now))
        self.assertRegex(info.validity_text(now), r"^EXPIRED 72[89] days ago$")

    def test_not_yet_valid_certificate_is_reported(self) -> None:
        info = self.gateway()
        self.assertEqual(
            info.validity_text(NOW - timedelta(days=2)),
            "not yet valid (starts in 2 days; check the clock)",
        )

    def test_remaining_validity_is_reported(self) -> None:
        info = self.gateway(days=90)
        self.assertTrue(info.is_valid_at(NOW))
        self.assertEqual(info.validity_text(NOW), "expires in 90 days")
        self.assertEqual(
            info.validity_text(info.not_after - timedelta(hours=5)), "expires in 5 hours"
        )


# --------------------------------------------------------------------------------------------
# OpenSSL's own verification, as the relay and the gateway perform it


def openssl_verify(ca: Path, leaf: Path) -> None:
    """Raise X509StoreContextError unless OpenSSL builds a valid chain from ``leaf`` to ``ca``."""
    store = crypto.X509Store()
    store.add_cert(crypto.load_certificate(crypto.FILETYPE_PEM, ca.read_bytes()))
    cert = crypto.load_certificate(crypto.FILETYPE_PEM, leaf.read_bytes())
    crypto.X509StoreContext(store, cert).verify_certificate()


class OpenSSLVerificationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = make_pki(temporary_directory(self))

    def test_gateway_certificate_verifies_against_the_ca(self) -> None:
        openssl_verify(self.pki.ca_cert, self.pki.gateway_cert)
        openssl_verify(self.pki.ca_cert, self.pki.relay_cert)

    def test_other_ca_gateway_does_not_verify(self) -> None:
        cert, _ = make_other_ca_gateway(self.pki.directory)
        self.assertEqual(describe_certificate(cert)[0].common_name, self.pki.gateway_id)
        self.assertRaises(crypto.X509StoreContextError, openssl_verify, self.pki.ca_cert, cert)

    def test_expired_gateway_does_not_verify(self) -> None:
        cert, _ = make_expired_gateway(self.pki)
        error = self.assertRaises(
            crypto.X509StoreContextError, openssl_verify, self.pki.ca_cert, cert
        )
        self.assertIn("expired", str(error))

    def test_test_pki_keys_belong_to_their_certificates(self) -> None:
        for cert, key in [
            (self.pki.relay_cert, self.pki.relay_key),
            (self.pki.gateway_cert, self.pki.gateway_key),
            make_expired_gateway(self.pki),
            make_other_ca_gateway(self.pki.directory),
        ]:
            PrivateCertificate.loadPEM(cert.read_text() + key.read_text())  # checks the pair


# --------------------------------------------------------------------------------------------
# A real mutual-TLS handshake, in memory


class Recorder(Protocol):
    """Remembers what arrived and why the connection ended."""

    def __init__(self) -> None:
        self.received = b""
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason


def handshake(
    pki: TestPKI, client_cert: Path, client_key: Path, relay_host: str = "localhost"
) -> tuple[TLSMemoryBIOProtocol, Recorder, Recorder]:
    """The gateway (TLS client) dials the relay (TLS server) and sends b"hello relay".

    Returns the relay's TLS protocol, the relay's application protocol and the gateway's.

    Uses the TLS options the product uses: a pinned CA on both sides, service_identity host
    name checks on the gateway, a required client certificate on the relay.
    """
    ca = Certificate.loadPEM(pki.ca_cert.read_bytes())
    # cryptography objects: pyOpenSSL deprecated its own X509/PKey, Twisted's hints still name them.
    server_options = CertificateOptions(
        privateKey=load_key(pki.relay_key),  # type: ignore[arg-type]
        certificate=load(pki.relay_cert),  # type: ignore[arg-type]
        trustRoot=ca,
    )
    client_options = optionsForClientTLS(
        relay_host,
        trustRoot=ca,
        extraCertificateOptions={
            "privateKey": load_key(client_key),
            "certificate": load(client_cert),
        },
    )
    server_app, client_app = Recorder(), Recorder()
    clock = Clock()
    server_factory = TLSMemoryBIOFactory(
        server_options, False, Factory.forProtocol(lambda: server_app), clock=clock
    )
    client_factory = TLSMemoryBIOFactory(
        client_options, True, Factory.forProtocol(lambda: client_app), clock=clock
    )

    def server() -> TLSMemoryBIOProtocol:
        proto = server_factory.buildProtocol(None)
        assert isinstance(proto, TLSMemoryBIOProtocol)
        return proto

    def client() -> TLSMemoryBIOProtocol:
        proto = client_factory.buildProtocol(None)
        assert isinstance(proto, TLSMemoryBIOProtocol)
        return proto

    client_tls, server_tls, pump = connectedServerAndClient(server, client, clock=clock)
    assert client_tls.transport is not None
    client_app.transport.write(b"hello relay")  # type: ignore[union-attr]
    pump.flush()
    return server_tls, server_app, client_app


def refusal(app: Recorder) -> str:
    """Why ``app``'s connection ended, as text (empty if it is still open)."""
    return "" if app.reason is None else str(app.reason.value)


class MutualTLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = make_pki(temporary_directory(self), gateway_id="plant-7")

    def test_relay_learns_the_gateway_id_from_the_handshake(self) -> None:
        server_tls, server_app, _ = handshake(self.pki, self.pki.gateway_cert, self.pki.gateway_key)
        self.assertEqual(server_app.received, b"hello relay")
        peer = server_tls.getPeerCertificate()
        self.assertIsNotNone(peer)
        self.assertEqual(gateway_id_from_subject(peer.to_cryptography().subject), "plant-7")

    def test_gateway_reaches_the_relay_by_ip_address(self) -> None:
        _, server_app, _ = handshake(
            self.pki, self.pki.gateway_cert, self.pki.gateway_key, relay_host="127.0.0.1"
        )
        self.assertEqual(server_app.received, b"hello relay")

    def test_relay_refuses_a_gateway_from_another_ca(self) -> None:
        cert, key = make_other_ca_gateway(self.pki.directory, "plant-7")
        _, server_app, _ = handshake(self.pki, cert, key)
        self.assertEqual(server_app.received, b"")
        self.assertIn("certificate verify failed", refusal(server_app))

    def test_relay_refuses_an_expired_gateway(self) -> None:
        cert, key = make_expired_gateway(self.pki, "plant-7")
        _, server_app, _ = handshake(self.pki, cert, key)
        self.assertEqual(server_app.received, b"")
        self.assertIn("certificate verify failed", refusal(server_app))

    def test_gateway_refuses_a_relay_under_another_name(self) -> None:
        _, server_app, client_app = handshake(
            self.pki, self.pki.gateway_cert, self.pki.gateway_key, relay_host="relay.example.com"
        )
        self.assertEqual(server_app.received, b"")
        self.assertIsNotNone(client_app.reason)
        assert client_app.reason is not None
        self.assertIsInstance(client_app.reason.value, VerificationError)


# --------------------------------------------------------------------------------------------
# gateway pki


class CLITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = temporary_directory(self) / "pki"

    def run_cli(self, *argv: str, code: int = 0) -> tuple[str, str]:
        """Run ``gateway pki ARGV`` in-process; returns (stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main(["pki", *argv], stdout=out, stderr=err), code, err.getvalue())
        return out.getvalue(), err.getvalue()

    def usage_error(self, *argv: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main(["pki", *argv], stdout=out, stderr=err), 2)
        return err.getvalue()

    def test_init_ca_creates_a_private_ca_directory(self) -> None:
        ca_dir = self.dir / "vendor-ca"
        out, err = self.run_cli("init-ca", "--dir", str(ca_dir), "--name", "ACME CA")
        self.assertEqual(err, "")
        self.assertEqual(mode(ca_dir), 0o700)
        self.assertIn(f"wrote {ca_dir / 'ca.pem'}", out)
        self.assertIn(f"wrote {ca_dir / 'ca.key'}", out)
        self.assertIn("subject: CN=ACME CA", out)
        self.assertTrue(describe_certificate(ca_dir / "ca.pem")[0].is_ca)

    def test_init_ca_with_rsa(self) -> None:
        self.run_cli("init-ca", "--dir", str(self.dir), "--rsa", "--days", "10")
        info = describe_certificate(self.dir / "ca.pem")[0]
        self.assertEqual(info.key_type, "RSA 3072")
        self.assertEqual(info.not_after - info.not_before, timedelta(days=10) + CLOCK_SKEW)

    def test_issue_relay_writes_next_to_the_ca_by_default(self) -> None:
        self.run_cli("init-ca", "--dir", str(self.dir))
        out, _ = self.run_cli(
            "issue-relay",
            "--ca-dir",
            str(self.dir),
            "--name",
            "relay.example.com",
            "--name",
            "203.0.113.10",
        )
        self.assertIn(f"wrote {self.dir / 'relay.pem'}", out)
        self.assertIn("subject: CN=relay.example.com", out)
        self.assertIn("names: relay.example.com, 203.0.113.10", out)
        openssl_verify(self.dir / "ca.pem", self.dir / "relay.pem")

    def test_issue_gateway_names_files_after_the_gateway(self) -> None:
        self.run_cli("init-ca", "--dir", str(self.dir))
        out, _ = self.run_cli("issue-gateway", "--ca-dir", str(self.dir), "--id", "plant-7")
        self.assertIn(f"wrote {self.dir / 'plant-7.pem'}", out)
        self.assertIn(f"wrote {self.dir / 'plant-7.key'}", out)
        self.assertIn("subject: CN=plant-7", out)
        self.assertEqual(mode(self.dir / "plant-7.key"), 0o600)

    def test_out_prefix_chooses_the_files(self) -> None:
        self.run_cli("init-ca", "--dir", str(self.dir))
        for out_arg in ("edge", "edge.pem"):
            self.run_cli(
                "issue-gateway",
                "--ca-dir",
                str(self.dir),
                "--id",
                "plant-7",
                "--out",
                str(self.dir / out_arg),
                "--force",
            )
            self.assertEqual(describe_certificate(self.dir / "edge.pem")[0].common_name, "plant-7")
        self.assertTrue((self.dir / "edge.key").exists())
        self.assertFalse((self.dir / "edge.pem.pem").exists())

    def test_user_mistake_is_one_line_on_stderr_and_exit_2(self) -> None:
        out, err = self.run_cli("issue-gateway", "--ca-dir", str(self.dir), "--id", "gw", code=2)
        self.assertEqual(out, "")
        self.assertEqual(err, f"gateway pki: {self.dir / 'ca.pem'}: no such file\n")

    def test_refuses_to_overwrite_without_force(self) -> None:
        self.run_cli("init-ca", "--dir", str(self.dir))
        before = (self.dir / "ca.key").read_bytes()
        _, err = self.run_cli("init-ca", "--dir", str(self.dir), code=2)
        self.assertEqual(
            err, f"gateway pki: {self.dir / 'ca.pem'} exists; pass --force to replace it\n"
        )
        self.assertEqual((self.dir / "ca.key").read_bytes(), before)
        self.run_cli("init-ca", "--dir", str(self.dir), "--force")
        self.assertNotEqual((self.dir / "ca.key").read_bytes(), before)

    def test_bad_names_and_ids_are_user_errors(self) -> None:
        self.run_cli("init-ca", "--dir", str(self.dir))
        _, err = self.run_cli(
            "issue-relay", "--ca-dir", str(self.dir), "--name", "1.2.3.999", code=2
        )
        self.assertEqual(err, "gateway pki: 1.2.3.999: not a valid IPv4 address\n")
        _, err = self.run_cli("issue-gateway", "--ca-dir", str(self.dir), "--id", "a b", code=2)
        self.assertTrue(err.startswith("gateway pki: gateway id 'a b': "))

    def test_bad_days_is_a_usage_error(self) -> None:
        self.assertIn(
            "must be at least 1", self.usage_error("init-ca", "--dir", "x", "--days", "0")
        )
        self.assertIn(
            "not a whole number", self.usage_error("init-ca", "--dir", "x", "--days", "ten")
        )

    def test_relay_needs_a_name(self) -> None:
        self.assertIn("--name", self.usage_error("issue-relay", "--ca-dir", "x"))

    def test_show_reports_validity_in_plain_words(self) -> None:
        pki = make_pki(self.dir)
        expired, _ = make_expired_gateway(pki)
        out, _ = self.run_cli("show", str(pki.ca_cert), str(pki.relay_cert), str(expired))
        blocks = out.split("\n\n")
        self.assertEqual(len(blocks), 3)
        self.assertIn("CA:          yes", blocks[0])
        self.assertIn("(expires in 3650 days)", blocks[0])
        self.assertIn("names:       localhost, 127.0.0.1", blocks[1])
        self.assertIn("CA:          no", blocks[1])
        self.assertIn(f"{expired}:", blocks[2])
        self.assertIn("subject:     CN=test-gateway", blocks[2])
        self.assertIn("issuer:      CN=Test vendor CA", blocks[2])
        self.assertRegex(blocks[2], r"valid until: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(EXPIRED ")
        self.assertIn(f"sha256:      {describe_certificate(expired)[0].sha256_fingerprint}", out)

    def test_show_json_lists_every_certificate(self) -> None:
        pki = make_pki(self.dir)
        expired, _ = make_expired_gateway(pki)
        out, _ = self.run_cli("show", "--json", str(pki.gateway_cert), str(expired))
        shown = json.loads(out)
        self.assertEqual([c["common_name"] for c in shown], ["test-gateway", "test-gateway"])
        self.assertEqual([c["status"] for c in shown], ["valid", "expired"])
        info = describe_certificate(pki.gateway_cert)[0]
        self.assertEqual(datetime.fromisoformat(shown[0]["not_after"]), info.not_after)
        self.assertEqual(datetime.fromisoformat(shown[0]["not_before"]), info.not_before)
        self.assertEqual(shown[0]["sha256_fingerprint"], info.sha256_fingerprint)
        self.assertEqual(shown[0]["path"], str(pki.gateway_cert))
        self.assertFalse(shown[0]["is_ca"])

    def test_show_of_a_key_file_is_refused(self) -> None:
        pki = make_pki(self.dir)
        out, err = self.run_cli("show", str(pki.gateway_key), code=2)
        self.assertEqual(out, "")
        self.assertEqual(
            err, f"gateway pki: {pki.gateway_key}: holds a private key, not a certificate\n"
        )

    def test_every_command_has_help_with_an_example(self) -> None:
        for command in ("init-ca", "issue-relay", "issue-gateway", "show"):
            stdout = io.StringIO()
            self.assertEqual(main(["pki", command, "--help"], stdout=stdout), 0)
            self.assertIn("example", stdout.getvalue())
            self.assertIn(f"gateway pki {command} ", stdout.getvalue())

    def test_the_parsed_handler_runs_the_command_too(self) -> None:
        """The handler the parser sets is the whole command; it fails by raising, like all."""
        args = parser().parse_args(["pki", "init-ca", "--dir", str(self.dir)])
        console = Console(io.StringIO(), io.StringIO())
        self.assertEqual(args.handler(args, console), 0)
        error = self.assertRaises(UsageError, args.handler, args, console)
        self.assertEqual(error.exit_code, 2)
        self.assertIn("exists; pass --force", error.line)
