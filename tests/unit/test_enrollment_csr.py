"""Certificate requests: the relay signs only a well-formed CSR naming exactly the token's id."""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial.unittest import SynchronousTestCase

from gateway.enrollment import keys
from tests.helpers.pki import make_pki


def _csr(key: object, *attributes: x509.NameAttribute[str]) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(list(attributes)))
    return csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


class CheckCSRTests(SynchronousTestCase):
    def test_a_csr_for_the_tokens_gateway_is_accepted(self) -> None:
        key = keys.new_key()
        csr = keys.check_csr(keys.make_csr(key, "plant7"), "plant7")
        self.assertEqual(csr.subject.rfc4514_string(), "CN=plant7")

    def test_a_csr_for_another_gateway_is_refused(self) -> None:
        with self.assertRaisesRegex(keys.CSRRefused, "names gateway 'plant8'.*'plant7'"):
            keys.check_csr(keys.make_csr(keys.new_key(), "plant8"), "plant7")

    def test_a_subject_with_more_than_the_id_is_refused(self) -> None:
        pem = _csr(
            keys.new_key(),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ACME"),
            x509.NameAttribute(NameOID.COMMON_NAME, "plant7"),
        )
        with self.assertRaisesRegex(keys.CSRRefused, "exactly CN="):
            keys.check_csr(pem, "plant7")

    def test_two_common_names_are_refused(self) -> None:
        pem = _csr(
            keys.new_key(),
            x509.NameAttribute(NameOID.COMMON_NAME, "plant7"),
            x509.NameAttribute(NameOID.COMMON_NAME, "plant8"),
        )
        with self.assertRaises(keys.CSRRefused):
            keys.check_csr(pem, "plant7")

    def test_garbage_and_oversized_requests_are_refused(self) -> None:
        for pem in (b"", b"hello", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", b"x" * 9000):
            with self.assertRaises(keys.CSRRefused):
                keys.check_csr(pem, "plant7")

    def test_a_tampered_signature_is_refused(self) -> None:
        pem = keys.make_csr(keys.new_key(), "plant7")
        der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
        der[-3] ^= 0xFF
        import base64

        body = base64.encodebytes(bytes(der)).decode()
        tampered = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
        with self.assertRaises(keys.CSRRefused):
            keys.check_csr(tampered, "plant7")

    def test_a_weak_rsa_key_is_refused(self) -> None:
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        pem = _csr(weak, x509.NameAttribute(NameOID.COMMON_NAME, "plant7"))
        with self.assertRaisesRegex(keys.CSRRefused, "at least 2048"):
            keys.check_csr(pem, "plant7")


class SignerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.work = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.work)
        self.pki = make_pki(self.work / "pki")

    def test_the_certificate_is_a_client_certificate_from_the_gateway_ca(self) -> None:
        signer = keys.Signer(self.pki.ca_cert, self.pki.ca_key, days=30)
        key = keys.new_key()
        now = datetime(2026, 1, 1, tzinfo=UTC)
        cert = signer.sign(keys.check_csr(keys.make_csr(key, "plant7"), "plant7"), now=now)
        ca = x509.load_pem_x509_certificate(self.pki.ca_cert.read_bytes())
        cert.verify_directly_issued_by(ca)
        self.assertEqual(cert.public_key(), key.public_key())
        self.assertEqual(cert.subject.rfc4514_string(), "CN=plant7")
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.CLIENT_AUTH])
        self.assertEqual(cert.not_valid_after_utc, now + timedelta(days=30))
        self.assertEqual(cert.not_valid_before_utc, now - timedelta(minutes=5))

    def test_renewal_falls_due_at_two_thirds_of_the_life(self) -> None:
        signer = keys.Signer(self.pki.ca_cert, self.pki.ca_key, days=0.001)  # 86.4 s
        now = datetime(2026, 1, 1, tzinfo=UTC)
        cert = signer.sign(keys.check_csr(keys.make_csr(keys.new_key(), "p"), "p"), now=now)
        start = now.timestamp() - 8.64  # a tenth of a short life, for a clock behind
        end = now.timestamp() + 86.4
        self.assertLess(abs(keys.renewal_due(cert) - (start + (end - start) * 2 / 3)), 1)

    def test_a_key_that_is_not_the_cas_is_refused(self) -> None:
        other = make_pki(self.work / "other")
        from gateway.pki import PKIError

        with self.assertRaises(PKIError):
            keys.Signer(self.pki.ca_cert, other.ca_key, days=30)


class KeyTests(SynchronousTestCase):
    def test_a_new_key_is_p256(self) -> None:
        key = keys.new_key()
        self.assertIsInstance(key.curve, ec.SECP256R1)
        self.assertEqual(keys.load_key(keys.key_pem(key)).private_numbers(), key.private_numbers())
