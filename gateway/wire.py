"""What both ends of the tunnel agree on: header names, control paths, bodies and refusals.

Relay, gateway and engineer client import this module and nothing of each other's, so the wire
contract is said once.  Everything here is plain data (attrs, enums, constants): no Twisted, no h2.

A refusal is an HTTP/2 response: an HTTP status, a ``tunnel-error`` token a program can act on and a
``tunnel-reason`` sentence an engineer can read, e.g. ``403`` / ``target-not-allowed`` / "target
'plc' is not in this gateway's allowlist".  The relay passes refusals from a gateway on to the
engineer unchanged, so ``gateway connect`` can print the gateway's own words.  A stream that breaks
after it was accepted is reset: ``CONNECT_ERROR`` when the processor's TCP connection failed (RFC
9113 section 8.5), ``CANCEL`` when one side gave up.
"""

from __future__ import annotations

import enum

from attrs import frozen

# -- headers ------------------------------------------------------------------------------------

ERROR_HEADER = b"tunnel-error"
"""On a refusal: the machine-readable token (``Refusal.token``)."""
REASON_HEADER = b"tunnel-reason"
"""On a refusal: one sentence for the engineer."""

AUTHORIZATION_HEADER = b"authorization"
"""Engineer client -> relay: ``Bearer <token>``."""
BEARER = "bearer"
GATEWAY_HEADER = b"gateway"
"""Engineer client -> relay: which gateway the stream is for."""
ENGINEER_HEADER = b"engineer"
"""Relay -> gateway: the engineer identity the relay authenticated (never a credential)."""
CONNECTION_ID_HEADER = b"connection-id"
"""Relay -> gateway: the id of this engineer connection, the same in both sides' logs, the
gateway's status API and the audit trail."""

# -- control paths (ordinary HTTP/2 requests, ``:method GET``) -----------------------------------

GATEWAY_INFO_PATH = "/v1/gateway"
"""Engineer client -> relay: does my token work, is the gateway known and online?"""
INFO_PATH = "/v1/info"
"""Relay -> gateway: the gateway's id, version, access mode and targets."""
CONTROL_PREFIX = "/v1/"


@frozen
class GatewayInfo:
    """The relay's answer on ``GATEWAY_INFO_PATH``."""

    gateway: str
    online: bool


@frozen
class EdgeInfo:
    """The gateway's answer on ``INFO_PATH``."""

    id: str
    version: str
    access_mode: str
    targets: list[str]
    connections: int


# -- refusals -----------------------------------------------------------------------------------


class Refusal(enum.Enum):
    """Why a stream was not opened: (HTTP status, token)."""

    BAD_REQUEST = (400, "bad-request")
    BAD_TOKEN = (401, "bad-token")
    TARGET_NOT_ALLOWED = (403, "target-not-allowed")
    ACCESS_DISABLED = (403, "access-disabled")
    SESSION_REQUIRED = (403, "session-required")
    UNKNOWN_GATEWAY = (404, "unknown-gateway")
    TARGET_UNREACHABLE = (502, "target-unreachable")
    GATEWAY_OFFLINE = (503, "gateway-offline")
    SHUTTING_DOWN = (503, "shutting-down")
    TARGET_TIMEOUT = (504, "target-timeout")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def token(self) -> str:
        return self.value[1]


@frozen
class StreamRefused(Exception):
    """The far end answered a stream request with something other than 200."""

    status: int
    token: str
    reason: str

    def __str__(self) -> str:
        return self.reason or f"refused with HTTP status {self.status} ({self.token})"


def refusal_headers(token: str, reason: str) -> list[tuple[bytes, bytes]]:
    """The headers that carry a refusal."""
    return [(ERROR_HEADER, token.encode("ascii", "replace")), (REASON_HEADER, clean_reason(reason))]


def refused_from(status: int, headers: dict[str, str]) -> StreamRefused:
    """Read a refusal back from a response's status and headers."""
    return StreamRefused(
        status=status,
        token=headers.get(ERROR_HEADER.decode(), f"http-{status}"),
        reason=headers.get(REASON_HEADER.decode(), ""),
    )


def clean_reason(text: str) -> bytes:
    """Make a reason safe for a header value: printable ASCII, one line, bounded."""
    cleaned = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return cleaned[:300].encode("ascii")
