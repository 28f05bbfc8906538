"""What the tunnel's TLS accepts: TLS 1.2 or newer, AEAD suites, ALPN ``h2``, a pinned CA.

Every hop that leaves the plant LAN is TLS 1.2 or newer.  The gateway trusts only the CA named
in its configuration (never the system store) and checks the relay's host name with
``service_identity``; the relay demands a client certificate from its gateway CA.  Certificate
and key files are loaded here, and a file that cannot be used is one ``TLSFileError`` line: a
private key readable or writable by others is refused too, with the ``chmod`` to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import service_identity  # noqa: F401  -- hard requirement: without it no host name is checked
from OpenSSL import SSL
from twisted.internet import interfaces
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
)

from gateway._files import private_file_problem
from gateway.config import MAX_CONFIG_BYTES, MISSING, FileProblem, read_regular_file

ALPN_H2 = b"h2"

TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
"""AES-128-GCM first: 10-15 % faster end to end than ChaCha20 on CPUs with AES-NI."""

SSL_MODE_SEND_SERVERHELLO_TIME = 0x40
"""OpenSSL's mode that puts the server's clock in the first 4 bytes of its ServerHello random
(TLS 1.2's ``gmt_unix_time``; OpenSSL fills it in for TLS 1.3 too).  A gateway reads the relay's
time there in every handshake, even one whose certificate check fails: that is how `gateway
check` measures a wrong clock (gateway.checks.clock).  The relay's time is no secret (any HTTP
server's Date says as much), and 28 random bytes remain."""

TLS12_CIPHERS = AcceptableCiphers.fromOpenSSLCipherString(
    "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1"
)
"""TLS 1.2: forward-secret AEAD suites only (no CBC: LUCKY13-class padding oracles)."""


class TLSFileError(Exception):
    """A certificate or key file that cannot be used; the message names the file."""


def _read(path: Path, what: str) -> bytes:
    """A certificate or key file's bytes; a FIFO, a device, a directory or an empty file is
    refused in words (a FIFO is never opened for reading: that would hang start-up)."""
    try:
        return read_regular_file(path, max_bytes=MAX_CONFIG_BYTES)
    except FileProblem as e:
        problem = "No such file or directory" if str(e) == MISSING else f"the file {e}"
        raise TLSFileError(f"{path}: cannot read {what}: {problem}") from None


def _check_private_key(path: Path) -> None:
    """A private key others can read is no longer private; one others can write can be swapped
    for theirs.  Refused with the ``chmod`` that fixes it (the same check as the relay's files)."""
    problem = private_file_problem(path, "private key")
    if problem is not None:
        raise TLSFileError(problem)


def load_ca(path: Path) -> Certificate:
    """Load the pinned CA certificate (the first one in the file)."""
    data = _read(path, "CA certificate")
    try:
        return Certificate.loadPEM(data)
    except Exception:
        raise TLSFileError(f"{path}: not a PEM certificate") from None


def load_identity(cert_path: Path, key_path: Path) -> PrivateCertificate:
    """Load a certificate and its private key; the key's bytes never reach a message or log."""
    cert_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "private key")
    try:
        cert = Certificate.loadPEM(cert_pem)
    except Exception:
        raise TLSFileError(f"{cert_path}: not a PEM certificate") from None
    try:
        key = KeyPair.load(key_pem, 1)  # 1 == FILETYPE_PEM
    except Exception:
        raise TLSFileError(f"{key_path}: not a PEM private key") from None
    _check_private_key(key_path)  # once it is a key: a certificate given as one is named so
    try:
        identity: PrivateCertificate = PrivateCertificate.fromCertificateAndKeyPair(cert, key)
        return identity
    except Exception:
        raise TLSFileError(f"{key_path}: does not match the certificate {cert_path}") from None


class _ServerOptions(CertificateOptions):
    """``CertificateOptions`` that prefer AES-128-GCM among the TLS 1.3 suites."""

    def getContext(self) -> SSL.Context:
        if self._context is None:
            context = self._makeContext()
            context.set_tls13_ciphersuites(TLS13_SUITES)
            context.set_mode(SSL_MODE_SEND_SERVERHELLO_TIME)
            self._context = context
        return self._context


def server_options(
    cert_path: Path,
    key_path: Path,
    *,
    client_ca: Path | None,
    enrollment: bool = False,
) -> CertificateOptions:
    """TLS options for a relay listener; with ``client_ca`` a client certificate is required.

    ``enrollment`` (the gateway listener of a relay that enrolls gateways): a client certificate
    is asked for and, if sent, must verify against ``client_ca``, but one without may finish the
    handshake, and ALPN ``http/1.1`` is offered beside ``h2``.  The relay then serves such a
    connection one enrollment request and nothing else (`gateway.relay.enrollment`).
    """
    identity = load_identity(cert_path, key_path)
    extra: dict[str, Any] = {}
    protocols = [ALPN_H2]
    if client_ca is not None:
        extra["trustRoot"] = load_ca(client_ca)  # also makes the certificate mandatory
        if enrollment:
            protocols.append(b"http/1.1")
    # cryptography objects: pyOpenSSL deprecated its own PKey/X509 (Twisted's hints still name them)
    options = _ServerOptions(
        privateKey=identity.privateKey.original.to_cryptography_key(),
        certificate=identity.original.to_cryptography(),
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=TLS12_CIPHERS,
        acceptableProtocols=protocols,
        **extra,
    )
    if client_ca is not None and enrollment:
        # Asked for and verified if sent (VERIFY_PEER), no longer demanded: Twisted takes
        # trustRoot and requireCertificate only one at a time, so the flag is set after.
        options.requireCertificate = False
    return options


def client_options(
    server_name: str,
    ca_path: Path,
    *,
    cert_path: Path | None = None,
    key_path: Path | None = None,
    protocols: list[bytes] | None = None,
) -> interfaces.IOpenSSLClientConnectionCreator:
    """TLS options for dialling a relay: pinned CA, host name checked, optional client cert;
    ALPN ``h2`` (the tunnel) unless ``protocols`` says otherwise (enrollment: ``http/1.1``)."""
    identity = None
    if cert_path is not None and key_path is not None:
        identity = load_identity(cert_path, key_path)
    return optionsForClientTLS(
        server_name,
        trustRoot=load_ca(ca_path),
        clientCertificate=identity,
        acceptableProtocols=protocols or [ALPN_H2],
        extraCertificateOptions={
            "raiseMinimumTo": TLSVersion.TLSv1_2,
            "acceptableCiphers": TLS12_CIPHERS,
        },
    )
