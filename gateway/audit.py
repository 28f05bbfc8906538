"""The audit trail: what happened, who did it, and a chain that shows if a record was touched.

Gateway and relay each keep one in their state directory: append-only JSON lines, one event a line
(``time``, ``event``, ``sr`` = the IEC 62443-3-3 requirements it serves, ``who``, ``result`` and the
event's details), each line carrying the SHA-256 of the line before it (``prev``), so that
``gateway audit --verify`` finds any edited, removed or reordered line.  Rotated by size without
breaking the chain.

Callers record through `IAuditTrail`; a record that cannot be written raises `AuditWriteError`
(the consent service then refuses new sessions; live ones carry on).  Event names are fixed in
`EVENTS`: a misspelt event is a programming error, not a record.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from zope.interface import Attribute, Interface, implementer

# IEC 62443-3-3 system requirements the events serve.
SR_AUDIT = "SR 2.8"  # auditable events
SR_TIMESTAMP = "SR 2.11"  # timestamps
SR_REMOTE_APPROVAL = "SR 1.13 RE1"  # explicit approval of remote access
SR_REMOTE_SESSION_END = "SR 2.6"  # remote session termination
SR_LOGIN_FAILURES = "SR 1.11"  # unsuccessful login attempts
SR_AUTHENTICATION = "SR 1.1"  # human user identification and authentication
SR_AUTHORISATION = "SR 2.1"  # authorisation enforcement
SR_INTEGRITY = "SR 3.1"  # communication integrity
SR_ZONE_BOUNDARY = "SR 5.2"  # zone boundary protection
SR_RESOURCE = "SR 7.1"  # denial of service protection
SR_AUDIT_STORAGE = "SR 2.9"  # audit storage capacity
SR_AUDIT_FAILURE = "SR 2.10"  # response to audit processing failures

EVENTS: dict[str, tuple[str, ...]] = {
    # Gateway: consent.
    "mode.changed": (SR_AUDIT, SR_REMOTE_APPROVAL),
    "session.requested": (SR_AUDIT, SR_REMOTE_APPROVAL),
    "session.approved": (SR_AUDIT, SR_REMOTE_APPROVAL),
    "session.denied": (SR_AUDIT, SR_REMOTE_APPROVAL),
    "code.created": (SR_AUDIT, SR_REMOTE_APPROVAL),
    "code.used": (SR_AUDIT, SR_REMOTE_APPROVAL, SR_AUTHENTICATION),
    "code.failed": (SR_AUDIT, SR_LOGIN_FAILURES),
    "code.locked": (SR_AUDIT, SR_LOGIN_FAILURES),
    "session.started": (SR_AUDIT, SR_REMOTE_APPROVAL),
    "session.changed": (SR_AUDIT, SR_AUTHORISATION),
    "session.ended": (SR_AUDIT, SR_REMOTE_SESSION_END),
    # Gateway: the status page's operator login (off loopback).
    "operator.login": (SR_AUDIT, SR_AUTHENTICATION),
    "operator.login_failed": (SR_AUDIT, SR_LOGIN_FAILURES, SR_AUTHENTICATION),
    "operator.locked_out": (SR_AUDIT, SR_LOGIN_FAILURES),
    "operator.logout": (SR_AUDIT, SR_AUTHENTICATION),
    "operator.password_set": (SR_AUDIT, SR_AUTHENTICATION),
    # Gateway and relay: streams.
    "stream.opened": (SR_AUDIT, SR_ZONE_BOUNDARY),
    "stream.closed": (SR_AUDIT, SR_ZONE_BOUNDARY),
    "stream.refused": (SR_AUDIT, SR_AUTHORISATION, SR_ZONE_BOUNDARY),
    "http.request": (SR_AUDIT, SR_AUTHORISATION),
    "http.summary": (SR_AUDIT,),
    "audit.suppressed": (SR_AUDIT,),
    # Relay: who came in.
    "engineer.login_failed": (SR_AUDIT, SR_LOGIN_FAILURES, SR_AUTHENTICATION),
    "engineer.locked_out": (SR_AUDIT, SR_LOGIN_FAILURES),
    "engineer.not_authorised": (SR_AUDIT, SR_AUTHORISATION),
    "engineer.added": (SR_AUDIT, SR_AUTHENTICATION),
    "engineer.removed": (SR_AUDIT, SR_AUTHENTICATION),
    "engineer.portal_login": (SR_AUDIT, SR_AUTHENTICATION),
    "engineer.portal_logout": (SR_AUDIT, SR_AUTHENTICATION),
    "gateway.connected": (SR_AUDIT, SR_AUTHENTICATION),
    "gateway.disconnected": (SR_AUDIT,),
    "gateway.refused": (SR_AUDIT, SR_AUTHENTICATION, SR_INTEGRITY),
    "gateway.id_conflict": (SR_AUDIT, SR_AUTHENTICATION),
    "limit.reached": (SR_AUDIT, SR_RESOURCE),
    # Gateway and relay: the configuration reloaded on SIGHUP (or refused: result "refused").
    "config.reloaded": (SR_AUDIT,),
    # Relay: enrollment, renewal and revocation of gateway certificates (gateway.enrollment).
    "enrollment.token_issued": (SR_AUDIT, SR_AUTHENTICATION),
    "enrollment.token_used": (SR_AUDIT, SR_AUTHENTICATION),
    "enrollment.token_failed": (SR_AUDIT, SR_LOGIN_FAILURES, SR_AUTHENTICATION),
    "gateway.enrolled": (SR_AUDIT, SR_AUTHENTICATION),
    "gateway.renewed": (SR_AUDIT, SR_AUTHENTICATION),
    "gateway.renewal_refused": (SR_AUDIT, SR_AUTHENTICATION),
    "gateway.revoked": (SR_AUDIT, SR_AUTHENTICATION, SR_AUTHORISATION),
    # The trail itself (written by gateway.auditlog, not by callers).
    "audit.rotated": (SR_AUDIT, SR_AUDIT_STORAGE),
    "audit.lost": (SR_AUDIT, SR_AUDIT_FAILURE),
}


class AuditWriteError(Exception):
    """A record could not be written (disk full, permissions); the message says why."""


class IAuditTrail(Interface):
    """Where a program's audit records go."""

    healthy = Attribute("False after a write failed, until a write succeeds again.")

    def record(event: str, *, who: str | None = None, result: str = "ok", **details: Any) -> None:
        """Append one record now; raise `AuditWriteError` if it cannot be written.

        ``event`` must be a key of `EVENTS` (ValueError otherwise); ``details`` are JSON values
        (never a token, key, password or code).
        """


def check_event(event: str) -> tuple[str, ...]:
    """The SR ids of ``event``; ValueError for an event that is not in `EVENTS`."""
    try:
        return EVENTS[event]
    except KeyError:
        raise ValueError(f"unknown audit event {event!r}") from None


@implementer(IAuditTrail)
@define
class MemoryAuditTrail:
    """Keeps records in a list, for tests; ``fail`` makes every write raise."""

    records: list[dict[str, Any]] = field(factory=list)
    fail: bool = False
    healthy: bool = True

    def record(
        self, event: str, *, who: str | None = None, result: str = "ok", **details: Any
    ) -> None:
        sr = check_event(event)
        if self.fail:
            self.healthy = False
            raise AuditWriteError("audit trail unavailable (test)")
        self.healthy = True
        self.records.append(
            {"event": event, "sr": list(sr), "who": who, "result": result, **details}
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["event"] == name]
