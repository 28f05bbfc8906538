"""What an enrolling or renewing gateway and the relay say to each other.

One HTTP/1.1 request per TLS connection to the relay's *gateway* listener, the same address,
firewall rule and proxy as the tunnel.  The connection is told apart from a tunnel by ALPN: the
tunnel offers ``h2`` only, enrollment ``http/1.1`` only, and a connection that offers ``h2``
without a certificate the relay's gateway CA signed is refused before HTTP/2 starts.

* ``POST /v1/enroll``: body ``{"token": "...", "csr": "PEM"}``; no client certificate needed.
* ``POST /v1/renew``: body ``{"csr": "PEM"}``; only with the gateway's current (valid, not
  revoked) client certificate, whose subject must be the CSR's.

The answer is JSON: ``200 {"certificate": "PEM", "not_after": "ISO 8601"}``, or a refusal
``4xx/5xx {"error": token, "reason": sentence}``.  Bodies are small and bounded
(`MAX_BODY_BYTES`); a connection gets `REQUEST_TIMEOUT` seconds for its request and is closed
after the answer.  No Twisted here.
"""

from __future__ import annotations

import json
from typing import Any

ALPN_HTTP11 = b"http/1.1"
ENROLL_PATH = b"/v1/enroll"
RENEW_PATH = b"/v1/renew"
MAX_BODY_BYTES = 16 * 1024
"""A P-256 or RSA-4096 CSR in PEM and a token fit many times over."""
MAX_HEAD_BYTES = 8 * 1024
REQUEST_TIMEOUT = 15.0
"""Seconds from the TLS handshake to a whole request; then the relay hangs up."""


class EnrollmentRefused(Exception):
    """The relay refused (or the exchange failed); ``reason`` is one sentence for plant IT."""

    def __init__(self, error: str, reason: str, status: int = 0) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.status = status


def body(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def parse_body(data: bytes) -> dict[str, Any]:
    """A JSON object, or ValueError."""
    value = json.loads(data.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("the body is not a JSON object")
    return value


def text_field(data: dict[str, Any], name: str, *, limit: int = MAX_BODY_BYTES) -> str:
    """A string field of a body, or ValueError naming it."""
    value = data.get(name)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValueError(f"'{name}' is missing or not text")
    return value
