"""The tunnel's control requests: ordinary HTTP/2 requests from the relay under ``/v1/``.

A small route table: ``(method, path)`` -> a handler that returns an attrs answer body, sent back
as JSON: ``GET /v1/info`` (``wire.EdgeInfo``) and ``GET /v1/sessions`` (``wire.SessionsSummary``).
A ``POST`` route's body is collected first (bounded by the route's ``max_body``, until the request
ends) and handed to the handler.  A handler may answer later (return a Deferred) or refuse (raise
``ControlRefused``).

A `StreamRoute` answers with a long-lived stream instead: its handler gets the request and the
stream itself, answers it (or raises ``ControlRefused`` before answering) and may attach a
protocol to hear when the stream goes.  ``POST /v1/session`` is one: JSON lines of
``wire.SessionEvent`` for as long as the engineer's request waits and their session lives.
The decision stays with the gateway: a control handler checks what it is asked like a stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import __version__
from gateway.edge.access import AccessPolicy
from gateway.edge.consent import EngineerRefused, IConsent, IEngineerSessions, ISessionChannel
from gateway.edge.status import request_report, session_report
from gateway.tunnel.stream import TunnelStream
from gateway.wire import (
    CONTROL_PREFIX,
    ENGINEER_HEADER,
    INFO_PATH,
    NDJSON,
    SESSION_PATH,
    SESSIONS_PATH,
    EdgeInfo,
    GroupedEdgeInfo,
    Refusal,
    SessionAsk,
    SessionEvent,
    SessionsSummary,
)

log = Logger()

DEFAULT_MAX_BODY = 64 * 1024
"""A control request's body is a small JSON object (a session request with its reason)."""


@frozen
class ControlRequest:
    """What a control handler sees: the request line, its headers and (for bodies) the body."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes = b""

    @property
    def engineer(self) -> str | None:
        """The engineer identity the relay authenticated, if the relay named one."""
        return self.headers.get(ENGINEER_HEADER.decode())


class ControlRefused(Exception):
    """Raised by a handler: answer with this refusal instead of a body."""

    def __init__(self, refusal: Refusal, reason: str) -> None:
        super().__init__(reason)
        self.refusal = refusal
        self.reason = reason


Handler = Callable[[ControlRequest], Any]
"""Returns an attrs instance (the answer body) or a Deferred firing with one."""


@frozen
class Route:
    method: str
    path: str
    handler: Handler
    max_body: int | None = None
    """None: answer at once, without reading a body; a number: collect a body of at most that
    many bytes (until the request ends), then answer."""


StreamHandler = Callable[[ControlRequest, TunnelStream], None]
"""Answers the stream itself (``respond``, ``write``, ``loseConnection``), or raises
``ControlRefused`` before answering."""


@frozen
class StreamRoute:
    """A control request whose answer is a long-lived stream (see the module docstring)."""

    method: str
    path: str
    handler: StreamHandler
    max_body: int = DEFAULT_MAX_BODY
    """The request's body (collected until the request ends) is at most this many bytes."""


class ControlRoutes:
    """The route table, and answering a control stream from it."""

    def __init__(self, routes: Iterable[Route | StreamRoute] = ()) -> None:
        self._routes: dict[tuple[str, str], Route | StreamRoute] = {}
        for route in routes:
            self.add(route)

    def add(self, route: Route | StreamRoute) -> None:
        key = (route.method, route.path)
        if key in self._routes:
            raise ValueError(f"two control routes for {route.method} {route.path}")
        self._routes[key] = route

    def handles(self, method: str, path: str) -> bool:
        """Is this a control request (a method some route answers, under ``/v1/``)?"""
        return path.startswith(CONTROL_PREFIX) and any(m == method for m, _ in self._routes)

    def handle(self, stream: TunnelStream) -> None:
        request = stream.request
        assert request is not None
        route = self._routes.get((request.method, request.path))
        if route is None:
            stream.refuse(Refusal.BAD_REQUEST, f"unknown control path {request.path}")
            return
        if route.max_body is None:
            self._answer(stream, route, b"")
        else:
            reader = _BodyReader(stream, route.max_body, lambda b: self._answer(stream, route, b))
            stream.attach(reader)

    def _answer(self, stream: TunnelStream, route: Route | StreamRoute, body: bytes) -> None:
        request = stream.request
        assert request is not None
        control = ControlRequest(request.method, request.path, request.headers, body)
        if isinstance(route, StreamRoute):
            try:
                route.handler(control, stream)
            except Exception:
                _failed(stream, control, Failure())
            return
        d: Deferred[Any] = maybeDeferred(route.handler, control)
        d.addCallback(lambda answer: _send(stream, answer))
        d.addErrback(lambda f: _failed(stream, control, f))


def _send(stream: TunnelStream, answer: Any) -> None:
    if stream.finished:
        return  # the relay gave up waiting
    stream.respond(200, [(b"content-type", b"application/json")])
    stream.write(json.dumps(attrs.asdict(answer)).encode())
    stream.loseWriteConnection()


def _failed(stream: TunnelStream, request: ControlRequest, failure: Failure) -> None:
    if failure.check(ControlRefused):
        refused: ControlRefused = failure.value  # type: ignore[assignment]
        stream.refuse(refused.refusal, refused.reason)
        return
    log.failure(
        "control request {method} {path} failed", failure, method=request.method, path=request.path
    )
    stream.abortConnection()


@implementer(IHalfCloseableProtocol)
class _BodyReader(Protocol):
    """Collects a request body up to ``limit`` bytes; refuses the request past that."""

    def __init__(self, stream: TunnelStream, limit: int, done: Callable[[bytes], None]) -> None:
        self._stream, self._limit, self._done = stream, limit, done
        self._parts: list[bytes] = []
        self._size = 0
        self._over = False

    def dataReceived(self, data: bytes) -> None:
        if self._over:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._over = True
            self._parts = []
            self._stream.refuse(
                Refusal.BAD_REQUEST, f"control request body over {self._limit} bytes"
            )
            return
        self._parts.append(data)

    def readConnectionLost(self) -> None:
        if not self._over:
            self._done(b"".join(self._parts))

    def writeConnectionLost(self) -> None:
        pass


def info_route(
    gateway_id: str,
    policy: AccessPolicy,
    connections: Callable[[], int],
    groups: dict[str, dict[str, str]] | None = None,
) -> Route:
    """``GET /v1/info``: the relay asks who this gateway is and what it offers (``groups``:
    its target groups, ``{group: {"port": member}}``)."""

    def info(_: ControlRequest) -> EdgeInfo:
        fields: dict[str, Any] = {
            "id": gateway_id,
            "version": __version__,
            "access_mode": policy.mode.value,
            "targets": policy.target_names,
            "connections": connections(),
        }
        if groups:
            return GroupedEdgeInfo(**fields, groups=dict(groups))
        return EdgeInfo(**fields)

    return Route("GET", INFO_PATH, info)


# -- sessions -----------------------------------------------------------------------------------


def parse_ask(body: bytes) -> SessionAsk:
    """The body of ``POST /v1/session``; an empty body is a bare ask (unattended mode)."""
    bad = "a session request is a JSON object with reason, code, resume or targets"
    try:
        data = json.loads(body) if body.strip() else {}
    except ValueError:
        raise ControlRefused(Refusal.BAD_REQUEST, bad) from None
    if not isinstance(data, dict):
        raise ControlRefused(Refusal.BAD_REQUEST, bad)
    texts: dict[str, str | None] = {}
    for key in ("reason", "code", "resume"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ControlRefused(Refusal.BAD_REQUEST, f"{key} must be a string")
        texts[key] = value
    targets = data.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ControlRefused(Refusal.BAD_REQUEST, "targets must be a list of target names")
    return SessionAsk(
        reason=texts["reason"], code=texts["code"], resume=texts["resume"], targets=targets
    )


@implementer(ISessionChannel)
class StreamChannel:
    """A session stream as the consent service writes to it: 200 with JSON lines, then the end."""

    def __init__(self, stream: TunnelStream) -> None:
        self._stream = stream
        self._answered = False
        self._closed = False

    def send(self, event: SessionEvent) -> None:
        if self._closed or self._stream.finished:
            return
        if not self._answered:
            self._answered = True
            self._stream.respond(200, [(b"content-type", NDJSON), (b"cache-control", b"no-store")])
        self._stream.write(event.to_line())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stream.loseConnection()


@implementer(IHalfCloseableProtocol)
class _Presence(Protocol):
    """Attached to a session stream once answered: tells when it goes (the engineer left)."""

    def __init__(self, gone: Callable[[], None]) -> None:
        self._gone: Callable[[], None] | None = gone

    def dataReceived(self, data: bytes) -> None:
        pass  # the request's body has all arrived; nothing more is expected

    def readConnectionLost(self) -> None:
        pass

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        gone, self._gone = self._gone, None
        if gone is not None:
            gone()


def session_route(sessions: IEngineerSessions) -> StreamRoute:
    """``POST /v1/session``: an engineer asks for a session, uses a code, or resumes one."""

    def handle(request: ControlRequest, stream: TunnelStream) -> None:
        engineer = request.engineer
        if not engineer:
            raise ControlRefused(Refusal.BAD_REQUEST, "the relay named no engineer")
        ask = parse_ask(request.body)
        channel = StreamChannel(stream)
        try:
            sessions.ask(engineer, ask, channel)
        except EngineerRefused as e:
            raise ControlRefused(e.refusal, e.reason) from None
        if stream.finished:
            sessions.channel_lost(channel)
            return
        stream.attach(_Presence(lambda: sessions.channel_lost(channel)))

    return StreamRoute("POST", SESSION_PATH, handle)


def sessions_route(gateway_id: str, consent: IConsent) -> Route:
    """``GET /v1/sessions``: the access mode, pending requests and live sessions, for the
    relay's support desk view (``gateway relay sessions``)."""

    def summary(_: ControlRequest) -> SessionsSummary:
        return SessionsSummary(
            id=gateway_id,
            access_mode=consent.mode().value,
            requests=[attrs.asdict(request_report(r)) for r in consent.requests()],
            sessions=[attrs.asdict(session_report(s)) for s in consent.sessions()],
        )

    return Route("GET", SESSIONS_PATH, summary)
