"""How a refused or failed stream is explained across the tunnel.

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

ERROR_HEADER = b"tunnel-error"
REASON_HEADER = b"tunnel-reason"


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


class StreamReset(Exception):
    """The stream was reset by the other side or the tunnel went away."""


class TunnelClosed(Exception):
    """The tunnel connection is gone, or is draining and takes no new streams."""


def clean_reason(text: str) -> bytes:
    """Make a reason safe for a header value: printable ASCII, one line, bounded."""
    cleaned = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return cleaned[:300].encode("ascii")
