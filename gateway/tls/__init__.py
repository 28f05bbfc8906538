"""TLS for the tunnel: pinned trust, mutual authentication, ALPN ``h2``, and a faster record path.

Every hop that leaves the plant LAN is TLS 1.2 or newer.  The gateway trusts only the CA named
in its configuration (never the system store) and checks the relay's host name with
``service_identity``; the relay demands a client certificate from its gateway CA.

Twisted's ``TLSMemoryBIOProtocol`` moves data in 16 KiB records, one Python call per record in
each direction.  Measured on the tunnel prototype, reading the socket in 1 MiB chunks, handing all
records decrypted from one read to the protocol in a single call and writing through OpenSSL without
slicing copies cut the receive cost by a third (TUNNEL-NOTES.md).  ``FastTLSProtocol`` does that.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any

import service_identity  # noqa: F401  -- hard requirement: without it no host name is checked
from OpenSSL import SSL
from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet import interfaces
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
)
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

SOCKET_READ_SIZE = 1 << 20
"""Bytes asked of the kernel per read of a tunnel socket (Twisted's default is 64 KiB)."""

ALPN_H2 = b"h2"

TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
TLS12_CIPHERS = AcceptableCiphers.fromOpenSSLCipherString(
    "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1"
)
"""TLS 1.2: forward-secret AEAD suites only (no CBC: LUCKY13-class padding oracles)."""
"""AES-128-GCM first: 10-15 % faster end to end than ChaCha20 on CPUs with AES-NI."""


def tune_socket(transport: Any, *, keepalive: bool = False) -> None:
    """Data-path socket settings: ~1 MiB per kernel read (one reactor turn carries ~64 TLS
    records or a large processor chunk) and no Nagle delay on small interactive messages."""
    if not hasattr(transport, "setTcpNoDelay"):
        return  # not a TCP socket (a tunnel stream, a test transport)
    transport.bufferSize = SOCKET_READ_SIZE
    for option, wanted in (("setTcpNoDelay", True), ("setTcpKeepAlive", keepalive)):
        setter = getattr(transport, option, None)
        if setter is not None and wanted:
            setter(True)


UNSENT_LOW_WATER = 256 * 1024
RECORD_READ = 1 << 15
"""Plaintext asked of OpenSSL per call: it returns one record (at most 16 KiB) per call anyway,
and pyOpenSSL allocates the whole requested size every time."""
BIO_CHUNK = 256 * 1024


def _tune_openssl(connection: SSL.Connection) -> None:
    """Whole writes, and no buffers held by idle connections.

    pyOpenSSL turns on SSL_MODE_ENABLE_PARTIAL_WRITE, which makes each SSL_write stop after one
    16 KiB record: 64 Python round trips (and error checks) per MiB.  Writing into a memory BIO
    never blocks, so whole writes are safe here (the relay's profile: 66,710 calls per GiB down
    to ~1,200).  SSL_MODE_RELEASE_BUFFERS returns OpenSSL's ~34 KiB of record buffers while a
    connection is idle, which is what thousands of gateways on one relay are most of the time.
    """
    try:
        from OpenSSL._util import lib

        lib.SSL_clear_mode(connection._ssl, lib.SSL_MODE_ENABLE_PARTIAL_WRITE)
        lib.SSL_set_mode(connection._ssl, lib.SSL_MODE_RELEASE_BUFFERS)
    except (ImportError, AttributeError):  # a pyOpenSSL without these bindings: defaults
        pass


def _limit_unsent(transport: Any) -> None:
    """Keep at most ~256 KiB of unsent tunnel bytes in the kernel (TCP_NOTSENT_LOWAT).

    Loopback and LAN autotuning grow send buffers to megabytes; a PING or a WebSocket frame
    queued behind them waits for all of it, which on a slow plant uplink is seconds.  The rest
    waits in our own buffers, where the fair scheduler can still put small frames first.
    """
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    handle = getattr(transport, "getHandle", None)
    if option is None or handle is None:
        return
    with contextlib.suppress(OSError):
        handle().setsockopt(socket.IPPROTO_TCP, option, UNSENT_LOW_WATER)


class TLSFileError(Exception):
    """A certificate or key file that cannot be used; the message names the file."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TLSFileError(f"{path}: cannot read {what}: {e.strerror or e}") from None


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
            self._context = context
        return self._context


def server_options(
    cert_path: Path, key_path: Path, *, client_ca: Path | None
) -> CertificateOptions:
    """TLS options for a relay listener; with ``client_ca`` a client certificate is required."""
    identity = load_identity(cert_path, key_path)
    extra: dict[str, Any] = {}
    if client_ca is not None:
        extra["trustRoot"] = load_ca(client_ca)  # also makes the certificate mandatory
    return _ServerOptions(
        privateKey=identity.privateKey.original,
        certificate=identity.original,
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=TLS12_CIPHERS,
        acceptableProtocols=[ALPN_H2],
        **extra,
    )


def client_options(
    server_name: str,
    ca_path: Path,
    *,
    cert_path: Path | None = None,
    key_path: Path | None = None,
) -> interfaces.IOpenSSLClientConnectionCreator:
    """TLS options for dialling a relay: pinned CA, host name checked, optional client cert."""
    identity = None
    if cert_path is not None and key_path is not None:
        identity = load_identity(cert_path, key_path)
    return optionsForClientTLS(
        server_name,
        trustRoot=load_ca(ca_path),
        clientCertificate=identity,
        acceptableProtocols=[ALPN_H2],
        extraCertificateOptions={
            "raiseMinimumTo": TLSVersion.TLSv1_2,
            "acceptableCiphers": TLS12_CIPHERS,
        },
    )


class FastTLSProtocol(TLSMemoryBIOProtocol):
    """``TLSMemoryBIOProtocol`` with large reads, batched delivery and copy-free writes."""

    def makeConnection(self, transport: interfaces.ITransport) -> None:
        tune_socket(transport, keepalive=True)
        _limit_unsent(transport)
        super().makeConnection(transport)
        _tune_openssl(self._tlsConnection)

    def _flushSendBIO(self) -> None:
        # Everything one write produced, in as few reads as possible (a 1 MiB write makes
        # ~64 records); each read allocates its buffer, so the chunk is bounded.
        chunks: list[bytes] = []
        while True:
            try:
                chunks.append(self._tlsConnection.bio_read(BIO_CHUNK))
            except WantReadError:
                break
        if chunks:
            self.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))  # type: ignore[union-attr]

    def _flushReceiveBIO(self) -> None:
        # Same error handling as Twisted's, but every record decrypted from this read is handed
        # to the protocol in one dataReceived call, so HTTP/2 parses one large buffer.
        received: list[bytes] = []
        while not self._lostTLSConnection:
            try:
                received.append(self._tlsConnection.recv(RECORD_READ))
            except WantReadError:
                break
            except ZeroReturnError:
                self._deliver(received)
                received = []
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                self._deliver(received)
                received = []
                self._tlsShutdownFinished(Failure())
        self._deliver(received)
        self._flushSendBIO()

    def _deliver(self, received: list[bytes]) -> None:
        if received and not self._aborted:
            data = received[0] if len(received) == 1 else b"".join(received)
            ProtocolWrapper.dataReceived(self, data)

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        view = memoryview(data)
        sent_total = 0
        while sent_total < len(view):
            try:
                sent = self._tlsConnection.send(view[sent_total:])
            except WantReadError:
                self._bufferedWrite(bytes(view[sent_total:]))
                break
            except Error:
                self._tlsShutdownFinished(Failure())
                return
            sent_total += sent
        self._flushSendBIO()


class FastTLSFactory(TLSMemoryBIOFactory):
    protocol = FastTLSProtocol


@implementer(interfaces.IStreamClientEndpoint)
class TLSClientEndpoint:
    """Dial ``wrapped`` and run TLS over it with ``FastTLSProtocol``; yields the inner protocol."""

    def __init__(
        self,
        wrapped: interfaces.IStreamClientEndpoint,
        options: interfaces.IOpenSSLClientConnectionCreator,
        clock: interfaces.IReactorTime,
    ) -> None:
        self._wrapped, self._options, self._clock = wrapped, options, clock

    def __repr__(self) -> str:
        return f"<TLS to {getattr(self._options, '_hostnameASCII', '?')}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        factory = FastTLSFactory(self._options, True, protocolFactory, clock=self._clock)
        d: Deferred[Any] = self._wrapped.connect(factory)
        return d.addCallback(lambda proto: proto.wrappedProtocol)


@implementer(interfaces.IStreamServerEndpoint)
class TLSServerEndpoint:
    """Listen on ``wrapped`` and run TLS on each accepted connection with ``FastTLSProtocol``."""

    def __init__(
        self,
        wrapped: interfaces.IStreamServerEndpoint,
        options: CertificateOptions,
        clock: interfaces.IReactorTime,
    ) -> None:
        self._wrapped, self._options, self._clock = wrapped, options, clock

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[interfaces.IListeningPort]:
        factory = FastTLSFactory(self._options, False, protocolFactory, clock=self._clock)
        return self._wrapped.listen(factory)


def peer_common_name(transport: Any) -> str | None:
    """The subject common name of the peer's certificate, or None without one."""
    get = getattr(transport, "getPeerCertificate", None)
    cert = get() if get is not None else None
    if cert is None:
        return None
    from cryptography.x509.oid import NameOID

    names = cert.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")
