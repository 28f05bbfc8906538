"""The relay's side of enrollment and renewal, on the gateway listener (`gateway.enrollment`).

A connection to the gateway listener is a tunnel or one enrollment request, told apart once its
TLS handshake is done (`choose_protocol`, the tunnel's ``handoff``):

* ALPN ``http/1.1``: `EnrollmentProtocol`, one HTTP/1.1 request (h11) within
  `REQUEST_TIMEOUT` seconds, head and body bounded, answered and closed.  Without a client
  certificate only ``POST /v1/enroll`` (with a one-time token) is served; ``POST /v1/renew``
  needs the gateway's current certificate, verified by TLS against the gateway CA.
* anything else is a tunnel, and a tunnel needs a certificate: one without is closed before a
  byte of HTTP/2, logged and counted (``relay_auth_failures_total{kind="gateway_certificate"}``).

`EnrollmentDesk` decides: the token (`gateway.enrollment.tokens`), the revocation list, the CSR
(subject exactly the token's gateway id), then signs with the gateway CA.  Every outcome is
audited and counted; no private key ever reaches the relay (the gateway sends a CSR).
"""

from __future__ import annotations

from typing import Any

import h11
from prometheus_client import Counter
from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.audit import AuditWriteError, IAuditTrail
from gateway.config import EnrollmentSettings
from gateway.enrollment import keys
from gateway.enrollment.revocations import Revocations
from gateway.enrollment.tokens import TokenRefused, TokenStore
from gateway.enrollment.wire import (
    ALPN_HTTP11,
    ENROLL_PATH,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    RENEW_PATH,
    REQUEST_TIMEOUT,
    EnrollmentRefused,
    body,
    parse_body,
    text_field,
)
from gateway.identity import InvalidGatewayId, gateway_id_from_certificate
from gateway.logsafe import RateLimitedLog, peer_address
from gateway.relay.metrics import RelayMetrics

log = Logger()


class EnrollmentDesk:
    """Checks and signs enrollment and renewal requests (see the module docstring)."""

    def __init__(
        self,
        settings: EnrollmentSettings | None,
        *,
        tokens: TokenStore,
        revocations: Revocations,
        clock: IReactorTime,
        metrics: RelayMetrics,
        audit: IAuditTrail | None = None,
    ) -> None:
        self.signer = (
            keys.Signer(settings.ca_cert, settings.ca_key, days=settings.certificate_days)
            if settings is not None
            else None
        )
        self.tokens = tokens
        self.revocations = revocations
        self.clock = clock
        self.audit = audit
        self.requests = Counter(
            "relay_enrollment_requests_total",
            "Enrollment and renewal requests on the gateway listener, by kind and result",
            ["kind", "result"],
            registry=metrics.registry,
        )

    def enroll(self, request: dict[str, Any], peer: str) -> bytes:
        """The signed certificate (PEM) for a token and a CSR; else `EnrollmentRefused`."""
        signer = self._signer()
        try:
            token = text_field(request, "token", limit=200)
            csr_pem = text_field(request, "csr")
        except ValueError as e:
            raise self._refused("enroll", "bad-request", str(e), 400) from None
        try:
            gateway_id = self.tokens.use(token)
        except TokenRefused as e:
            self.requests.labels(kind="enroll", result="bad-token").inc()
            self._audit("enrollment.token_failed", e.gateway_id, "refused", peer, why=str(e))
            raise EnrollmentRefused("bad-token", str(e), 403) from None
        self._audit("enrollment.token_used", gateway_id, "ok", peer)
        why = self.revocations.why_revoked(gateway_id, None)
        if why is not None:
            self._audit("gateway.enrolled", gateway_id, "refused", peer, why=why)
            raise self._refused("enroll", "revoked", why, 403)
        return self._issue(
            signer, "enroll", "gateway.enrolled", "gateway.enrolled", gateway_id, csr_pem, peer
        )

    def renew(self, request: dict[str, Any], peer_cert: Any, peer: str) -> bytes:
        """A new certificate for the gateway that presented ``peer_cert``; else refused."""
        signer = self._signer()
        if peer_cert is None:
            raise self._refused(
                "renew",
                "certificate-required",
                "renewal needs the gateway's current certificate; enroll with a token instead",
                403,
            )
        current = peer_cert.to_cryptography()
        try:
            gateway_id = gateway_id_from_certificate(current)
        except InvalidGatewayId as e:
            raise self._refused("renew", "bad-certificate", str(e), 403) from None
        try:
            csr_pem = text_field(request, "csr")
        except ValueError as e:
            raise self._refused("renew", "bad-request", str(e), 400) from None
        self.revocations.refresh()
        why = self.revocations.why_revoked(gateway_id, current.serial_number)
        if why is not None:
            self._audit("gateway.renewal_refused", gateway_id, "refused", peer, why=why)
            raise self._refused("renew", "revoked", why, 403)
        return self._issue(
            signer,
            "renew",
            "gateway.renewed",
            "gateway.renewal_refused",
            gateway_id,
            csr_pem,
            peer,
            previous=f"{current.serial_number:x}",
        )

    def _issue(
        self,
        signer: keys.Signer,
        kind: str,
        event: str,
        refused_event: str,
        gateway_id: str,
        csr_pem: str,
        peer: str,
        **details: Any,
    ) -> bytes:
        """Check the CSR names ``gateway_id``, sign it, count, audit and log it: the certificate.
        ``kind`` is ``enroll`` or ``renew``; ``event`` the audit record of the new certificate,
        ``refused_event`` that of a refused CSR."""
        try:
            csr = keys.check_csr(csr_pem, gateway_id)
        except keys.CSRRefused as e:
            self._audit(refused_event, gateway_id, "refused", peer, why=str(e))
            raise self._refused(kind, "bad-csr", str(e), 400) from None
        cert = signer.sign(csr)
        self.requests.labels(kind=kind, result="ok").inc()
        self._audit(
            event,
            gateway_id,
            "ok",
            peer,
            serial=f"{cert.serial_number:x}",
            **details,
            not_after=cert.not_valid_after_utc.isoformat(),
        )
        log.info(
            "gateway {gw} {did} from {peer}: certificate {serial:x} until {until}",
            gw=gateway_id,
            did="enrolled" if kind == "enroll" else "renewed its certificate",
            peer=peer,
            serial=cert.serial_number,
            until=cert.not_valid_after_utc.isoformat(),
        )
        return keys.certificate_pem(cert)

    def _signer(self) -> keys.Signer:
        if self.signer is None:
            raise EnrollmentRefused(
                "not-enabled",
                "this relay does not enroll gateways (no [enrollment] in its relay.toml)",
                404,
            )
        return self.signer

    def _refused(self, kind: str, error: str, reason: str, status: int) -> EnrollmentRefused:
        self.requests.labels(kind=kind, result=error).inc()
        return EnrollmentRefused(error, reason, status)

    def _audit(self, event: str, who: str | None, result: str, peer: str, **details: Any) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record(event, who=who, result=result, peer=peer, **details)
        except AuditWriteError as e:
            log.warn("audit trail: {why}", why=str(e))


class EnrollmentProtocol(Protocol):
    """One HTTP/1.1 request on a TLS connection to the gateway listener, then close."""

    transport: Any  # the TLS transport (its peer certificate, abortConnection)

    def __init__(self, desk: EnrollmentDesk, clock: IReactorTime, lines: RateLimitedLog) -> None:
        self.desk = desk
        self.clock = clock
        self.lines = lines
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._path = b""
        self._body: list[bytes] = []
        self._size = 0
        self._answered = False
        self._deadline: IDelayedCall | None = None
        self.peer = "an unknown address"

    def connectionMade(self) -> None:
        self.peer = peer_address(self.transport.getPeer())
        self._deadline = self.clock.callLater(REQUEST_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        self.lines.info(
            log,
            "enrollment connection from {peer}: no whole request within {t:g} s; closing",
            peer=self.peer,
            t=REQUEST_TIMEOUT,
        )
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return
        try:
            self.h11.receive_data(data)
            while not self._answered:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    return
                self._event(event)
        except h11.RemoteProtocolError:
            self._answer(400, "bad-request", "not a well-formed HTTP/1.1 request")

    def _event(self, event: Any) -> None:
        if isinstance(event, h11.Request):
            self._path = event.target
            if event.method != b"POST" or event.target not in (ENROLL_PATH, RENEW_PATH):
                self._answer(
                    404, "not-found", "this listener serves only POST /v1/enroll and /v1/renew"
                )
                return
            length = dict(event.headers).get(b"content-length")
            if length is None or not length.isdigit() or int(length) > MAX_BODY_BYTES:
                self._answer(413, "too-large", f"a request body is at most {MAX_BODY_BYTES} bytes")
        elif isinstance(event, h11.Data):
            self._size += len(event.data)
            if self._size > MAX_BODY_BYTES:
                self._answer(413, "too-large", f"a request body is at most {MAX_BODY_BYTES} bytes")
                return
            self._body.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            self._handle()
        elif isinstance(event, h11.ConnectionClosed):
            self.transport.loseConnection()

    def _handle(self) -> None:
        try:
            request = parse_body(b"".join(self._body))
        except ValueError:
            self._answer(400, "bad-request", "the body is not a JSON object")
            return
        try:
            if self._path == ENROLL_PATH:
                pem = self.desk.enroll(request, self.peer)
            else:
                pem = self.desk.renew(request, self.transport.getPeerCertificate(), self.peer)
        except EnrollmentRefused as e:
            self.lines.warn(
                log,
                "{what} from {peer} refused: {why}",
                what="enrollment" if self._path == ENROLL_PATH else "renewal",
                peer=self.peer,
                why=e.reason,
            )
            self._answer(e.status or 403, e.error, e.reason)
            return
        except Exception:
            log.failure("enrollment request from {peer}", peer=self.peer)
            self._answer(500, "failed", "the relay failed to sign; try again later")
            return
        self._send(200, {"certificate": pem.decode("ascii")})

    def _answer(self, status: int, error: str, reason: str) -> None:
        self._send(status, {"error": error, "reason": reason})

    def _send(self, status: int, data: dict[str, Any]) -> None:
        if self._answered:
            return
        self._answered = True
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        payload = body(data)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),
            (b"cache-control", b"no-store"),
        ]
        try:
            out = self.h11.send(h11.Response(status_code=status, headers=headers))
            out = (out or b"") + (self.h11.send(h11.Data(data=payload)) or b"")
            out += self.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:  # the request was unreadable: answer raw
            out = (
                f"HTTP/1.1 {status} refused\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
            ).encode() + payload
        self.transport.write(out)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None


class NoCertificate(Protocol):
    """A tunnel without a certificate: closed before HTTP/2, logged and counted."""

    transport: Any

    def __init__(self, metrics: RelayMetrics, lines: RateLimitedLog) -> None:
        self.metrics, self.lines = metrics, lines

    def connectionMade(self) -> None:
        self.metrics.auth_failures.labels(kind="gateway_certificate").inc()
        self.lines.warn(
            log,
            "gateway connection from {peer} refused: it presented no certificate (without one "
            "only enrollment is served); closing",
            peer=peer_address(self.transport.getPeer()),
        )
        self.transport.loseConnection()


def choose_protocol(
    desk: EnrollmentDesk, clock: IReactorTime, metrics: RelayMetrics, lines: RateLimitedLog
) -> Any:
    """The gateway listener's ``handoff``: enrollment, a refusal, or None (the tunnel)."""

    def choose(transport: Any) -> IProtocol | None:
        if getattr(transport, "negotiatedProtocol", None) == ALPN_HTTP11:
            return EnrollmentProtocol(desk, clock, lines)
        if transport.getPeerCertificate() is None:
            return NoCertificate(metrics, lines)
        return None

    return choose
