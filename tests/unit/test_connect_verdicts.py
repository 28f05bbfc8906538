"""What a refusal or a failed dial means for ``gateway connect``: stop, try again, or carry on."""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.connect import Verdict, dial_is_fatal, refusal_verdict
from gateway.tunnel.errors import TunnelClosed
from gateway.wire import Refusal, StreamRefused


def refused(refusal: Refusal) -> StreamRefused:
    return StreamRefused(refusal.status, refusal.token, "why")


class VerificationError(Exception):
    """Named like service_identity's: a certificate for another host name."""


class RefusalVerdictTests(SynchronousTestCase):
    def test_each_refusal_has_its_verdict(self) -> None:
        expected = {
            Refusal.BAD_TOKEN: Verdict.FATAL,
            Refusal.TOKEN_EXPIRED: Verdict.FATAL,
            Refusal.NOT_AUTHORISED: Verdict.FATAL,
            Refusal.UNKNOWN_GATEWAY: Verdict.FATAL,
            Refusal.GATEWAY_OFFLINE: Verdict.RETRY,
            Refusal.SHUTTING_DOWN: Verdict.RETRY,
            Refusal.TARGET_UNREACHABLE: Verdict.RETRY,
            Refusal.TARGET_TIMEOUT: Verdict.RETRY,
            Refusal.SESSION_ENDED: Verdict.ENDED,
            Refusal.BAD_REQUEST: Verdict.UNSUPPORTED,
            Refusal.CODE_INVALID: Verdict.REFUSED,
            Refusal.TOO_MANY_ATTEMPTS: Verdict.REFUSED,
            Refusal.SESSION_REQUIRED: Verdict.REFUSED,
            Refusal.ACCESS_DISABLED: Verdict.REFUSED,
            Refusal.TARGET_NOT_ALLOWED: Verdict.REFUSED,
            Refusal.PERMISSION_DENIED: Verdict.REFUSED,
            Refusal.LIMIT_REACHED: Verdict.REFUSED,
            Refusal.AUDIT_UNAVAILABLE: Verdict.REFUSED,
        }
        self.assertEqual(set(expected), set(Refusal))
        for refusal, verdict in expected.items():
            with self.subTest(refusal=refusal):
                self.assertIs(refusal_verdict(refused(refusal)), verdict)

    def test_an_unknown_gateway_we_knew_is_a_relay_restart_waited_out(self) -> None:
        unknown = refused(Refusal.UNKNOWN_GATEWAY)
        self.assertIs(refusal_verdict(unknown, known_gateway=True), Verdict.RETRY)
        self.assertIs(
            refusal_verdict(refused(Refusal.BAD_TOKEN), known_gateway=True), Verdict.FATAL
        )

    def test_a_5xx_from_something_newer_is_retried(self) -> None:
        self.assertIs(refusal_verdict(StreamRefused(502, "bad-gateway", "")), Verdict.RETRY)
        self.assertIs(refusal_verdict(StreamRefused(418, "teapot", "")), Verdict.REFUSED)


class DialTests(SynchronousTestCase):
    def test_a_certificate_problem_is_fatal(self) -> None:
        wrong_ca = SSL.Error([("SSL routines", "", "certificate verify failed")])
        self.assertTrue(dial_is_fatal(Failure(wrong_ca)))
        self.assertTrue(dial_is_fatal(Failure(VerificationError("DNSMismatch"))))

    def test_an_outage_is_not(self) -> None:
        for error in (
            ConnectionRefusedError(),
            TimeoutError(),
            TunnelClosed("closed before ready"),
            SSL.Error([("SSL routines", "", "unexpected eof while reading")]),
        ):
            with self.subTest(error=error):
                self.assertFalse(dial_is_fatal(Failure(error)))
