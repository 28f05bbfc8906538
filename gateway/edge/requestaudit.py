"""The record of every request on ``http`` targets: audited, bounded, summed up per session.

Each request the follower sees (`gateway.edge.httpfollow`) is one ``http.request`` record: the
session, the engineer, the target and connection, the method, the path with its query *values*
left out (names stay: ``/trend?tag=&from=``), the result (``forwarded`` or ``refused``, and why)
and the answer's status when it was read from the answer's head.

Bounded: a page that polls every 100 ms must not fill the disk.  Each session has a token bucket
(`RATE` records a second, bursts of `BURST`); a request over it is counted, not written, and the
count is written as one ``audit.suppressed`` record ("N further requests not recorded") before
the session's next record and at its end.  When a session ends, ``http.summary`` gives its
requests by method, the writes refused, and the bytes of its ``http`` streams each way.

The last `RECENT` requests of each live session are kept for the status JSON.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from gateway.config import AccessMode
from gateway.edge.access import AccessRequest
from gateway.edge.consent import PendingRequest, Session
from gateway.edge.events import (
    Auditor,
    ConnectionRecord,
    IAccessEvents,
    IRequestEvents,
    IStreamEvents,
)
from gateway.edge.httpfollow import Exchange, describe
from gateway.edge.status import iso
from gateway.wire import Refusal

RATE = 20.0
"""Request records a second per session, on average."""
BURST = 100
"""Request records a session may write at once (a page load's images and scripts)."""
RECENT = 20
"""Requests per session kept for the status JSON."""


@define(eq=False)
class _SessionRequests:
    engineer: str
    tokens: float
    refilled: float
    unrecorded: int = 0
    by_method: Counter[str] = field(factory=Counter)
    refused: int = 0
    unrecorded_total: int = 0
    bytes_to_target: int = 0
    bytes_from_target: int = 0
    recent: deque[dict[str, Any]] = field(factory=lambda: deque(maxlen=RECENT))


@implementer(IRequestEvents, IStreamEvents, IAccessEvents)
class RequestAudit:
    """Writes ``http.request``, ``audit.suppressed`` and ``http.summary`` records."""

    def __init__(
        self,
        auditor: Auditor,
        clock: IReactorTime,
        *,
        rate: float = RATE,
        burst: int = BURST,
    ) -> None:
        self._auditor = auditor
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._sessions: dict[str, _SessionRequests] = {}

    def recent(self, session_id: str) -> list[dict[str, Any]]:
        """The session's last requests, oldest first (for the status JSON)."""
        state = self._sessions.get(session_id)
        return [] if state is None else list(state.recent)

    def _state(self, session: str, engineer: str) -> _SessionRequests:
        state = self._sessions.get(session)
        if state is None:
            now = self._clock.seconds()
            state = self._sessions[session] = _SessionRequests(engineer, float(self._burst), now)
        return state

    def _take_token(self, state: _SessionRequests) -> bool:
        now = self._clock.seconds()
        state.tokens = min(float(self._burst), state.tokens + (now - state.refilled) * self._rate)
        state.refilled = now
        if state.tokens >= 1.0:
            state.tokens -= 1.0
            return True
        return False

    def _flush_unrecorded(self, session: str, state: _SessionRequests) -> None:
        if state.unrecorded:
            count, state.unrecorded = state.unrecorded, 0
            self._auditor.record(
                "audit.suppressed",
                of="http.request",
                who=state.engineer,
                session=session,
                requests=count,
                note=f"{count} further requests not recorded (over {self._rate:g} a second)",
            )

    # -- IRequestEvents

    def request_seen(self, connection: ConnectionRecord, exchange: Exchange) -> None:
        session = connection.session or ""
        state = self._state(session, connection.engineer)
        seen = describe(exchange)
        state.by_method[exchange.head.method] += 1
        if not exchange.forwarded:
            state.refused += 1
        state.recent.append({"at": iso(self._clock.seconds()), "target": connection.target, **seen})
        if not self._take_token(state):
            state.unrecorded += 1
            state.unrecorded_total += 1
            return
        self._flush_unrecorded(session, state)
        self._auditor.record(
            "http.request",
            who=connection.engineer,
            result=seen["result"],
            session=connection.session,
            connection=connection.id,
            target=connection.target,
            method=seen["method"],
            path=seen["path"],
            status=seen["status"],
            **({"why": seen["why"]} if seen["why"] else {}),
            **({"upgrade": seen["upgrade"]} if "upgrade" in seen else {}),
        )

    # -- IStreamEvents: the bytes of a session's http streams

    def stream_opened(self, connection: ConnectionRecord) -> None:
        pass

    def stream_closed(
        self, connection: ConnectionRecord, bytes_to_target: int, bytes_from_target: int, why: str
    ) -> None:
        if connection.kind != "http" or connection.session is None:
            return
        state = self._state(connection.session, connection.engineer)
        state.bytes_to_target += bytes_to_target
        state.bytes_from_target += bytes_from_target

    def stream_refused(self, request: AccessRequest, refusal: Refusal, reason: str) -> None:
        pass

    # -- IAccessEvents: the summary at a session's end

    def session_ended(self, session: Session, why: str) -> None:
        state = self._sessions.pop(session.id, None)
        if state is None:
            return
        self._flush_unrecorded(session.id, state)
        self._auditor.record(
            "http.summary",
            who=session.engineer,
            session=session.id,
            requests=sum(state.by_method.values()),
            by_method=dict(sorted(state.by_method.items())),
            refused=state.refused,
            unrecorded=state.unrecorded_total,
            bytes_to_target=state.bytes_to_target,
            bytes_from_target=state.bytes_from_target,
        )

    def access_mode_changed(self, old: AccessMode, new: AccessMode) -> None:
        pass

    def request_opened(self, request: PendingRequest) -> None:
        pass

    def request_closed(self, request: PendingRequest, outcome: str) -> None:
        pass

    def session_started(self, session: Session, how: str) -> None:
        pass

    def code_created(self, code_id: str) -> None:
        pass

    def code_refused(self, why: str) -> None:
        pass

    def audit_failed(self, why: str) -> None:
        pass
