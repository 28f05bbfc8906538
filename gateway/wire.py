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
import json

import attrs
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

SESSION_HEADER = b"session"
"""Engineer client -> relay -> gateway, on each CONNECT: the session the stream belongs to (the
gateway checks it is live, its own and granted to the engineer the relay authenticated)."""

# -- control paths (ordinary HTTP/2 requests, ``:method GET``) -----------------------------------

GATEWAY_INFO_PATH = "/v1/gateway"
"""Engineer client -> relay: does my token work, is the gateway known and online?"""
INFO_PATH = "/v1/info"
"""Relay -> gateway: the gateway's id, version, access mode and targets."""
CONTROL_PREFIX = "/v1/"
SESSION_PATH = "/v1/session"
"""``POST``, engineer client -> relay -> gateway: ask for a session (a reason for the plant to
approve, or a code the plant read out), or resume one.  Body: `SessionAsk` as JSON.  The answer is
``200`` with a long-lived body of JSON lines (`SessionEvent`, ``NDJSON``) while the session waits
and lives; the stream staying open is the engineer's presence (when it goes, the grace period
starts).  A refusal (bad code, locked, not authorised, mode disabled) is an ordinary refusal."""
SESSIONS_PATH = "/v1/sessions"
"""``GET``, relay -> gateway: the access mode, pending requests and live sessions
(`SessionsSummary`), for ``gateway relay sessions``."""
NDJSON = b"application/x-ndjson"


@frozen
class GatewayInfo:
    """The relay's answer on ``GATEWAY_INFO_PATH``."""

    gateway: str
    online: bool
    access_mode: str | None = None
    """The fields below: what an online gateway offers, as it told the relay just now (for
    ``gateway connect --group``); absent when it is offline or could not say (``problem``)."""
    targets: list[str] | None = None
    groups: dict[str, dict[str, str]] | None = None
    """``{group: {"port": member}}``, the first member the group's page."""
    problem: str | None = None

    def to_json(self) -> bytes:
        """Only the fields that say something: an offline gateway's answer is as it always was."""
        return json.dumps({k: v for k, v in attrs.asdict(self).items() if v is not None}).encode()


@frozen
class EdgeInfo:
    """The gateway's answer on ``INFO_PATH``."""

    id: str
    version: str
    access_mode: str
    targets: list[str]
    connections: int


@frozen
class GroupedEdgeInfo(EdgeInfo):
    """`EdgeInfo` of a gateway with target groups (without any, the answer stays as it was)."""

    groups: dict[str, dict[str, str]] = attrs.field(factory=dict)
    """``{group: {"port": member}}``, the first member the group's page."""


@frozen
class SessionAsk:
    """What ``gateway connect --reason|--code`` asks for (the body of ``POST SESSION_PATH``).

    Exactly one of ``reason``, ``code`` and ``resume`` is set, or none (in ``unattended`` mode the
    engineer still gets a session, implicit and without expiry, that the plant can see and end).
    """

    reason: str | None = None
    code: str | None = None
    resume: str | None = None
    """A session id this engineer holds: reattach after the client reconnected."""
    targets: list[str] = attrs.field(factory=list)
    """The targets wanted (empty: the gateway's choice, i.e. all the session grants)."""


class SessionEventKind(enum.Enum):
    WAITING = "waiting"
    """The request is with the plant: ``request``, ``asked``, ``expires``."""
    APPROVED = "approved"
    """The session is live: ``session``, ``targets``, ``permission``, ``expires``, who approved,
    and ``http_targets``: which of its targets speak HTTP (the client answers a browser with a
    page, not a cut connection, when a stream to one is refused)."""
    DENIED = "denied"
    """The plant said no (or nobody answered in time): ``reason``.  The stream ends."""
    CHANGED = "changed"
    """The plant changed what the live session allows: ``session``, ``permission``, ``targets``,
    ``approved_by`` (who changed it).  The session goes on."""
    ENDED = "ended"
    """The session ended: ``why`` ("ended by the plant: ...", "expired", "remote access was
    switched off", ...).  The stream ends."""


@frozen
class SessionEvent:
    """One JSON line on a session stream, gateway -> engineer."""

    event: SessionEventKind
    request: str | None = None
    session: str | None = None
    targets: list[str] = attrs.field(factory=list)
    permission: str | None = None
    asked: str | None = None
    """ISO 8601 times (UTC)."""
    expires: str | None = None
    approved_by: str | None = None
    reason: str | None = None
    why: str | None = None
    http_targets: list[str] = attrs.field(factory=list)

    def to_line(self) -> bytes:
        body = {k: v for k, v in attrs.asdict(self).items() if v not in (None, [])}
        body["event"] = self.event.value
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> SessionEvent:
        """Parse one line; raises ValueError on anything that is not a session event."""
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("a session event is a JSON object")
        fields = {f.name for f in attrs.fields(cls)}
        kind = SessionEventKind(data.get("event"))
        return cls(kind, **{k: v for k, v in data.items() if k in fields and k != "event"})


@frozen
class SessionsSummary:
    """The gateway's answer on ``SESSIONS_PATH``: what the support desk may see of it."""

    id: str
    access_mode: str
    requests: list[dict[str, object]]
    sessions: list[dict[str, object]]


# -- refusals -----------------------------------------------------------------------------------


class Refusal(enum.Enum):
    """Why a stream was not opened: (HTTP status, token)."""

    BAD_REQUEST = (400, "bad-request")
    BAD_TOKEN = (401, "bad-token")
    TOKEN_EXPIRED = (401, "token-expired")
    TARGET_NOT_ALLOWED = (403, "target-not-allowed")
    ACCESS_DISABLED = (403, "access-disabled")
    SESSION_REQUIRED = (403, "session-required")
    NOT_AUTHORISED = (403, "not-authorised")
    """The relay does not let this engineer reach this gateway (``--gateways`` patterns)."""
    CODE_INVALID = (403, "code-invalid")
    """A session code that is wrong, used or expired."""
    PERMISSION_DENIED = (403, "permission-denied")
    """The session does not grant this (e.g. ``view`` on a ``tcp`` target)."""
    UNKNOWN_GATEWAY = (404, "unknown-gateway")
    SESSION_ENDED = (410, "session-ended")
    """The session named is not live (ended, expired, or not this engineer's)."""
    TOO_MANY_ATTEMPTS = (429, "too-many-attempts")
    """Failed logins or codes over the limit: refused for a while, even when right."""
    LIMIT_REACHED = (429, "limit-reached")
    """Too many streams (per engineer, per target, per tunnel) or connections."""
    TARGET_UNREACHABLE = (502, "target-unreachable")
    GATEWAY_OFFLINE = (503, "gateway-offline")
    SHUTTING_DOWN = (503, "shutting-down")
    AUDIT_UNAVAILABLE = (503, "audit-unavailable")
    """The audit trail cannot be written: no new session until it can."""
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
