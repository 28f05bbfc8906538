"""Streams the relay asks for: decide each one, then splice it to its processor.

This is the gateway's ``IStreamHandler`` for ``CONNECT`` streams (``StreamDispatcher`` sends the
control requests elsewhere).  They go through the ``AccessPolicy``;
allowed ones are connected to the processor's TCP address and spliced with backpressure.  A
processor that refuses or does not answer in time ends that one stream with a reason the engineer
sees; everything else carries on.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectError, ConnectionRefusedError, TimeoutError
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import Target
from gateway.edge.access import AccessPolicy, AccessRequest, Allowed
from gateway.net.endpoints import quiet_factory
from gateway.splice import HalfCloseGuard, SpliceEnd, splice
from gateway.tunnel.connection import IStreamHandler
from gateway.tunnel.stream import TunnelStream
from gateway.wire import Refusal

log = Logger()


@define
class ActiveConnection:
    """One engineer connection through this gateway, as the status page shows it."""

    id: int
    target: str
    engineer: str
    started: float
    to_target: SpliceEnd = field(repr=False)
    from_target: SpliceEnd = field(repr=False)

    @property
    def bytes_to_target(self) -> int:
        return self.to_target.bytes

    @property
    def bytes_from_target(self) -> int:
        return self.from_target.bytes


class StreamEvents:
    """What the forwarder reports; metrics implement it (kept apart so tests can count)."""

    def stream_opened(self, target: str) -> None:
        pass

    def stream_closed(self, target: str) -> None:
        pass

    def stream_refused(self, target: str, token: str) -> None:
        pass

    def bytes_to_target(self, n: int) -> None:
        pass

    def bytes_from_target(self, n: int) -> None:
        pass


TargetConnector = Callable[[Target, SpliceEnd], Deferred[Any]]


def tcp_connector(reactor: IReactorTCP) -> TargetConnector:
    """Connect to a processor by host name or address, bounded by its connect timeout."""

    def connect(target: Target, end: SpliceEnd) -> Deferred[Any]:
        address = target.address
        endpoint: IStreamClientEndpoint
        if address.is_ip:
            # No name to resolve: skip the resolver, whose getaddrinfo runs in a thread pool
            # and adds a thread round trip to every new stream's time to first byte.
            cls = TCP6ClientEndpoint if ":" in address.host else TCP4ClientEndpoint
            endpoint = cls(reactor, address.host, address.port, timeout=target.connect_timeout)
        else:
            endpoint = HostnameEndpoint(
                reactor, address.host, address.port, timeout=target.connect_timeout
            )
        return endpoint.connect(quiet_factory(lambda: end))

    return connect


@implementer(IStreamHandler)
class StreamForwarder:
    def __init__(
        self,
        *,
        policy: AccessPolicy,
        connect: TargetConnector,
        clock: IReactorTime,
        events: StreamEvents | None = None,
        half_close_timeout: float = 30.0,
    ) -> None:
        self.half_close_timeout = half_close_timeout
        self.policy = policy
        self._connect = connect
        self._clock = clock
        self.events = events or StreamEvents()
        self.active: dict[int, ActiveConnection] = {}
        self._ids = itertools.count(1)

    def stream_requested(self, stream: TunnelStream) -> None:
        request = stream.request
        assert request is not None
        if request.method != "CONNECT":
            stream.refuse(Refusal.BAD_REQUEST, f"method {request.method} is not supported")
            return
        engineer = request.headers.get("engineer", "unknown engineer")
        asked = AccessRequest(
            target=request.authority,
            engineer=engineer,
            connection_id=str(stream.stream_id),
            at=self._clock.seconds(),
        )
        decision = self.policy.decide(asked)
        if not isinstance(decision, Allowed):
            self.events.stream_refused(request.authority, decision.refusal.token)
            stream.refuse(decision.refusal, decision.reason)
            return
        target = decision.target
        processor_end = SpliceEnd(on_bytes=self.events.bytes_from_target)
        d = self._connect(target, processor_end)
        d.addCallbacks(
            lambda _: self._connected(stream, target, engineer, processor_end),
            lambda f: self._failed(stream, target, f),
        )
        d.addErrback(lambda f: log.failure("forwarding stream to {t}", f, t=target.name))

    def _connected(
        self, stream: TunnelStream, target: Target, engineer: str, processor_end: SpliceEnd
    ) -> None:
        if stream.finished:
            # The engineer gave up while we were connecting.
            processor_end.transport.loseConnection()
            return
        stream_end = SpliceEnd(on_bytes=self.events.bytes_to_target)
        conn = ActiveConnection(
            id=next(self._ids),
            target=target.name,
            engineer=engineer,
            started=self._clock.seconds(),
            to_target=stream_end,
            from_target=processor_end,
        )
        self.active[conn.id] = conn
        self.events.stream_opened(target.name)
        log.info(
            "stream {sid}: {engineer} connected to {target} ({address})",
            sid=stream.stream_id,
            engineer=engineer,
            target=target.name,
            address=str(target.address),
        )
        stream_end.on_lost = lambda reason: self._closed(conn, reason)
        stream.accept()
        stream.attach(stream_end)
        HalfCloseGuard(stream_end, processor_end, self._clock, self.half_close_timeout)
        splice(stream_end, processor_end)

    def _closed(self, conn: ActiveConnection, reason: Failure) -> None:
        if self.active.pop(conn.id, None) is None:
            return
        self.events.stream_closed(conn.target)
        log.info(
            "stream to {target} by {engineer} ended: {down} bytes to it, {up} back",
            target=conn.target,
            engineer=conn.engineer,
            down=conn.bytes_to_target,
            up=conn.bytes_from_target,
        )

    def _failed(self, stream: TunnelStream, target: Target, failure: Failure) -> None:
        if failure.check(TimeoutError):
            refusal = Refusal.TARGET_TIMEOUT
            why = f"did not answer within {target.connect_timeout:g}s"
        elif isinstance(failure.value, ConnectError):
            refusal = Refusal.TARGET_UNREACHABLE
            why = connect_error_text(failure.value)
        else:
            refusal = Refusal.TARGET_UNREACHABLE
            why = str(failure.value) or type(failure.value).__name__
        self.events.stream_refused(target.name, refusal.token)
        if not stream.finished:
            stream.refuse(
                refusal, f"processor {target.name!r} at {target.address} is unreachable: {why}"
            )

    def abort_all(self) -> None:
        for conn in list(self.active.values()):
            conn.to_target.transport.abortConnection()


_REFUSED = "connection refused (is the processor switched on and its web server running?)"
_HINTS = {
    errno.ECONNREFUSED: _REFUSED,
    errno.EHOSTUNREACH: "no route to host (is the processor switched on and on this network?)",
    errno.ENETUNREACH: "network is unreachable (is the gateway's plant network port connected?)",
    errno.ETIMEDOUT: "connection timed out (is the processor switched on and on this network?)",
}


def connect_error_text(error: ConnectError) -> str:
    """Why a processor could not be reached, in words: Twisted's ConnectError carries a bare errno
    (``osError``) and the OS's text, and ``str()`` of it reads "An error occurred ...: 113: ..."."""
    if isinstance(error, ConnectionRefusedError):
        return _REFUSED
    number = error.osError
    if isinstance(number, int) and number > 0:
        if number in _HINTS:
            return _HINTS[number]
        return _sentence(os.strerror(number))
    text = error.args[0] if error.args and isinstance(error.args[0], str) else ""
    if not text and number:
        text = str(number)
    if not text:
        text = error.MESSAGE
    if "refused" in text.lower():
        return _REFUSED
    return _sentence(text)


def _sentence(text: str) -> str:
    """``Host is unreachable.`` -> ``host is unreachable``: to follow "is unreachable: "."""
    text = text.strip().rstrip(".")
    return text[:1].lower() + text[1:] if text[1:2].islower() else text
