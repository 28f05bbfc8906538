"""What the edge daemon reports, and the fan-out that hands each report to every consumer.

The link and the forwarder say what happened (a tunnel came up, a stream opened or was refused),
and the consent service what the plant decided; none of them knows who listens.  The metrics count
it, the status model keeps what the status page shows, and the audit trail records the streams
(`StreamAudit`): each is one consumer on the daemon's ``FanOut`` (cf. ``IUsageWriter`` in
magic-wormhole-transit-relay's usage.py).  The consent service writes its own audit records
(through an `Auditor`), because a decision that cannot be recorded must not be taken.

Bytes are different: they are counted per chunk on the data path, so ``IByteCounter`` is kept
apart and ``FanOut`` hands out the single counter's own bound method when there is only one (no
loop, no extra call per chunk).  The status page reads live byte counts from the splice ends in
``ConnectionRecord``, and the audit trail gets the totals when a stream closes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from gateway.audit import AuditWriteError, IAuditTrail
from gateway.config import AccessMode
from gateway.edge.access import AccessRequest
from gateway.edge.consent import PendingRequest, Session
from gateway.edge.httpfollow import Exchange
from gateway.splice import SpliceEnd
from gateway.wire import Refusal

log = Logger()


class Delivering(Protocol):
    """What a tunnel stream tells of its bytes' fate (`gateway.tunnel.stream.TunnelStream`)."""

    @property
    def delivered(self) -> int: ...


@define
class ConnectionRecord:
    """One engineer connection through this gateway, from the moment its processor answered."""

    id: str
    """The connection id: the relay's (``wire.CONNECTION_ID_HEADER``) or a local ``g-<n>``."""
    target: str
    address: str
    engineer: str
    session: str | None
    started: float
    to_target: SpliceEnd = field(repr=False)
    from_target: SpliceEnd = field(repr=False)
    kind: str = "tcp"
    """The target's kind (``tcp``, ``http``): ``http`` streams are followed request by request."""
    toward_engineer: Delivering | None = field(default=None, repr=False)
    """The tunnel stream the processor's bytes go out on: it knows how many were delivered."""

    @property
    def bytes_to_target(self) -> int:
        """Bytes written to the processor."""
        return self.to_target.bytes

    @property
    def bytes_from_target(self) -> int:
        """Bytes of the processor's delivered to the engineer's client (not merely read from
        the processor into the tunnel's windows: those run megabytes ahead of a slow reader)."""
        if self.toward_engineer is not None:
            return self.toward_engineer.delivered
        return self.from_target.bytes

    @property
    def bytes_read_from_target(self) -> int:
        """Bytes read from the processor so far, delivered or not."""
        return self.from_target.bytes


class ITunnelEvents(Interface):
    """The tunnel to the relay, as the link reports it."""

    def tunnel_up(why: str) -> None:
        """A tunnel connection is up (TLS and HTTP/2 settings done): once per connect."""

    def tunnel_down(why: str) -> None:
        """The tunnel is down: the connection was lost, or failed before it came up."""

    def tunnel_failed(why: str) -> None:
        """A dial or handshake failed: ``why`` says what to check (shown as the last error)."""

    def tunnel_stopped(why: str) -> None:
        """The gateway is stopping: the tunnel is drained and not redialled."""

    def tunnel_rtt(seconds: float) -> None:
        """A heartbeat measured the round-trip time to the relay."""


class IStreamEvents(Interface):
    """Engineer streams, as the forwarder reports them."""

    def stream_opened(connection: ConnectionRecord) -> None:
        """The processor answered and the stream is spliced to it."""

    def stream_closed(
        connection: ConnectionRecord, bytes_to_target: int, bytes_from_target: int, why: str
    ) -> None:
        """The connection ended (``why``: "closed", or what broke it) after moving these bytes."""

    def stream_refused(request: AccessRequest, refusal: Refusal, reason: str) -> None:
        """A stream was refused: by the access decision, or its processor could not be reached."""


class IRequestEvents(Interface):
    """Requests on the streams to ``http`` targets, as the follower sees them."""

    def request_seen(connection: ConnectionRecord, exchange: Exchange) -> None:
        """A request was let through (and its answer's status read, if it came) or refused."""


class IByteCounter(Interface):
    """Bytes moved, per chunk, on the data path: implementations must be cheap and not raise."""

    def bytes_to_target(n: int) -> None:
        """``n`` bytes went from an engineer to a processor."""

    def bytes_from_target(n: int) -> None:
        """``n`` bytes came back from a processor."""


class IAccessEvents(Interface):
    """The plant's control of access: modes, requests, sessions, codes, the audit trail."""

    def access_mode_changed(old: AccessMode, new: AccessMode) -> None:
        """The access mode was switched."""

    def request_opened(request: PendingRequest) -> None:
        """An engineer asked for a session; the request waits for the plant."""

    def request_closed(request: PendingRequest, outcome: str) -> None:
        """The request was answered: ``approved``, ``denied``, ``expired`` (nobody answered in
        time) or ``withdrawn`` (the engineer went away or asked again)."""

    def session_started(session: Session, how: str) -> None:
        """A session went live: ``approved`` (a request), ``code`` or ``unattended``."""

    def session_ended(session: Session, why: str) -> None:
        """A session ended (``why`` as the engineer is told)."""

    def code_created(code_id: str) -> None:
        """Plant staff created a session code (``code_id`` is its record id, never the code)."""

    def code_refused(why: str) -> None:
        """A session code was refused: ``wrong``, ``used``, ``expired`` or ``locked``."""

    def audit_failed(why: str) -> None:
        """An audit record could not be written."""


def _no_bytes(n: int) -> None:
    pass


@implementer(ITunnelEvents, IStreamEvents, IByteCounter, IAccessEvents, IRequestEvents)
class FanOut:
    """Calls every registered consumer of an event; one consumer's failure does not stop the rest.

    A consumer implements any of the interfaces above and hears only those events.
    """

    bytes_to_target: Callable[[int], None]
    bytes_from_target: Callable[[int], None]

    def __init__(self, *consumers: object) -> None:
        self._consumers: dict[type[Interface], list[Any]] = {
            ITunnelEvents: [],
            IStreamEvents: [],
            IByteCounter: [],
            IAccessEvents: [],
            IRequestEvents: [],
        }
        self._bind_byte_counters()
        for consumer in consumers:
            self.add(consumer)

    def add(self, consumer: object) -> None:
        """Register a consumer.  Add every consumer before the first stream opens: a stream keeps
        the byte counter it started with."""
        provided = [i for i in self._consumers if i.providedBy(consumer)]
        if not provided:
            raise TypeError(f"{consumer!r} provides none of the daemon's event interfaces")
        for interface in provided:
            self._consumers[interface].append(consumer)
        self._bind_byte_counters()

    def _each(self, interface: type[Interface], event: str, *args: object) -> None:
        for consumer in self._consumers[interface]:
            try:
                getattr(consumer, event)(*args)
            except Exception:
                log.failure("{consumer!r} failed on {event}", consumer=consumer, event=event)

    def _bind_byte_counters(self) -> None:
        counters = self._consumers[IByteCounter]
        if not counters:
            self.bytes_to_target = self.bytes_from_target = _no_bytes
        elif len(counters) == 1:
            # The hot path: the counter's own method, as if there were no fan-out.
            self.bytes_to_target = counters[0].bytes_to_target
            self.bytes_from_target = counters[0].bytes_from_target
        else:
            to_target = [c.bytes_to_target for c in counters]
            from_target = [c.bytes_from_target for c in counters]
            self.bytes_to_target = lambda n: _count(to_target, n)
            self.bytes_from_target = lambda n: _count(from_target, n)

    # ITunnelEvents
    def tunnel_up(self, why: str) -> None:
        self._each(ITunnelEvents, "tunnel_up", why)

    def tunnel_down(self, why: str) -> None:
        self._each(ITunnelEvents, "tunnel_down", why)

    def tunnel_failed(self, why: str) -> None:
        self._each(ITunnelEvents, "tunnel_failed", why)

    def tunnel_stopped(self, why: str) -> None:
        self._each(ITunnelEvents, "tunnel_stopped", why)

    def tunnel_rtt(self, seconds: float) -> None:
        self._each(ITunnelEvents, "tunnel_rtt", seconds)

    # IStreamEvents
    def stream_opened(self, connection: ConnectionRecord) -> None:
        self._each(IStreamEvents, "stream_opened", connection)

    def stream_closed(
        self, connection: ConnectionRecord, bytes_to_target: int, bytes_from_target: int, why: str
    ) -> None:
        self._each(
            IStreamEvents, "stream_closed", connection, bytes_to_target, bytes_from_target, why
        )

    def stream_refused(self, request: AccessRequest, refusal: Refusal, reason: str) -> None:
        self._each(IStreamEvents, "stream_refused", request, refusal, reason)

    # IAccessEvents
    def request_seen(self, connection: ConnectionRecord, exchange: Exchange) -> None:
        self._each(IRequestEvents, "request_seen", connection, exchange)

    def access_mode_changed(self, old: AccessMode, new: AccessMode) -> None:
        self._each(IAccessEvents, "access_mode_changed", old, new)

    def request_opened(self, request: PendingRequest) -> None:
        self._each(IAccessEvents, "request_opened", request)

    def request_closed(self, request: PendingRequest, outcome: str) -> None:
        self._each(IAccessEvents, "request_closed", request, outcome)

    def session_started(self, session: Session, how: str) -> None:
        self._each(IAccessEvents, "session_started", session, how)

    def session_ended(self, session: Session, why: str) -> None:
        self._each(IAccessEvents, "session_ended", session, why)

    def code_created(self, code_id: str) -> None:
        self._each(IAccessEvents, "code_created", code_id)

    def code_refused(self, why: str) -> None:
        self._each(IAccessEvents, "code_refused", why)

    def audit_failed(self, why: str) -> None:
        self._each(IAccessEvents, "audit_failed", why)


def _count(counters: list[Callable[[int], None]], n: int) -> None:
    for count in counters:
        try:
            count(n)
        except Exception:
            log.failure("byte counter {counter!r} failed", counter=count)


class Auditor:
    """Writes audit records to the trail; a write that fails is logged and reported.

    ``record`` is for what has happened anyway (a stream closed, a session ended): a failure must
    not undo it, so it is told (``audit_failed``: logged once per outage, counted every time) and
    swallowed.  ``require`` is for a decision that may only be taken once it is on record (a new
    session, a request, a code): it raises `AuditWriteError` after telling.
    """

    def __init__(self, trail: IAuditTrail, events: IAccessEvents) -> None:
        self.trail = trail
        self._events = events
        self._failing = False

    @property
    def healthy(self) -> bool:
        return bool(self.trail.healthy)

    def require(self, event: str, *, who: str | None, result: str = "ok", **details: Any) -> None:
        try:
            self.trail.record(event, who=who, result=result, **details)
        except AuditWriteError as e:
            if not self._failing:
                log.error(
                    "audit trail cannot be written ({why}): no new session until it can; "
                    "live sessions carry on",
                    why=str(e),
                )
            self._failing = True
            self._events.audit_failed(str(e))
            raise
        if self._failing:
            self._failing = False
            log.info("audit trail is written again")

    def record(self, event: str, *, who: str | None, result: str = "ok", **details: Any) -> bool:
        """Write it if possible; False if it could not be written (already told)."""
        try:
            self.require(event, who=who, result=result, **details)
        except AuditWriteError:
            return False
        return True


@implementer(IStreamEvents)
class StreamAudit:
    """The audit trail's consumer of stream events: ``stream.opened``, ``stream.closed`` (bytes
    each way, duration) and ``stream.refused`` (the refusal's token and reason)."""

    def __init__(self, auditor: Auditor, clock: IReactorTime) -> None:
        self._auditor = auditor
        self._clock = clock

    def stream_opened(self, connection: ConnectionRecord) -> None:
        self._auditor.record(
            "stream.opened",
            who=connection.engineer,
            connection=connection.id,
            session=connection.session,
            target=connection.target,
            address=connection.address,
        )

    def stream_closed(
        self, connection: ConnectionRecord, bytes_to_target: int, bytes_from_target: int, why: str
    ) -> None:
        self._auditor.record(
            "stream.closed",
            who=connection.engineer,
            result=why,
            connection=connection.id,
            session=connection.session,
            target=connection.target,
            bytes_to_target=bytes_to_target,
            bytes_from_target=bytes_from_target,
            seconds=round(max(0.0, self._clock.seconds() - connection.started), 3),
        )

    def stream_refused(self, request: AccessRequest, refusal: Refusal, reason: str) -> None:
        self._auditor.record(
            "stream.refused",
            who=request.engineer,
            result=refusal.token,
            connection=request.connection_id,
            session=request.session,
            target=request.target,
            reason=reason,
        )
