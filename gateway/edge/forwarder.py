"""Engineer streams: decide each ``CONNECT``, then splice it to its processor.

Each stream the relay opens is put to the ``AccessPolicy`` as an ``AccessRequest``; allowed ones
are connected to the processor's TCP address and spliced with backpressure.  A processor that
refuses or does not answer in time ends that one stream with a reason the engineer sees; everything
else carries on.  What happens is reported as ``IStreamEvents``; bytes are counted per chunk by an
``IByteCounter`` handed to the splice ends directly.

Every stream has one connection id, the relay's (``wire.CONNECTION_ID_HEADER``) when it sent a
well-formed one, else a local ``g-<n>``: the same id in the log lines, the status page and the
events.  The session a stream claims (``wire.SESSION_HEADER``) goes to the decision and, once
allowed, into its ``ConnectionRecord``; ending a session aborts its streams (``abort_session``).
The decision is taken again when the processor answers: a session that ended, or a mode switched
to ``disabled``, while the processor was being dialled opens nothing.

A stream to a ``kind = "http"`` target is spliced through `gateway.edge.httpstreams`' ends, which
follow its requests: each is decided under the session's permission as it is when the request
comes, refused ones are answered by the gateway, and every one is told to ``requests`` (the
request audit and metrics).  A ``tcp`` target is spliced byte for byte, as before.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import (
    ConnectError,
    ConnectionDone,
    ConnectionRefusedError,
    TimeoutError,
)
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import Target, TargetKind
from gateway.edge.access import AccessPolicy, AccessRequest, Allowed, Refused
from gateway.edge.events import (
    ConnectionRecord,
    FanOut,
    IByteCounter,
    IRequestEvents,
    IStreamEvents,
)
from gateway.edge.httpfollow import Exchange
from gateway.edge.httpstreams import FollowedStreamEnd, PeekedProcessorEnd, session_rules
from gateway.edge.limits import StreamLimiter
from gateway.net.endpoints import quiet_factory
from gateway.splice import HalfCloseGuard, SpliceEnd, splice
from gateway.tunnel.connection import IStreamHandler
from gateway.tunnel.stream import TunnelStream
from gateway.wire import CONNECTION_ID_HEADER, ENGINEER_HEADER, SESSION_HEADER, Refusal

log = Logger()

TargetConnector = Callable[[Target, SpliceEnd], Deferred[Any]]

_CONNECTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
"""What a connection id from the relay may look like: short, printable, no spaces."""
_CONNECTION_ID_KEY = CONNECTION_ID_HEADER.decode()
_ENGINEER_KEY = ENGINEER_HEADER.decode()
_SESSION_KEY = SESSION_HEADER.decode()


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


def connection_id_from(headers: Mapping[str, str]) -> str | None:
    """The relay's id for this connection, or None if it sent none or a malformed one."""
    value = headers.get(_CONNECTION_ID_KEY)
    if value is None or not _CONNECTION_ID.fullmatch(value):
        return None
    return value


@implementer(IStreamHandler)
class StreamForwarder:
    """The gateway's handler for ``CONNECT`` streams (``StreamDispatcher`` sends them here)."""

    def __init__(
        self,
        *,
        policy: AccessPolicy,
        connect: TargetConnector,
        clock: IReactorTime,
        events: IStreamEvents | None = None,
        counter: IByteCounter | None = None,
        half_close_timeout: float = 30.0,
        limits: StreamLimiter | None = None,
        requests: IRequestEvents | None = None,
    ) -> None:
        self.half_close_timeout = half_close_timeout
        self.requests = requests
        """Hears every request on an ``http`` target's streams (the request audit)."""
        self.limits = limits  # streams per target, engineer and tunnel (None: unlimited)
        self.policy = policy
        self._connect = connect
        self._clock = clock
        self.events: IStreamEvents = events if events is not None else FanOut()
        self.counter: IByteCounter = counter if counter is not None else FanOut()
        self.active: dict[str, ConnectionRecord] = {}
        self._ids = itertools.count(1)

    def stream_requested(self, stream: TunnelStream) -> None:
        request = stream.request
        assert request is not None
        if request.method != "CONNECT":
            stream.refuse(Refusal.BAD_REQUEST, f"method {request.method} is not supported")
            return
        asked = AccessRequest(
            target=request.authority,
            engineer=request.headers.get(_ENGINEER_KEY, "unknown engineer"),
            connection_id=self._connection_id(request.headers),
            at=self._clock.seconds(),
            session=request.headers.get(_SESSION_KEY) or None,
        )
        decision = self.policy.decide(asked)
        if not isinstance(decision, Allowed):
            self._refuse(stream, asked, decision.refusal, decision.reason)
            return
        target = decision.target
        slot = None if self.limits is None else self.limits.admit(asked, stream.connection)
        if isinstance(slot, Refused):
            self._refuse(stream, asked, slot.refusal, slot.reason)
            return
        # Looked up per stream, not per chunk: the counter's own method when there is one.
        processor_end = (
            PeekedProcessorEnd(on_bytes=self.counter.bytes_from_target)
            if target.kind is TargetKind.HTTP
            else SpliceEnd(on_bytes=self.counter.bytes_from_target)
        )
        d = self._connect(target, processor_end)
        if slot is not None:
            slot.hold(d, processor_end)  # given back when the processor connection is gone
        d.addCallbacks(
            lambda _: self._connected(stream, asked, decision, processor_end),
            lambda f: self._failed(stream, asked, target, f),
        )
        d.addErrback(lambda f: log.failure("forwarding stream to {t}", f, t=target.name))

    def _connection_id(self, headers: Mapping[str, str]) -> str:
        relays = connection_id_from(headers)
        if relays is not None and relays not in self.active:
            return relays
        return self._local_id()

    def _local_id(self) -> str:
        while (local := f"g-{next(self._ids)}") in self.active:
            pass
        return local

    def _connected(
        self, stream: TunnelStream, asked: AccessRequest, allowed: Allowed, processor_end: SpliceEnd
    ) -> None:
        if stream.finished:
            # The engineer gave up while we were connecting.
            processor_end.transport.loseConnection()
            return
        # Sessions end and modes change while a processor is dialled: decide again.
        again = self.policy.decide(asked)
        if not isinstance(again, Allowed):
            processor_end.transport.loseConnection()
            self._refuse(stream, asked, again.refusal, again.reason)
            return
        allowed = again
        target = allowed.target
        cid = asked.connection_id
        if cid in self.active:  # the relay sent one id for two streams at once: keep them apart
            cid = self._local_id()
        stream_end: SpliceEnd
        followed: FollowedStreamEnd | None = None
        if isinstance(processor_end, PeekedProcessorEnd):
            stream_end = followed = FollowedStreamEnd(
                session_rules(target, allowed.session, self.policy.sessions),
                processor_end,
                target=target,
                on_bytes=self.counter.bytes_to_target,
                seen=lambda exchange: self._request_seen(conn, exchange),
            )
        else:
            stream_end = SpliceEnd(on_bytes=self.counter.bytes_to_target)
        conn = ConnectionRecord(
            id=cid,
            target=target.name,
            address=str(target.address),
            engineer=asked.engineer,
            session=allowed.session,
            started=self._clock.seconds(),
            to_target=stream_end,
            from_target=processor_end,
            kind=target.kind.value,
            toward_engineer=stream,
        )
        self.active[conn.id] = conn
        self.events.stream_opened(conn)
        log.info(
            "stream {cid}: {engineer} connected to {target} ({address})",
            cid=conn.id,
            engineer=conn.engineer,
            target=conn.target,
            address=conn.address,
        )
        if followed is not None:
            follower = followed.follower

            def lost(reason: Failure) -> None:
                follower.finish()  # requests still waiting for an answer are recorded without
                self._closed(conn, reason)

            stream_end.on_lost = lost
        else:
            stream_end.on_lost = lambda reason: self._closed(conn, reason)
        stream.accept()
        stream.attach(stream_end)
        HalfCloseGuard(stream_end, processor_end, self._clock, self.half_close_timeout)
        splice(stream_end, processor_end)

    def _request_seen(self, conn: ConnectionRecord, exchange: Exchange) -> None:
        if self.requests is not None:
            self.requests.request_seen(conn, exchange)

    def _closed(self, conn: ConnectionRecord, reason: Failure) -> None:
        if self.active.get(conn.id) is not conn:
            return
        del self.active[conn.id]
        down, up = conn.bytes_to_target, conn.bytes_from_target
        self.events.stream_closed(conn, down, up, _why_closed(reason))
        log.info(
            "stream {cid} to {target} by {engineer} ended: {down} bytes to it, {up} back",
            cid=conn.id,
            target=conn.target,
            engineer=conn.engineer,
            down=down,
            up=up,
        )

    def _failed(
        self, stream: TunnelStream, asked: AccessRequest, target: Target, failure: Failure
    ) -> None:
        if failure.check(TimeoutError):
            refusal = Refusal.TARGET_TIMEOUT
            why = f"did not answer within {target.connect_timeout:g}s"
        elif isinstance(failure.value, ConnectError):
            refusal = Refusal.TARGET_UNREACHABLE
            why = connect_error_text(failure.value)
        else:
            refusal = Refusal.TARGET_UNREACHABLE
            why = str(failure.value) or type(failure.value).__name__
        reason = f"processor {target.name!r} at {target.address} is unreachable: {why}"
        self._refuse(stream, asked, refusal, reason)

    def _refuse(
        self, stream: TunnelStream, asked: AccessRequest, refusal: Refusal, reason: str
    ) -> None:
        self.events.stream_refused(asked, refusal, reason)
        log.info(
            "stream {cid}: {engineer} was refused {target!r} ({token})",
            cid=asked.connection_id,
            engineer=asked.engineer,
            target=asked.target,
            token=refusal.token,
        )
        if not stream.finished:
            stream.refuse(refusal, reason)

    def abort_all(self) -> None:
        for conn in list(self.active.values()):
            conn.to_target.transport.abortConnection()

    def abort_targets(self, names: frozenset[str]) -> list[str]:
        """Cut every connection to these targets (they left the allowlist, or moved to another
        address, in a reload); the ids cut."""
        cut = []
        for conn in list(self.active.values()):
            if conn.target in names:
                cut.append(conn.id)
                conn.to_target.transport.abortConnection()
        return cut

    def abort_session(self, session_id: str) -> None:
        """Cut every connection of a session that ended (the engineer sees the stream reset)."""
        for conn in list(self.active.values()):
            if conn.session == session_id:
                conn.to_target.transport.abortConnection()

    def narrow_to_view(self, session_id: str, targets: tuple[str, ...] = ()) -> list[str]:
        """The session became view-only (on ``targets`` only, if given): cut its connections
        there that view cannot hold, those to ``tcp`` targets and upgraded ones (a WebSocket
        where ``view_websocket`` is off); the ids cut.  Its other connections carry on, their
        next request decided under view."""
        cut = []
        for conn in list(self.active.values()):
            if conn.session != session_id or (targets and conn.target not in targets):
                continue
            end = conn.to_target
            if conn.kind == "tcp" or (isinstance(end, FollowedStreamEnd) and end.unfit_for_view):
                cut.append(conn.id)
                end.transport.abortConnection()
        return cut


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


def _why_closed(reason: Failure) -> str:
    if reason.check(ConnectionDone):
        return "closed"
    return str(reason.value) or type(reason.value).__name__
