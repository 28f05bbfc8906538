"""``gateway enroll``'s one request reads the relay's answer or refusal.  (That the tunnel dials
with a renewed certificate from its next connection on: test_reload's use_identity tests.)"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.enrollment.client import _OneRequest
from gateway.enrollment.wire import ENROLL_PATH, EnrollmentRefused


def exchange(answer: bytes) -> tuple[_OneRequest, StringTransport, list[Any]]:
    clock = Clock()
    protocol = _OneRequest("relay", ENROLL_PATH, b'{"token":"t"}', clock)
    transport = StringTransport()
    protocol.makeConnection(transport)
    results: list[Any] = []
    protocol.answer.addBoth(results.append)
    if answer:
        protocol.dataReceived(answer)
    return protocol, transport, results


def response(status: int, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return b"HTTP/1.1 %d x\r\ncontent-length: %d\r\n\r\n%s" % (status, len(data), data)


class OneRequestTests(SynchronousTestCase):
    def test_the_request_is_one_post_with_a_length(self) -> None:
        _, transport, _ = exchange(b"")
        sent = transport.value()
        self.assertTrue(sent.startswith(b"POST /v1/enroll HTTP/1.1\r\n"))
        self.assertIn(b"content-length: 13\r\n", sent.lower())
        self.assertTrue(sent.endswith(b'{"token":"t"}'))

    def test_a_certificate_is_the_answer(self) -> None:
        _, transport, results = exchange(response(200, {"certificate": "PEM"}))
        self.assertEqual(results, [{"certificate": "PEM"}])
        self.assertTrue(transport.disconnecting)

    def test_a_refusal_carries_the_relays_reason(self) -> None:
        _, _, results = exchange(response(403, {"error": "bad-token", "reason": "used already"}))
        error = results[0].value
        self.assertIsInstance(error, EnrollmentRefused)
        self.assertEqual(
            (error.error, error.reason, error.status), ("bad-token", "used already", 403)
        )

    def test_garbage_is_a_refusal(self) -> None:
        _, _, results = exchange(b"\x00\x01 not http\r\n\r\n")
        self.assertIsInstance(results[0].value, EnrollmentRefused)

    def test_a_relay_that_hangs_up_is_a_refusal(self) -> None:
        protocol, _, results = exchange(b"")
        protocol.connectionLost(None)
        self.assertIn("closed the connection", results[0].value.reason)
