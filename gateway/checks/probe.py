"""One look at the relay, the way the tunnel dials it, recording what each step showed.

TCP (directly, or through the plant's proxy with CONNECT), then TLS with the pinned CA and this
gateway's certificate, then (only when no daemon holds the tunnel) HTTP/2 as the gateway speaks
it, with one PING.  The TLS is driven here with pyOpenSSL memory BIOs rather than by Twisted's
TLS protocol, because a check must see what a tunnel never needs to: the chain the other side
presented when it does not lead to the pinned CA (to name the issuer of a TLS-inspecting box),
the relay's clock in its ServerHello, and the alert with which the relay refused our certificate.

The probe never errbacks: every failure is a fact in the `ProbeReport`, and the TCP, proxy,
TLS, clock and tunnel checks each read the part that is theirs.  Each step has its own timeout
and the whole probe a budget, so a blackholed relay costs seconds, not TCP's minutes.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import service_identity
from attrs import define, field
from cryptography import x509
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, PingAckReceived, RemoteSettingsChanged
from OpenSSL import SSL, crypto
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.checks.env import CheckEnv, TLSFacts
from gateway.config import Address
from gateway.net.proxy import HTTPConnectEndpoint
from gateway.tls import TLSFileError, load_identity

log = Logger()

PING = b"gw-check"

TIME_ERRORS = frozenset({9, 10})
"""X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED: the chain is the relay's, only
the dates disagree with our clock.  The probe goes on (the clock check needs the rest)."""

VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in the chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    26: "unsuitable certificate purpose",
}


@define
class ProbeReport:
    """What the probe saw, step by step (later fields stay empty when an earlier step failed)."""

    relay: Address
    proxy: Address | None
    fresh_tunnel: bool
    started: float = 0.0
    connect_error: Failure | None = None
    connected: bool = False
    """TCP to the relay is up (through the proxy: it answered CONNECT with 200)."""
    first_reply: bool = False
    tls_timeout: bool = False
    tls_error: str | None = None
    handshake_done: bool = False
    verify_errors: list[tuple[int, int]] = field(factory=list)
    """(depth, OpenSSL error number) for each problem the chain check found."""
    chain: dict[int, x509.Certificate] = field(factory=dict)
    name_error: str | None = None
    version: str | None = None
    alpn: bytes | None = None
    relay_time: int | None = None
    local_time: float | None = None
    presented_certificate: bool = False
    relay_refused: str | None = None
    """The relay's TLS alert after it saw our certificate ("certificate expired", ...)."""
    relay_silent: bool = False
    accepted: bool = False
    """The relay sent application data after the handshake: it took our certificate."""
    h2_ready: bool = False
    ping_rtt: float | None = None
    goaway: str | None = None
    h2_error: str | None = None

    @property
    def presented_chain(self) -> list[x509.Certificate]:
        return [self.chain[d] for d in sorted(self.chain)]

    @property
    def untrusted(self) -> bool:
        """The presented chain does not lead to the pinned CA (not just a date problem)."""
        return any(errno not in TIME_ERRORS for _, errno in self.verify_errors)

    @property
    def time_errors(self) -> list[tuple[int, int]]:
        return [(d, e) for d, e in self.verify_errors if e in TIME_ERRORS]

    def tls_facts(self) -> TLSFacts:
        return TLSFacts(
            self.version, self.alpn, tuple(self.presented_chain), self.relay_time, self.local_time
        )


def pinned_cas(path: Any) -> list[x509.Certificate]:
    return list(x509.load_pem_x509_certificates(path.read_bytes()))


def relay_time_of(server_random: bytes | None) -> int | None:
    if not server_random or len(server_random) < 4:
        return None
    return int(struct.unpack(">I", server_random[:4])[0])


def check_name(certificate: x509.Certificate, name: str) -> str | None:
    """None if ``certificate`` is for ``name`` (a host name or an IP address), else why not."""
    try:
        ipaddress.ip_address(name)
        is_ip = True
    except ValueError:
        is_ip = False
    try:
        if is_ip:
            verify_certificate_ip_address(certificate, name)
        else:
            verify_certificate_hostname(certificate, name)
    except service_identity.VerificationError:
        return f"the relay's certificate is for {certificate_names(certificate)}, not {name!r}"
    except service_identity.CertificateError as e:
        return f"the relay's certificate names no host: {e}"
    return None


def certificate_names(certificate: x509.Certificate) -> str:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return ", ".join(repr(n) for n in names) or repr(certificate.subject.rfc4514_string())


class _Probe(Protocol):
    """TLS over the transport by hand (memory BIOs), then optionally HTTP/2 with one PING."""

    def __init__(self, env: CheckEnv, report: ProbeReport, done: Deferred[ProbeReport]) -> None:
        self._env, self._report, self._done = env, report, done
        self._timer: IDelayedCall | None = None
        self._ssl: SSL.Connection | None = None
        self._h2: H2Connection | None = None
        self._ping_sent = 0.0
        self._finished = False

    # -- the steps -----------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._report.connected = True
        if self._done.called:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._ssl = SSL.Connection(self._context(), None)
        self._ssl.set_connect_state()
        name = self._env.config.relay.expected_name
        if not _is_ip(name):
            self._ssl.set_tlsext_host_name(name.encode("idna"))
        self._arm("tls")
        self._pump()

    def _context(self) -> SSL.Context:
        report, link = self._report, self._env.config.relay
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_alpn_protos([b"h2"])
        store = ctx.get_cert_store()
        assert store is not None
        for ca in pinned_cas(link.ca):
            store.add_cert(crypto.X509.from_cryptography(ca))
        try:
            identity = load_identity(link.cert, link.key)
        except TLSFileError:
            pass  # the certificate check says why; the relay will say it wants one
        else:
            ctx.use_certificate(identity.original.to_cryptography())
            ctx.use_privatekey(identity.privateKey.original.to_cryptography_key())
            report.presented_certificate = True

        def verify(
            conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
        ) -> bool:
            report.chain[depth] = cert.to_cryptography()
            if not ok:
                report.verify_errors.append((depth, errno))
                return errno in TIME_ERRORS
            return True

        ctx.set_verify(SSL.VERIFY_PEER, verify)
        return ctx

    def dataReceived(self, data: bytes) -> None:
        if self._finished or self._ssl is None:
            return
        if not self._report.first_reply:
            self._report.first_reply = True
            self._report.local_time = self._env.now()
        self._ssl.bio_write(data)
        self._pump()

    def _pump(self) -> None:
        ssl, report = self._ssl, self._report
        assert ssl is not None
        if not report.handshake_done:
            try:
                ssl.do_handshake()
            except SSL.WantReadError:
                self._flush()
                return
            except SSL.Error as e:
                self._read_hello()
                report.tls_error = _ssl_text(e)
                self._flush()
                self._finish()
                return
            report.handshake_done = True
            self._read_hello()
            self._flush()
            if not self._handshake_acceptable():
                self._finish()
                return
            self._arm("relay")
        while not self._finished:
            try:
                data = ssl.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                report.relay_refused = report.relay_refused or "the relay closed the connection"
                self._finish()
                return
            except SSL.Error as e:
                report.relay_refused = _ssl_text(e)
                self._finish()
                return
            self._application_data(data)
        self._flush()

    def _read_hello(self) -> None:
        ssl, report = self._ssl, self._report
        assert ssl is not None
        try:
            report.relay_time = relay_time_of(ssl.server_random())
        except Exception:
            report.relay_time = None
        report.version = ssl.get_protocol_version_name() if report.handshake_done else None
        if report.handshake_done:
            report.alpn = ssl.get_alpn_proto_negotiated() or None

    def _handshake_acceptable(self) -> bool:
        report = self._report
        leaf = report.chain.get(0)
        if leaf is not None:
            report.name_error = check_name(leaf, self._env.config.relay.expected_name)
        return report.name_error is None and report.alpn == b"h2" and not report.untrusted

    def _application_data(self, data: bytes) -> None:
        report = self._report
        report.accepted = True
        if not report.fresh_tunnel:
            self._finish()
            return
        if self._h2 is None:
            self._h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
            self._h2.initiate_connection()
            self._arm("http2")
        try:
            events = self._h2.receive_data(data)
        except Exception as e:
            report.h2_error = f"the relay's HTTP/2 could not be read ({type(e).__name__})"
            self._finish()
            return
        for event in events:
            if isinstance(event, RemoteSettingsChanged) and not report.h2_ready:
                report.h2_ready = True
                self._h2.ping(PING)
                self._ping_sent = self._env.now()
            elif isinstance(event, PingAckReceived) and event.ping_data == PING:
                report.ping_rtt = max(0.0, self._env.now() - self._ping_sent)
                self._h2.close_connection(ErrorCodes.NO_ERROR, additional_data=b"gateway check")
                self._send_h2()
                self._finish()
                return
            elif isinstance(event, ConnectionTerminated):
                why = (event.additional_data or b"").decode("utf-8", "replace")
                report.goaway = why or f"GOAWAY {event.error_code}"
                self._finish()
                return
        self._send_h2()

    # -- plumbing ------------------------------------------------------------------------------

    def _send_h2(self) -> None:
        if self._h2 is not None and self._ssl is not None:
            out = self._h2.data_to_send()
            if out:
                try:
                    self._ssl.sendall(out)
                except SSL.Error:
                    pass
        self._flush()

    def _flush(self) -> None:
        if self._ssl is None or self.transport is None:
            return
        while True:
            try:
                chunk = self._ssl.bio_read(65536)
            except SSL.WantReadError:
                return
            except SSL.Error:
                return
            self.transport.write(chunk)

    def _arm(self, step: str) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        left = self._report.started + self._env.probe_budget - self._env.now()
        wait = max(0.1, min(self._env.stage_timeout, left))
        self._timer = self._env.reactor.callLater(wait, self._expired, step, wait)

    def _expired(self, step: str, waited: float) -> None:
        self._timer = None
        report = self._report
        if step == "tls":
            report.tls_timeout = True
        elif step == "relay":
            report.relay_silent = True
        elif not report.h2_ready:
            report.h2_error = f"the relay sent no HTTP/2 settings within {waited:g} s"
        else:
            report.h2_error = f"the relay did not answer a heartbeat PING within {waited:g} s"
        self._finish(abort=True)

    def _finish(self, *, abort: bool = False) -> None:
        if self._finished:
            return
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._ssl is not None and not abort and self._report.handshake_done:
            try:
                self._ssl.shutdown()
            except SSL.Error:
                pass
            self._flush()
        if self.transport is not None:
            if abort:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            else:
                self.transport.loseConnection()
        if not self._done.called:
            self._done.callback(self._report)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        report = self._report
        if not self._finished:
            if not report.handshake_done and report.tls_error is None:
                report.tls_error = (
                    "the other side closed the connection during the TLS handshake"
                    if report.first_reply
                    else "the other side closed the connection without answering TLS"
                )
            elif report.handshake_done and not report.accepted and report.relay_refused is None:
                report.relay_refused = "the relay closed the connection"
            elif report.fresh_tunnel and report.ping_rtt is None and report.goaway is None:
                report.h2_error = report.h2_error or "the relay closed the tunnel"
        self._finish()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _ssl_text(error: SSL.Error) -> str:
    parts: list[str] = []
    for arg in error.args:
        for item in arg if isinstance(arg, list) else [arg]:
            if isinstance(item, tuple) and item:
                parts.append(str(item[-1]))
            else:
                parts.append(str(item))
    return "; ".join(p for p in parts if p) or type(error).__name__


def probe_relay(
    env: CheckEnv, hop_address: str | None = None, *, started: float | None = None
) -> Deferred[ProbeReport]:
    """Dial the relay as the tunnel would; fires with what was seen (never errbacks).

    ``hop_address``: the IP address the DNS check found for the first hop (proxy or relay), so
    that the dial does not resolve the name again (and cannot hang on it).  ``started``: when
    the run began; the probe's budget counts from there.
    """
    began = env.now() if started is None else started
    report = ProbeReport(env.relay, env.proxy, env.fresh_tunnel, started=began)
    done: Deferred[ProbeReport] = Deferred()
    factory = Factory.forProtocol(lambda: _Probe(env, report, done))
    factory.noisy = False
    connecting = _endpoint(env, hop_address).connect(factory)

    def failed(failure: Failure) -> None:
        if not done.called:
            report.connect_error = failure
            done.callback(report)

    connecting.addErrback(failed)
    return done


def _endpoint(env: CheckEnv, hop_address: str | None) -> IStreamClientEndpoint:
    link, proxy = env.config.relay, env.proxy
    if proxy is not None:
        return HTTPConnectEndpoint(
            env.reactor,
            Address(hop_address or proxy.host, proxy.port),
            link.address,
            timeout=env.stage_timeout,
            credentials=link.proxy_credentials,
        )
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        env.reactor, hop_address or link.address.host, link.address.port, timeout=env.stage_timeout
    )
    return endpoint
