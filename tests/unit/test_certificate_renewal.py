"""The gateway renews its certificate at two thirds of its life, and retries with backoff.

A `Clock` drives the timer and a fake request stands for the relay; the certificates are real
(the relay's signer, `gateway.enrollment.keys`).
"""

from __future__ import annotations

import shutil
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from random import Random
from typing import Any

from cryptography import x509
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway._files import install
from gateway.config import Address, RelayLink
from gateway.edge.renewal import RETRY_FLOOR, CertificateRenewal
from gateway.enrollment import keys
from gateway.enrollment.wire import EnrollmentRefused
from gateway.promtext import metric_value
from tests.helpers.pki import make_pki

DAY = 86400.0


class Setup:
    def __init__(self, test: SynchronousTestCase, *, days: float = 90) -> None:
        work = Path(tempfile.mkdtemp())
        test.addCleanup(shutil.rmtree, work)
        self.pki = make_pki(work / "pki", gateway_id="plant7")
        self.signer = keys.Signer(self.pki.ca_cert, self.pki.ca_key, days=days)
        self.cert, self.key = work / "gateway.pem", work / "gateway.key"
        self.issued_at = 1_800_000_000.0
        first = keys.new_key()
        pem = self._sign(keys.make_csr(first, "plant7"), self.issued_at)
        install([(self.key, keys.key_pem(first), 0o600), (self.cert, pem, 0o644)])
        self.clock = Clock()
        self.clock.advance(self.issued_at)
        self.registry = CollectorRegistry()
        self.renewed: list[bytes] = []
        self.asked: list[dict[str, Any]] = []
        self.refuse: list[Exception] = []
        link = RelayLink(Address("relay", 443), self.pki.ca_cert, self.cert, self.key)
        self.renewal = CertificateRenewal(
            link,
            self.clock,
            self.registry,
            renewed=self.renewed.append,
            request=self.request,
            rng=Random(1),
        )

    def _sign(self, csr: bytes, when: float) -> bytes:
        checked = keys.check_csr(csr, "plant7")
        return keys.certificate_pem(
            self.signer.sign(checked, now=datetime.fromtimestamp(when, UTC))
        )

    async def request(self, body: dict[str, Any]) -> bytes:
        self.asked.append(body)
        if self.refuse:
            raise self.refuse.pop(0)
        return self._sign(body["csr"].encode(), self.clock.seconds())

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert.read_bytes())

    def metric(self, name: str) -> float | None:
        from prometheus_client import generate_latest

        return metric_value(generate_latest(self.registry).decode(), name)


class RenewalTests(SynchronousTestCase):
    def test_nothing_happens_before_two_thirds_of_the_life(self) -> None:
        s = Setup(self)
        s.renewal.startService()
        self.addCleanup(s.renewal.stopService)
        s.clock.advance(60 * DAY - 400)  # 2/3 of 90 days + 5 min skew, less a bit
        self.assertEqual(s.asked, [])

    def test_at_two_thirds_a_new_key_and_certificate_replace_the_old(self) -> None:
        s = Setup(self)
        first = s.certificate()
        old_key = s.key.read_bytes()
        s.renewal.startService()
        self.addCleanup(s.renewal.stopService)
        s.clock.advance(60 * DAY)
        self.assertEqual(len(s.asked), 1)
        renewed = s.certificate()
        self.assertNotEqual(renewed.serial_number, first.serial_number)
        self.assertNotEqual(s.key.read_bytes(), old_key)
        self.assertEqual(stat.S_IMODE(s.key.stat().st_mode), 0o600)
        key = keys.load_key(s.key.read_bytes())
        self.assertEqual(renewed.public_key(), key.public_key())
        self.assertEqual(s.renewed, [s.cert.read_bytes()])
        self.assertEqual(s.metric("gateway_certificate_renewals_total"), 1.0)
        # And the next one falls due at two thirds of the new certificate's life.
        self.assertEqual(
            s.metric("gateway_certificate_renewal_next_timestamp_seconds"),
            keys.renewal_due(renewed),
        )

    def test_a_refusal_is_counted_and_retried_with_backoff(self) -> None:
        s = Setup(self)
        s.refuse = [
            EnrollmentRefused("unreachable", "cannot reach relay"),
            EnrollmentRefused("unreachable", "cannot reach relay"),
        ]
        s.renewal.startService()
        self.addCleanup(s.renewal.stopService)
        s.clock.advance(60 * DAY)
        self.assertEqual(len(s.asked), 1)
        self.assertEqual(s.metric("gateway_certificate_renewal_failures_total"), 1.0)
        self.assertEqual(s.renewed, [])
        s.clock.advance(RETRY_FLOOR - 0.1)
        self.assertEqual(len(s.asked), 1)  # never sooner than the floor
        for _ in range(200):
            s.clock.advance(60)
            if len(s.asked) == 3:
                break
        self.assertEqual(len(s.asked), 3)
        self.assertEqual(s.metric("gateway_certificate_renewal_failures_total"), 2.0)
        self.assertEqual(len(s.renewed), 1)
        self.assertEqual(s.renewal.failures_in_a_row, 0)

    def test_a_certificate_for_another_key_is_not_installed(self) -> None:
        s = Setup(self)
        first = s.cert.read_bytes()

        async def wrong(body: dict[str, Any]) -> bytes:
            return s._sign(keys.make_csr(keys.new_key(), "plant7"), s.clock.seconds())

        s.renewal._request = wrong
        s.renewal.startService()
        self.addCleanup(s.renewal.stopService)
        s.clock.advance(60 * DAY)
        self.assertEqual(s.cert.read_bytes(), first)
        self.assertEqual(s.metric("gateway_certificate_renewal_failures_total"), 1.0)

    def test_stopping_leaves_no_timer(self) -> None:
        s = Setup(self)
        s.renewal.startService()
        s.renewal.stopService()
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_an_overdue_certificate_is_renewed_at_start(self) -> None:
        s = Setup(self)
        s.clock.advance(70 * DAY)
        s.renewal.startService()
        self.addCleanup(s.renewal.stopService)
        s.clock.advance(0)
        self.assertEqual(len(s.asked), 1)
