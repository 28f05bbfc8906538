"""Fakes for the edge daemon's interfaces, for tests (each checked with ``verifyObject``)."""

from __future__ import annotations

from attrs import define, field
from zope.interface import implementer

from gateway.config import AccessMode
from gateway.edge.access import AccessRequest
from gateway.edge.consent import ISessionChannel, PendingRequest, Session
from gateway.edge.events import (
    ConnectionRecord,
    IAccessEvents,
    IByteCounter,
    IStreamEvents,
    ITunnelEvents,
)
from gateway.wire import Refusal, SessionEvent


@implementer(ITunnelEvents, IStreamEvents, IAccessEvents)
@define
class RecordingEvents:
    """Keeps every event it hears, in order, as ``(event name, *arguments)``."""

    seen: list[tuple[object, ...]] = field(factory=list)

    def named(self, name: str) -> list[tuple[object, ...]]:
        """The arguments of every ``name`` event."""
        return [e[1:] for e in self.seen if e[0] == name]

    def tunnel_up(self, why: str) -> None:
        self.seen.append(("tunnel_up", why))

    def tunnel_down(self, why: str) -> None:
        self.seen.append(("tunnel_down", why))

    def tunnel_failed(self, why: str) -> None:
        self.seen.append(("tunnel_failed", why))

    def tunnel_stopped(self, why: str) -> None:
        self.seen.append(("tunnel_stopped", why))

    def tunnel_rtt(self, seconds: float) -> None:
        self.seen.append(("tunnel_rtt", seconds))

    def stream_opened(self, connection: ConnectionRecord) -> None:
        self.seen.append(("stream_opened", connection))

    def stream_closed(
        self, connection: ConnectionRecord, bytes_to_target: int, bytes_from_target: int, why: str
    ) -> None:
        self.seen.append(("stream_closed", connection, bytes_to_target, bytes_from_target, why))

    def stream_refused(self, request: AccessRequest, refusal: Refusal, reason: str) -> None:
        self.seen.append(("stream_refused", request, refusal, reason))

    def access_mode_changed(self, old: AccessMode, new: AccessMode) -> None:
        self.seen.append(("access_mode_changed", old, new))

    def request_opened(self, request: PendingRequest) -> None:
        self.seen.append(("request_opened", request))

    def request_closed(self, request: PendingRequest, outcome: str) -> None:
        self.seen.append(("request_closed", request, outcome))

    def session_started(self, session: Session, how: str) -> None:
        self.seen.append(("session_started", session, how))

    def session_ended(self, session: Session, why: str) -> None:
        self.seen.append(("session_ended", session, why))

    def code_created(self, code_id: str) -> None:
        self.seen.append(("code_created", code_id))

    def code_refused(self, why: str) -> None:
        self.seen.append(("code_refused", why))

    def audit_failed(self, why: str) -> None:
        self.seen.append(("audit_failed", why))


@implementer(IByteCounter)
@define
class ByteTally:
    """Adds up the bytes counted each way."""

    to_target: int = 0
    from_target: int = 0

    def bytes_to_target(self, n: int) -> None:
        self.to_target += n

    def bytes_from_target(self, n: int) -> None:
        self.from_target += n


@implementer(ISessionChannel)
@define(eq=False)
class RecordingChannel:
    """An engineer's session stream in memory: the events sent, and whether it was closed."""

    events: list[SessionEvent] = field(factory=list)
    closed: bool = False

    def send(self, event: SessionEvent) -> None:
        if self.closed:
            raise AssertionError(f"sent {event} after the channel was closed")
        self.events.append(event)

    def close(self) -> None:
        self.closed = True

    @property
    def last(self) -> SessionEvent:
        return self.events[-1]


@define
class StreamAborts:
    """Stands in for the forwarder: which sessions' streams were aborted, and how often all."""

    sessions: list[str] = field(factory=list)
    all: int = 0
    narrowed: list[str] = field(factory=list)
    """Sessions that became view-only (their streams view cannot hold were cut)."""
    narrowed_targets: list[tuple[str, ...]] = field(factory=list)
    """On which targets each became view-only (empty: all of its targets)."""

    def abort_session(self, session_id: str) -> None:
        self.sessions.append(session_id)

    def narrow_to_view(self, session_id: str, targets: tuple[str, ...] = ()) -> list[str]:
        self.narrowed.append(session_id)
        self.narrowed_targets.append(targets)
        return []

    def abort_all(self) -> None:
        self.all += 1
