"""The tunnel's control requests: ordinary HTTP/2 requests from the relay under ``/v1/``.

A small route table: ``(method, path)`` -> a handler that returns an attrs answer body, sent back
as JSON.  Today there is ``GET /v1/info`` (``wire.EdgeInfo``); session requests will be ``POST``
routes, whose body is collected first (bounded by the route's ``max_body``) and handed to the
handler.  A handler may answer later (return a Deferred) or refuse (raise ``ControlRefused``).
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
from gateway.tunnel.stream import TunnelStream
from gateway.wire import CONTROL_PREFIX, ENGINEER_HEADER, INFO_PATH, EdgeInfo, Refusal

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


class ControlRoutes:
    """The route table, and answering a control stream from it."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._routes: dict[tuple[str, str], Route] = {}
        for route in routes:
            self.add(route)

    def add(self, route: Route) -> None:
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

    def _answer(self, stream: TunnelStream, route: Route, body: bytes) -> None:
        request = stream.request
        assert request is not None
        control = ControlRequest(request.method, request.path, request.headers, body)
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


def info_route(gateway_id: str, policy: AccessPolicy, connections: Callable[[], int]) -> Route:
    """``GET /v1/info``: the relay asks who this gateway is and what it offers."""

    def info(_: ControlRequest) -> EdgeInfo:
        return EdgeInfo(
            id=gateway_id,
            version=__version__,
            access_mode=policy.mode.value,
            targets=policy.target_names,
            connections=connections(),
        )

    return Route("GET", INFO_PATH, info)
