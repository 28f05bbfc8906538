"""The status JSON contract (BRIEF section 3) as plain data, and the view that builds it.

``StatusView.report()`` reads the tunnel's state machine, the access policy, the consent service
(pending requests, live sessions, the code lockout) and the live connections (byte counts straight
from their splice ends, so nothing is counted twice) into frozen attrs classes; ``attrs.asdict``
of a ``StatusReport`` is the JSON that ``/api/status`` serves.  Check results have their place
(an empty list until the check service exists).  The status page reads it through
``IStatusView`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import attrs
from attrs import field, frozen
from zope.interface import Interface, implementer

from gateway import __version__
from gateway.edge.access import AccessPolicy, AccessRequest, target_access
from gateway.edge.consent import IConsent, PendingRequest, Session
from gateway.edge.events import ConnectionRecord, IStreamEvents
from gateway.edge.link import TunnelStatus
from gateway.wire import Refusal


@frozen
class TunnelReport:
    state: str
    since: str
    relay: str
    rtt_ms: float | None
    last_error: str | None
    connects: int


@frozen
class RequestReport:
    """An engineer's pending request for a session."""

    id: str
    engineer: str
    reason: str
    targets: list[str]
    asked: str
    expires: str


@frozen
class AccessReport:
    mode: str
    targets: list[str]
    requests: list[RequestReport] = field(factory=list)
    code_entry_locked_until: str | None = None
    """After 5 wrong session codes: when code entry opens again (None: it is open)."""


@frozen
class SessionReport:
    id: str
    engineer: str
    reason: str
    targets: list[str]
    permission: str
    started: str
    expires: str | None
    """None: no expiry (an implicit session of unattended mode, ended by the plant or when its
    engineer has gone)."""
    approved_by: str
    connections: list[str]
    implicit: bool = False
    target_access: dict[str, str] = field(factory=dict)
    """What the session may do on each of its targets: ``full``, ``view``, ``view+websocket``
    (its WebSockets pass uninspected) or ``none`` (view-only on a tcp target)."""
    recent_requests: list[dict[str, Any]] = field(factory=list)
    """Its last requests on ``http`` targets (at most `gateway.edge.requestaudit.RECENT`):
    ``at``, ``target``, ``method``, ``path`` (no query values), ``result``, ``why``, ``status``."""


@frozen
class ConnectionReport:
    id: str
    session: str | None
    target: str
    engineer: str
    started: str
    bytes_to_target: int
    bytes_from_target: int


@frozen
class CheckReport:
    name: str
    ok: bool
    detail: str
    remedy: str = ""


@frozen
class StatusReport:
    id: str
    version: str
    tunnel: TunnelReport
    access: AccessReport
    sessions: list[SessionReport]
    connections: list[ConnectionReport]
    checks: list[CheckReport]
    recent_events: list[dict[str, Any]] = field(factory=list)
    """The last audit events, newest first (`gateway.edge.recent`): ``time``, ``event``,
    ``who``, ``result`` and a few plain details; never a token, key or code."""

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class IStatusView(Interface):
    """What the status page reads (its control actions will come as a second interface)."""

    def report() -> StatusReport:
        """The gateway's status right now."""


@implementer(IStreamEvents)
class LiveConnections:
    """The engineer connections open now: the status model's consumer of stream events."""

    def __init__(self) -> None:
        self._open: dict[str, ConnectionRecord] = {}

    def __iter__(self) -> Iterator[ConnectionRecord]:
        return iter(list(self._open.values()))

    def __len__(self) -> int:
        return len(self._open)

    def stream_opened(self, connection: ConnectionRecord) -> None:
        self._open[connection.id] = connection

    def stream_closed(
        self, connection: ConnectionRecord, bytes_to_target: int, bytes_from_target: int, why: str
    ) -> None:
        if self._open.get(connection.id) is connection:
            del self._open[connection.id]

    def stream_refused(self, request: AccessRequest, refusal: Refusal, reason: str) -> None:
        pass


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def request_report(request: PendingRequest) -> RequestReport:
    return RequestReport(
        id=request.id,
        engineer=request.engineer,
        reason=request.reason,
        targets=list(request.targets),
        asked=iso(request.asked),
        expires=iso(request.expires),
    )


def session_report(
    session: Session,
    recent: Callable[[str], list[dict[str, Any]]] | None = None,
    policy: AccessPolicy | None = None,
) -> SessionReport:
    targets = [] if policy is None else [(n, policy.target(n)) for n in session.targets]
    return SessionReport(
        id=session.id,
        engineer=session.engineer,
        reason=session.reason,
        targets=list(session.targets),
        permission=session.permission.value,
        started=iso(session.started),
        expires=None if session.expires is None else iso(session.expires),
        approved_by=session.approved_by,
        connections=list(session.connections),
        implicit=session.implicit,
        target_access={
            name: target_access(session.permission_on(name), target)
            for name, target in targets
            if target is not None
        },
        recent_requests=[] if recent is None else recent(session.id),
    )


@implementer(IStatusView)
class StatusView:
    def __init__(
        self,
        gateway_id: str,
        tunnel: TunnelStatus,
        policy: AccessPolicy,
        connections: LiveConnections,
        consent: IConsent | None = None,
        *,
        recent_requests: Callable[[str], list[dict[str, Any]]] | None = None,
        recent_events: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._recent = recent_requests
        self._recent_events = recent_events
        self._gateway_id = gateway_id
        self._tunnel = tunnel
        self._policy = policy
        self._connections = connections
        self._consent = consent

    def report(self) -> StatusReport:
        tunnel = self._tunnel
        consent = self._consent
        access = AccessReport(mode=self._policy.mode.value, targets=self._policy.target_names)
        sessions: list[SessionReport] = []
        if consent is not None:
            locked = consent.code_entry_locked_until()
            access = AccessReport(
                mode=access.mode,
                targets=access.targets,
                requests=[request_report(r) for r in consent.requests()],
                code_entry_locked_until=None if locked is None else iso(locked),
            )
            sessions = [session_report(s, self._recent, self._policy) for s in consent.sessions()]
        return StatusReport(
            id=self._gateway_id,
            version=__version__,
            tunnel=TunnelReport(
                state=tunnel.phase.value,
                since=iso(tunnel.since),
                relay=tunnel.relay,
                rtt_ms=None if tunnel.rtt is None else round(tunnel.rtt * 1000, 2),
                last_error=tunnel.last_error,
                connects=tunnel.connects,
            ),
            access=access,
            sessions=sessions,
            connections=[
                ConnectionReport(
                    id=c.id,
                    session=c.session,
                    target=c.target,
                    engineer=c.engineer,
                    started=iso(c.started),
                    bytes_to_target=c.bytes_to_target,
                    bytes_from_target=c.bytes_from_target,
                )
                for c in self._connections
            ],
            checks=[],
            recent_events=[] if self._recent_events is None else self._recent_events(),
        )
