"""The vendor's small PKI: one CA that signs relay (server) and gateway (client) certificates.

The relay trusts exactly this CA for gateway tunnels and takes a gateway's identity from the
subject common name of its client certificate, so everything that decides who a gateway *is*
lives here: the certificate profiles, the gateway id rules and the reverse mapping the relay uses
(`gateway_id_from_subject`).

This module is a library for ``gateway pki`` (see `gateway.pki_cli`) and for the test suite's
throw-away PKI: it reads and writes files but never parses argv or prints. Every user mistake
becomes a `PKIError` with a one-line message that names the file concerned; private key material
never appears in a message.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from attrs import frozen
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import identity
from gateway._files import FileWriteError, install

__all__ = [
    "CLOCK_SKEW",
    "GATEWAY_ID_PATTERN",
    "CertificateInfo",
    "PKIError",
    "create_ca",
    "describe_certificate",
    "gateway_id_from_subject",
    "issue_gateway_certificate",
    "issue_relay_certificate",
    "validate_gateway_id",
]

#: Certificates start this long before "now" so a peer whose clock runs a little behind
#: still accepts a certificate issued a moment ago.
CLOCK_SKEW = timedelta(minutes=5)

#: A gateway id: what the relay, the engineer client (``--gateway ID``) and the audit trail use to
#: name one edge PC. The rule lives in `gateway.identity` (a DNS label, so a browser portal can
#: route by host name); this pattern is kept for callers that only match.
GATEWAY_ID_PATTERN = identity._GATEWAY_ID

_RSA_BITS = 3072
_COMMON_NAME_MAX = 64  # RFC 5280 upper bound (ub-common-name)
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class PKIError(Exception):
    """A user-facing problem with PKI files or parameters, e.g. ``ca.key: not a PEM private key``.

    The message is one line meant to be shown as is; it never contains key material.
    """


@frozen
class CertificateInfo:
    """What a person (``gateway pki show``) or a check needs to know about one certificate."""

    path: Path
    subject: str
    common_name: str | None
    issuer: str
    names: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    serial: int
    sha256_fingerprint: str
    is_ca: bool
    key_type: str

    def is_valid_at(self, when: datetime) -> bool:
        """Whether ``when`` falls inside the validity period (both ends inclusive, as in X.509)."""
        return self.not_before <= when <= self.not_after

    def validity_text(self, now: datetime) -> str:
        """Plain-language validity at ``now``: "EXPIRED ...", "not yet valid ..." or "expires in N
        days", so plant IT sees the problem without doing date arithmetic."""
        if now > self.not_after:
            return f"EXPIRED {_span(now - self.not_after)} ago"
        if now < self.not_before:
            return f"not yet valid (starts in {_span(self.not_before - now)}; check the clock)"
        return f"expires in {_span(self.not_after - now)}"


def _span(delta: timedelta) -> str:
    """A rough, human-sized duration: whole days, or hours/minutes below one day."""
    if delta >= timedelta(days=1):
        # Nearest, not floor: a certificate issued for 90 days just now "expires in 90 days".
        days = round(delta / timedelta(days=1))
        return f"{days} day" if days == 1 else f"{days} days"
    hours = int(delta.total_seconds() // 3600)
    if hours >= 1:
        return f"{hours} hour" if hours == 1 else f"{hours} hours"
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"


# --------------------------------------------------------------------------------------------
# Public API


def create_ca(
    cert_path: Path,
    key_path: Path,
    *,
    name: str = "Remote service gateway vendor CA",
    days: int = 3650,
    key_type: str = "ec",
    now: datetime | None = None,
    force: bool = False,
) -> CertificateInfo:
    """Create the vendor CA: a self-signed certificate that may sign leaf certificates only.

    ``path_length=0`` keeps a stolen leaf key from minting further certificates the relay would
    accept. ``now`` exists so tests can make CAs in the past or future.
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    _refuse_clobber([cert_path, key_path], force=force)
    when = _now(now)
    not_after = _not_after(when, days)
    subject = _name_with_cn(name, what="CA name")
    key = _generate_key(key_type)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        _base_builder(subject, subject, key.public_key(), when, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(key_cert_sign=True, crl_sign=True),
            critical=True,
        )
        .add_extension(ski, critical=False)
    )
    cert = builder.sign(key, hashes.SHA256())
    _install([(key_path, _key_pem(key), 0o600), (cert_path, _cert_pem(cert), 0o644)])
    return _info(cert_path, cert)


def issue_relay_certificate(
    ca_cert: Path,
    ca_key: Path,
    cert_path: Path,
    key_path: Path,
    *,
    names: Sequence[str],
    days: int = 397,
    key_type: str = "ec",
    now: datetime | None = None,
    force: bool = False,
) -> CertificateInfo:
    """Issue the relay's TLS server certificate for ``names`` (host names and/or IP addresses).

    Gateways check the relay's host name against the subjectAltName (service_identity ignores
    the common name), so every name a gateway may dial must be listed. The first name also
    becomes the common name, which is what people read in ``gateway pki show`` and logs.
    """
    if isinstance(names, str):  # a lone string is a Sequence[str] of characters
        names = [names]
    general_names = _general_names(names)
    first = names[0].strip().strip("[]")
    if len(first) > _COMMON_NAME_MAX:
        raise PKIError(
            f"{first[:20]}...: longer than {_COMMON_NAME_MAX} characters, too long for the "
            "common name; list a shorter name first"
        )
    subject = _name_with_cn(str(_parse_name(first)), what="relay name")
    return _issue(
        ca_cert,
        ca_key,
        cert_path,
        key_path,
        subject=subject,
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
        san=general_names,
        days=days,
        key_type=key_type,
        now=now,
        force=force,
    )


def issue_gateway_certificate(
    ca_cert: Path,
    ca_key: Path,
    cert_path: Path,
    key_path: Path,
    *,
    gateway_id: str,
    days: int = 825,
    key_type: str = "ec",
    now: datetime | None = None,
    force: bool = False,
) -> CertificateInfo:
    """Issue a gateway's TLS client certificate; its subject common name *is* the gateway id.

    The relay authenticates the tunnel with this certificate and registers the gateway under
    `gateway_id_from_subject` of it, so the id is validated here with the same rule.
    """
    validate_gateway_id(gateway_id)
    return _issue(
        ca_cert,
        ca_key,
        cert_path,
        key_path,
        subject=_name_with_cn(gateway_id, what="gateway id"),
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        san=None,
        days=days,
        key_type=key_type,
        now=now,
        force=force,
    )


def describe_certificate(path: Path) -> list[CertificateInfo]:
    """Every certificate in a PEM file, in file order (a chain file holds several).

    Other PEM blocks (a private key stored alongside) are skipped, never read or echoed.
    """
    path = Path(path)
    data = _read(path)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        if b"PRIVATE KEY-----" in data:
            raise PKIError(f"{path}: holds a private key, not a certificate")
        raise PKIError(f"{path}: not a PEM certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise PKIError(f"{path}: damaged PEM certificate") from None
    return [_info(path, cert) for cert in certs]


def gateway_id_from_subject(subject: x509.Name) -> str | None:
    """The gateway id a certificate subject names, or None if it names none unambiguously.

    Exactly one common name, which must be a valid gateway id (`gateway.identity`): several
    common names are refused rather than picking one, so two readers can never disagree about
    who connected.
    """
    try:
        return identity.gateway_id_from_subject(subject)
    except identity.InvalidGatewayId:
        return None


def validate_gateway_id(gateway_id: str) -> None:
    """Raise `PKIError` unless ``gateway_id`` follows the gateway-id rule (a DNS label)."""
    try:
        identity.validate_gateway_id(gateway_id)
    except identity.InvalidGatewayId as e:
        raise PKIError(str(e)) from None


# --------------------------------------------------------------------------------------------
# Issuing


def _issue(
    ca_cert_path: Path,
    ca_key_path: Path,
    cert_path: Path,
    key_path: Path,
    *,
    subject: x509.Name,
    eku: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None,
    days: int,
    key_type: str,
    now: datetime | None,
    force: bool,
) -> CertificateInfo:
    """Sign a leaf certificate with a fresh key; shared by the relay and gateway profiles."""
    ca_cert_path, ca_key_path = Path(ca_cert_path), Path(ca_key_path)
    cert_path, key_path = Path(cert_path), Path(key_path)
    _refuse_ca_overwrite([cert_path, key_path], [ca_cert_path, ca_key_path])
    _refuse_clobber([cert_path, key_path], force=force)
    when = _now(now)
    not_after = _not_after(when, days)
    ca, ca_key = _load_ca(ca_cert_path, ca_key_path, when)
    key = _generate_key(key_type)
    builder = (
        _base_builder(subject, ca.subject, key.public_key(), when, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(
                digital_signature=True,
                # RSA key exchange (TLS 1.2 without ECDHE) encrypts to the key; EC keys can't.
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(ca), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _install([(key_path, _key_pem(key), 0o600), (cert_path, _cert_pem(cert), 0o644)])
    return _info(cert_path, cert)


def _load_ca(
    cert_path: Path, key_path: Path, now: datetime
) -> tuple[x509.Certificate, _PrivateKey]:
    """Load the issuing CA and prove it can issue: a CA certificate, unexpired, with its key."""
    data = _read(cert_path)
    try:
        ca = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise PKIError(f"{cert_path}: not a PEM certificate") from None
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise PKIError(f"{cert_path}: not a CA certificate")
    if now > ca.not_valid_after_utc:
        raise PKIError(
            f"{cert_path}: the CA certificate expired on {ca.not_valid_after_utc:%Y-%m-%d}; "
            "create a new CA"
        )
    key = _load_private_key(key_path)
    if _spki(key.public_key()) != _spki(ca.public_key()):
        raise PKIError(f"{key_path}: does not match the CA certificate {cert_path}")
    return ca, key


def _load_private_key(path: Path) -> _PrivateKey:
    """Load an unencrypted PEM private key; errors say what is wrong, never what is inside."""
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying "this one needs a password"
        raise PKIError(f"{path}: encrypted private keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PKIError(f"{path}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PKIError(f"{path}: unsupported key type (use an ECDSA or RSA key)")
    return key


def _authority_key_identifier(ca: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """AKI from the CA's own SKI when it has one, so chain building matches byte for byte."""
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(_issuer_key(ca))
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _issuer_key(ca: x509.Certificate) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    key = ca.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise PKIError("the CA certificate has an unsupported key type")
    return key


def _base_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    now: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        # 159 random bits: unpredictable (CA/B BR 7.1) and positive in 20 DER bytes.
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
    )


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _generate_key(key_type: str) -> _PrivateKey:
    """ECDSA P-256 by default (small, fast, every TLS 1.2 peer has it); RSA 3072 for old peers."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    raise PKIError(f"key type {key_type!r}: use 'ec' or 'rsa'")


def _name_with_cn(value: str, *, what: str) -> x509.Name:
    if not isinstance(value, str) or not value.strip():
        raise PKIError(f"{what} must not be empty")
    if len(value) > _COMMON_NAME_MAX:
        raise PKIError(f"{what} {value[:20]!r}...: longer than {_COMMON_NAME_MAX} characters")
    try:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, value)])
    except ValueError:
        raise PKIError(f"{what} {value!r}: not usable as a certificate name") from None


def _now(now: datetime | None) -> datetime:
    """UTC, whole seconds: X.509 times carry no fractions, and CertificateInfo must match."""
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC).replace(microsecond=0)


def _not_after(now: datetime, days: int) -> datetime:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise PKIError(f"days must be a whole number of at least 1, not {days!r}")
    try:
        return now + timedelta(days=days)
    except OverflowError:
        raise PKIError(f"days {days}: ends after the year 9999") from None


# --------------------------------------------------------------------------------------------
# Subject alternative names


def _general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """SAN entries for ``names``: IP literals as IPAddress, the rest as validated DNS names.

    Duplicates (compared case-insensitively, IPs in canonical form) are dropped so that
    ``--name Relay.example.com --name relay.example.com`` does not produce a confusing SAN.
    """
    if not names:
        raise PKIError("give at least one relay name (host name or IP address)")
    result: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in names:
        parsed = _parse_name(raw)
        key = str(parsed).lower()
        if key in seen:
            continue
        seen.add(key)
        if isinstance(parsed, str):
            result.append(x509.DNSName(parsed))
        else:
            result.append(x509.IPAddress(parsed))
    return result


def _parse_name(raw: str) -> str | ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A relay name as an IP address or a checked DNS name; `PKIError` names the bad one."""
    if not isinstance(raw, str):
        raise PKIError(f"{raw!r}: a relay name must be a string")
    name = raw.strip()
    if name.startswith("[") and name.endswith("]"):  # "[::1]" as people write it in URLs
        name = name[1:-1]
    if not name:
        raise PKIError("empty relay name")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if address is not None:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise PKIError(f"{raw}: scoped IPv6 addresses cannot go in a certificate")
        return address
    if ":" in name:
        raise PKIError(f"{raw}: not a valid IPv6 address")
    labels = name.split(".")
    if labels[-1].isdigit():  # no top-level domain is numeric, so this was meant as IPv4
        raise PKIError(f"{raw}: not a valid IPv4 address")
    _check_dns_name(raw, name, labels)
    return name


def _check_dns_name(raw: str, name: str, labels: list[str]) -> None:
    if not name.isascii():
        raise PKIError(f"{raw}: not a valid DNS name (write international names as xn--...)")
    if len(name) > 253:
        raise PKIError(f"{raw[:20]}...: not a valid DNS name (longer than 253 characters)")
    for index, label in enumerate(labels):
        if index == 0 and label == "*" and len(labels) > 2:
            continue  # a wildcard as the whole leftmost label, below a registrable domain
        if _DNS_LABEL.fullmatch(label) is None:
            raise PKIError(
                f"{raw}: not a valid DNS name (labels are 1-63 letters, digits or '-', "
                "not starting or ending with '-')"
            )


# --------------------------------------------------------------------------------------------
# Describing


def _info(path: Path, cert: x509.Certificate) -> CertificateInfo:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = cns[0].value if cns else None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return CertificateInfo(
        path=path,
        subject=cert.subject.rfc4514_string(),
        common_name=common_name if isinstance(common_name, str) else None,
        issuer=cert.issuer.rfc4514_string(),
        names=_san_strings(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
        sha256_fingerprint=":".join(
            fingerprint[i : i + 2].upper() for i in range(0, len(fingerprint), 2)
        ),
        is_ca=is_ca,
        key_type=_key_type(cert),
    )


def _san_strings(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names: list[str] = []
    for general_name in san:
        if isinstance(general_name, x509.DNSName):
            names.append(general_name.value)
        elif isinstance(general_name, x509.IPAddress):
            names.append(str(general_name.value))
    return tuple(names)


def _key_type(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {_CURVE_NAMES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


# --------------------------------------------------------------------------------------------
# Files


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PKIError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PKIError(f"{path}: is a directory, not a file") from None
    except OSError as e:
        raise PKIError(f"{path}: cannot read: {e.strerror or e}") from None


def _refuse_clobber(paths: Sequence[Path], *, force: bool) -> None:
    """Check before generating anything, so a refusal leaves no half-written pair behind."""
    if len({os.path.abspath(p) for p in paths}) != len(paths):
        raise PKIError(f"{paths[0]}: the certificate and the key need different files")
    for path in paths:
        if path.is_dir():
            raise PKIError(f"{path}: is a directory")
        if not force and os.path.lexists(path):
            raise PKIError(f"{path} exists; pass --force to replace it")


def _refuse_ca_overwrite(outputs: Sequence[Path], ca_files: Sequence[Path]) -> None:
    """Even with --force, issuing must never replace the CA it signs with (gateway id "ca")."""
    protected = {os.path.realpath(p) for p in ca_files}
    for path in outputs:
        if os.path.realpath(path) in protected:
            raise PKIError(f"{path}: refusing to overwrite the CA's own files")


def _install(files: Sequence[tuple[Path, bytes, int]]) -> None:
    """Write each file atomically with its final mode (0600 for keys); see `gateway._files`."""
    try:
        install(files)
    except FileWriteError as e:
        raise PKIError(str(e)) from None


def _key_pem(key: _PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _spki(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return b""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
