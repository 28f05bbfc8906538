"""Keys and certificate signing requests on the gateway; checking and signing them on the relay.

The gateway's side makes an ECDSA P-256 key and a CSR whose subject is exactly ``CN=<gateway
id>``; the key is written 0600 and never leaves the machine.  The relay's side checks a CSR
(well formed, self-signed by its key, the subject exactly the expected id and nothing else, a key
type we issue for) and signs a client certificate with the gateway CA's profile
(`gateway.pki`): the relay only ever sees public keys.  No Twisted here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import pki
from gateway.identity import InvalidGatewayId, validate_gateway_id

MAX_CSR_BYTES = 8 * 1024
MAX_SKEW = timedelta(minutes=5)
"""A new certificate starts this long (or a tenth of its life, if shorter) before it is issued,
for a gateway whose clock runs a little behind."""
_CURVES = (ec.SECP256R1, ec.SECP384R1)


class CSRRefused(ValueError):
    """A CSR the relay will not sign; the message says why in plant IT's terms."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an ECDSA private key")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, gateway_id: str) -> bytes:
    """A PEM CSR for ``gateway_id`` signed by ``key``."""
    validate_gateway_id(gateway_id)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def check_csr(pem: str | bytes, gateway_id: str) -> x509.CertificateSigningRequest:
    """The CSR if the relay may sign it for ``gateway_id``; else `CSRRefused`."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    if len(data) > MAX_CSR_BYTES:
        raise CSRRefused(f"the certificate request is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError:
        raise CSRRefused("the certificate request is not a PEM CSR") from None
    if not csr.is_signature_valid:
        raise CSRRefused("the certificate request's signature does not match its key")
    attributes = list(csr.subject)
    try:
        named = pki.gateway_id_from_subject(csr.subject)
    except InvalidGatewayId as e:
        raise CSRRefused(f"the certificate request's subject: {e}") from None
    if named is None or len(attributes) != 1 or attributes[0].oid != NameOID.COMMON_NAME:
        raise CSRRefused("the certificate request's subject must be exactly CN=<gateway id>")
    if named != gateway_id:
        raise CSRRefused(
            f"the certificate request names gateway {named!r}, but this token is for {gateway_id!r}"
        )
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _CURVES):
            raise CSRRefused(f"the request's key uses curve {key.curve.name}; use P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CSRRefused(f"the request's RSA key has {key.key_size} bits; at least 2048")
    else:
        raise CSRRefused("the request's key is neither ECDSA nor RSA")
    return csr


class Signer:
    """The gateway CA on the relay: its certificate and key, loaded once and checked."""

    def __init__(self, ca_cert: Path, ca_key: Path, *, days: float) -> None:
        self.ca_cert_path = ca_cert
        self.ca, self._key = pki._load_ca(ca_cert, ca_key, datetime.now(UTC))
        self.days = days

    def sign(
        self, csr: x509.CertificateSigningRequest, *, now: datetime | None = None
    ) -> x509.Certificate:
        """A client certificate for the CSR's subject and key (checked by `check_csr`)."""
        when = (now or datetime.now(UTC)).replace(microsecond=0)
        life = timedelta(days=self.days)
        skew = min(MAX_SKEW, life / 10)
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.ca.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(when - skew)
            .not_valid_after(min(when + life, self.ca.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                pki._key_usage(
                    digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPublicKey)
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(pki._authority_key_identifier(self.ca), critical=False)
        )
        return builder.sign(self._key, hashes.SHA256())


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def renewal_due(cert: x509.Certificate, share: float = 2 / 3) -> float:
    """The POSIX time at which ``share`` of the certificate's life has passed."""
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    return start + (end - start) * share
