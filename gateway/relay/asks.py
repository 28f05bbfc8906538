"""Session asks passed through: an engineer's ``POST SESSION_PATH`` to the gateway, its events back.

The relay never creates, approves or ends a session: the gateway alone does (BRIEF section 3, "The
gateway decides").  An ask goes the way a ``CONNECT`` goes (the same path steps, the same dial and
splice, a refusal from the gateway passed back unchanged) with three differences:

* The ask's body is bounded (`MAX_ASK_BODY`): it is one small JSON object (`wire.SessionAsk`).
  A longer one is refused with ``bad-request`` before its end reaches the gateway, which answers
  only once the body has ended.
* The relay audits it: who asked which gateway and how (``session.requested``, written before the
  ask's end goes on, so an ask the relay cannot record never reaches the plant), and what came of
  it as the gateway's events go by (``session.started``, ``session.denied``, ``session.ended``).
  The events are read from a copy; the bytes go through as they came.  A session code is never
  recorded, only that one was used.
* The relay's ``200`` names the engineer it authenticated (``engineer``), so that the client can
  tell its user who is waiting for the plant.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.audit import AuditWriteError, IAuditTrail
from gateway.relay.credentials import Engineer
from gateway.relay.dialer import IGatewayDialer
from gateway.relay.metrics import RelayMetrics
from gateway.relay.path import Admitted, EngineerRequest
from gateway.relay.refusals import Refused
from gateway.splice import SpliceEnd, splice
from gateway.tunnel.stream import StreamResponse, TunnelStream
from gateway.wire import (
    ENGINEER_HEADER,
    NDJSON,
    Refusal,
    SessionAsk,
    SessionEvent,
    SessionEventKind,
    StreamRefused,
    clean_reason,
)

log = Logger()

MAX_ASK_BODY = 16 * 1024
"""Bytes a session ask's body may have: a reason of a few hundred characters fits many times."""
MAX_EVENT_LINE = 64 * 1024
"""A session event line longer than this is not read for the audit (it is still passed on)."""

PassBack = Callable[[TunnelStream, str, Failure], None]
"""How the engineer stream handler passes a gateway's refusal (or its absence) back."""


def ask_details(body: bytes) -> dict[str, Any]:
    """What the audit records of an ask's body: how the engineer asks, never a code's digits."""
    try:
        data = json.loads(body)
        known = {f.name for f in attrs.fields(SessionAsk)}
        ask = (
            SessionAsk(**{k: v for k, v in data.items() if k in known})
            if isinstance(data, dict)
            else None
        )
    except (ValueError, TypeError):
        ask = None
    if ask is None:
        return {"way": "unreadable"}
    details: dict[str, Any] = {}
    if isinstance(ask.targets, list) and ask.targets:
        details["targets"] = [str(t) for t in ask.targets]
    if ask.resume is not None:
        return {"way": "resume", "session": str(ask.resume), **details}
    if ask.code is not None:
        return {"way": "code", **details}
    if ask.reason is not None:
        return {"way": "reason", "reason": str(ask.reason)[:1000], **details}
    return {"way": "unattended", **details}


class SessionAsks:
    """Passes session asks through to gateways and audits what the gateways make of them."""

    def __init__(
        self,
        *,
        dialer: IGatewayDialer,
        metrics: RelayMetrics,
        audit: IAuditTrail,
        clock: IReactorTime,
    ) -> None:
        self.dialer = dialer
        self.metrics = metrics
        self.audit = audit
        self.clock = clock

    def relay(
        self, stream: TunnelStream, admitted: Admitted, started: float, pass_back: PassBack
    ) -> None:
        """Open the ask on the gateway and splice it to the engineer's stream."""
        request, engineer = admitted.request, admitted.engineer
        try:
            upstream = self.dialer.ask_session(request.gateway_id, engineer, request.connection_id)
        except Refused as refused:
            self.metrics.stream_result(refused.refusal.token)
            stream.refuse(refused.refusal, refused.reason)
            return
        log.info(
            "{engineer} asks gateway {gw} for a session (connection {cid})",
            engineer=engineer.name,
            gw=request.gateway_id,
            cid=request.connection_id,
        )
        ask = _Ask(self, stream, request, engineer, started)
        engineer_end, gateway_end = _AskBody(ask), _Events(ask)
        stream.attach(engineer_end)
        upstream.attach(gateway_end)
        splice(engineer_end, gateway_end)
        upstream.response.addCallbacks(
            ask.answered, lambda f: ask.not_answered(f, pass_back)
        ).addErrback(lambda f: log.failure("relaying a session ask", f))

    def record(self, event: str, who: str, *, result: str = "ok", **details: Any) -> bool:
        """One audit record; False (logged) if the trail cannot take it."""
        try:
            self.audit.record(event, who=who, result=result, **details)
        except AuditWriteError as e:
            log.error("audit: cannot record {event}: {error}", event=event, error=str(e))
            return False
        return True


class _Ask:
    """One session ask on its way: the engineer's stream and what the gateway said so far."""

    def __init__(
        self,
        asks: SessionAsks,
        stream: TunnelStream,
        request: EngineerRequest,
        engineer: Engineer,
        started: float,
    ) -> None:
        self.asks = asks
        self.stream = stream
        self.request = request
        self.engineer = engineer
        self.started = started
        self.refused = False
        self.live: str | None = None
        """The session id while the gateway says the session is live (counted as active)."""
        self.resuming = False

    @property
    def where(self) -> dict[str, str]:
        return {"gateway": self.request.gateway_id, "connection": self.request.connection_id}

    # -- engineer -> gateway ----------------------------------------------------------------------

    def too_big(self) -> None:
        self.refuse(Refusal.BAD_REQUEST, f"a session request is at most {MAX_ASK_BODY} bytes")

    def asked(self, body: bytes) -> bool:
        """The ask's body is complete: record it; False if it must not go on (refused)."""
        details = ask_details(body)
        self.resuming = details["way"] == "resume"
        if not self.asks.record("session.requested", self.engineer.name, **self.where, **details):
            self.refuse(
                Refusal.AUDIT_UNAVAILABLE,
                "the relay cannot write its audit trail; no new sessions until it can",
            )
            return False
        return True

    def refuse(self, refusal: Refusal, reason: str) -> None:
        """The relay's own refusal: the engineer is told; the splice cancels the gateway's side."""
        self.refused = True
        self.asks.metrics.stream_result(refusal.token)
        self.stream.refuse(refusal, reason)

    # -- gateway -> engineer ----------------------------------------------------------------------

    def answered(self, response: StreamResponse) -> None:
        asks = self.asks
        asks.metrics.stream_open_seconds.observe(asks.clock.seconds() - self.started)
        if self.stream.finished:
            return
        asks.metrics.stream_result("session")
        content_type = response.headers.get("content-type", NDJSON.decode())
        self.stream.accept(
            [
                (b"content-type", content_type.encode("ascii", "replace")),
                (ENGINEER_HEADER, clean_reason(self.engineer.name)),
            ]
        )

    def not_answered(self, failure: Failure, pass_back: PassBack) -> None:
        if self.refused:
            return  # our own refusal cancelled the gateway's side: the engineer has been told
        if failure.check(StreamRefused):
            refused = failure.value
            assert isinstance(refused, StreamRefused)
            self.asks.record(
                "session.denied",
                self.engineer.name,
                result="refused",
                refusal=refused.token,
                reason=refused.reason,
                **self.where,
            )
        pass_back(self.stream, self.request.gateway_id, failure)

    def event(self, event: SessionEvent) -> None:
        asks, who = self.asks, self.engineer.name
        if event.event is SessionEventKind.APPROVED:
            fields = {
                k: v
                for k, v in attrs.asdict(event, recurse=False).items()
                if k in ("session", "targets", "permission", "expires", "approved_by") and v
            }
            asks.record("session.started", who, resumed=self.resuming, **fields, **self.where)
            if self.live is None:
                asks.metrics.sessions_active.inc()
            self.live = event.session or ""
            log.info(
                "gateway {gw} let {engineer} into session {session} (connection {cid})",
                gw=self.request.gateway_id,
                engineer=who,
                session=event.session,
                cid=self.request.connection_id,
            )
        elif event.event is SessionEventKind.DENIED:
            asks.record(
                "session.denied", who, result="denied", reason=event.reason or "", **self.where
            )
        elif event.event is SessionEventKind.ENDED:
            asks.record(
                "session.ended",
                who,
                session=event.session or self.live or "",
                why=event.why or "",
                **self.where,
            )
            self.gone()

    def gone(self) -> None:
        """The session is over, or its stream is (the gateway's grace period runs)."""
        if self.live is not None:
            self.live = None
            self.asks.metrics.sessions_active.dec()


class _AskBody(SpliceEnd):
    """The engineer's side: the ask's bytes go on at once; its end once the ask is recorded."""

    def __init__(self, ask: _Ask) -> None:
        super().__init__(on_bytes=ask.asks.metrics.to_gateway.inc)
        self.ask = ask
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.ask.refused:
            return
        self.size += len(data)
        if self.size > MAX_ASK_BODY:
            self.parts.clear()
            self.ask.too_big()
            return
        self.parts.append(data)
        super().dataReceived(data)

    def readConnectionLost(self) -> None:
        if self.ask.refused:
            return
        body, self.parts = b"".join(self.parts), []
        if self.ask.asked(body):
            super().readConnectionLost()


class _Events(SpliceEnd):
    """The gateway's side: its event lines go to the engineer, and a copy to the audit."""

    def __init__(self, ask: _Ask) -> None:
        super().__init__(on_bytes=ask.asks.metrics.from_gateway.inc)
        self.ask = ask
        self.partial = b""
        self.reading = True

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if not self.reading:
            return
        *lines, self.partial = (self.partial + data).split(b"\n")
        if len(self.partial) > MAX_EVENT_LINE:
            log.warn(
                "gateway {gw}: a session event line over {n} bytes; not read for the audit",
                gw=self.ask.request.gateway_id,
                n=MAX_EVENT_LINE,
            )
            self.reading, self.partial = False, b""
        for line in lines:
            if not line.strip():
                continue
            try:
                event = SessionEvent.from_line(line)
            except (ValueError, TypeError):
                log.warn(
                    "gateway {gw}: a session event that is not one; passed on, not audited",
                    gw=self.ask.request.gateway_id,
                )
                continue
            self.ask.event(event)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        super().connectionLost(reason)
        self.ask.gone()
