"""The gateway renews its own certificate, at two thirds of its life, without dropping the tunnel.

When two thirds of the certificate's validity have passed, a new key is made here (the old one is
kept until the new certificate is in hand), and a CSR goes to the relay's gateway listener on a
short connection of its own, authenticated by the current certificate: the same address and
proxy as the tunnel (`gateway.enrollment.client`).  The relay signs unless the gateway or that
certificate was revoked.  The new certificate and key replace the files together, atomically,
and the tunnel dials with them from its next connection on; the live tunnel is not touched.

A failed attempt is logged, counted (``gateway_certificate_renewal_failures_total``) and retried
with full-jitter backoff (at least `RETRY_FLOOR` seconds, at most `RETRY_CAP`); an alert on that
counter, or on ``gateway_certificate_expiry_timestamp_seconds - time() < 7 * 86400``, tells the
vendor before the certificate runs out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from random import Random
from typing import Any

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from gateway._files import PRIVATE, PUBLIC, install
from gateway.config import RelayLink
from gateway.enrollment import keys
from gateway.enrollment.wire import RENEW_PATH, EnrollmentRefused
from gateway.identity import gateway_id_from_certificate
from gateway.net.backoff import full_jitter

log = Logger()

RETRY_FLOOR = 10.0
RETRY_BASE = 30.0
RETRY_CAP = 3600.0
SHARE = 2 / 3

Request = Callable[[dict[str, Any]], Awaitable[bytes]]
"""Sends a renewal request body to the relay, returns the certificate PEM (tests fake it)."""


class CertificateRenewal(Service):
    """Renews ``link.cert``/``link.key`` in place; ``renewed()`` is told after each renewal."""

    name = "certificate-renewal"

    def __init__(
        self,
        link: RelayLink,
        reactor: Any,
        registry: CollectorRegistry,
        *,
        renewed: Callable[[bytes], None],
        request: Request | None = None,
        rng: Random | None = None,
    ) -> None:
        self.link = link
        self.reactor = reactor
        self.renewed = renewed
        self._request = request or self._send
        self._retry = full_jitter(rng or Random(), base=RETRY_BASE, cap=RETRY_CAP)
        self.failures_in_a_row = 0
        self._call: IDelayedCall | None = None
        self._running: Deferred[None] | None = None
        self.failures = Counter(
            "gateway_certificate_renewal_failures_total",
            "Attempts to renew the gateway's certificate that failed (alert on any increase)",
            registry=registry,
        )
        self.renewals = Counter(
            "gateway_certificate_renewals_total",
            "Certificates renewed through the relay",
            registry=registry,
        )
        self.next_attempt = Gauge(
            "gateway_certificate_renewal_next_timestamp_seconds",
            "When the next renewal attempt is due (POSIX time)",
            registry=registry,
        )

    def startService(self) -> None:
        super().startService()
        self._schedule_from_certificate()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return succeed(None)

    def _certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.link.cert.read_bytes())

    def _schedule_from_certificate(self) -> None:
        certificate = self._certificate()
        due = keys.renewal_due(certificate, SHARE)
        log.info(
            "certificate {serial:x} valid until {until}; renewal through the relay from {due}",
            serial=certificate.serial_number,
            until=certificate.not_valid_after_utc.isoformat(),
            due=_iso(due),
        )
        self._at(due)

    def _at(self, when: float) -> None:
        if not self.running:
            return
        delay = max(0.0, when - self.reactor.seconds())
        self.next_attempt.set(self.reactor.seconds() + delay)
        self._call = self.reactor.callLater(delay, self.attempt)

    def attempt(self) -> Deferred[None]:
        """One renewal attempt now (the timer's, or a test's)."""
        self._call = None
        self._running = Deferred.fromCoroutine(self._attempt())
        return self._running

    async def _attempt(self) -> None:
        try:
            current = self._certificate()
            gateway_id = gateway_id_from_certificate(current)
            private = keys.new_key()
            csr = keys.make_csr(private, gateway_id)
            pem = await self._request({"csr": csr.decode("ascii")})
            cert = x509.load_pem_x509_certificate(pem)
            if cert.public_key() != private.public_key():
                raise EnrollmentRefused("bad-answer", "the relay's certificate is for another key")
            install(
                [(self.link.key, keys.key_pem(private), PRIVATE), (self.link.cert, pem, PUBLIC)]
            )
        except Exception as e:
            self._failed(e)
            return
        self.failures_in_a_row = 0
        self.renewals.inc()
        log.info(
            "certificate renewed: serial {serial:x}, valid until {until}; the tunnel uses it "
            "from its next connection",
            serial=cert.serial_number,
            until=cert.not_valid_after_utc.isoformat(),
        )
        try:
            self.renewed(pem)
        except Exception:
            log.failure("after renewing the certificate")
        self._at(keys.renewal_due(cert, SHARE))

    def _failed(self, error: Exception) -> None:
        self.failures.inc()
        self.failures_in_a_row += 1
        why = error.reason if isinstance(error, EnrollmentRefused) else str(error) or repr(error)
        delay = max(RETRY_FLOOR, self._retry(self.failures_in_a_row))
        expires = None
        try:
            expires = self._certificate().not_valid_after_utc.isoformat()
        except Exception:  # an unreadable file: said by the line below
            pass
        log.warn(
            "certificate renewal failed ({n} in a row): {why}; retrying in {delay:.0f} s "
            "(the certificate expires {expires})",
            n=self.failures_in_a_row,
            why=why,
            delay=delay,
            expires=expires or "at an unknown time",
        )
        self._at(self.reactor.seconds() + delay)

    async def _send(self, body: dict[str, Any]) -> bytes:
        from gateway.enrollment.client import request_certificate

        return await request_certificate(
            self.reactor, self.link, RENEW_PATH, body, cert=self.link.cert, key=self.link.key
        )


def _iso(when: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")
