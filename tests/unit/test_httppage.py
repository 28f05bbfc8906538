"""The pages the product answers a browser with itself, and telling HTTP from other bytes."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from gateway.httppage import error_page, http_request_line, wants_json


class ErrorPageTests(SynchronousTestCase):
    def test_a_page_carries_the_status_the_reason_escaped_and_the_token(self) -> None:
        page = error_page(502, "target-unreachable", "processor <web> did not answer", close=True)
        head, _, body = page.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 502 Bad Gateway")
        self.assertIn(b"x-gateway-refused: target-unreachable", lines)
        self.assertIn(b"connection: close", lines)
        self.assertIn(b"content-length: %d" % len(body), lines)
        self.assertIn(b"processor &lt;web&gt; did not answer", body)

    def test_json_for_a_client_that_asked_for_it(self) -> None:
        page = error_page(403, "view-only", "view only", wants_json=True)
        head, _, body = page.partition(b"\r\n\r\n")
        self.assertIn(b"content-type: application/json", head)
        self.assertEqual(json.loads(body), {"error": "view-only", "reason": "view only"})

    def test_a_head_request_gets_no_body(self) -> None:
        page = error_page(503, "gateway-offline", "offline", head_only=True)
        head, _, body = page.partition(b"\r\n\r\n")
        self.assertEqual(body, b"")
        self.assertNotIn(b"content-length: 0", head)  # the length of the body a GET would get


class RequestLineTests(SynchronousTestCase):
    def test_request_lines(self) -> None:
        self.assertTrue(http_request_line(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        self.assertTrue(http_request_line(b"OPTIONS * HTTP/1.0\n"))
        self.assertTrue(http_request_line(b"M-SEARCH / HTTP/1.1\r\n"))

    def test_not_http(self) -> None:
        for first in (
            b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"get / HTTP/1.1\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET  HTTP/1.1\r\n",
            b"GET /\r\n",
            b"PRI * HTTP/2.0\r\n",
        ):
            self.assertIs(http_request_line(first), False, first)

    def test_too_little_to_tell_yet(self) -> None:
        for first in (b"", b"GE", b"GET ", b"GET /index", b"GET / HT", b"GET / HTTP/1.1"):
            self.assertIsNone(http_request_line(first), first)

    def test_accept_json(self) -> None:
        self.assertTrue(wants_json(b"GET / HTTP/1.1\r\nAccept: application/json\r\n\r\n"))
        self.assertFalse(wants_json(b"GET / HTTP/1.1\r\nAccept: text/html\r\n\r\n"))
        self.assertFalse(wants_json(b"GET /json HTTP/1.1\r\n\r\n"))
