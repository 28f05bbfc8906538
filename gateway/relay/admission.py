"""Who may hold a connection to the relay, for how long, and with how many streams.

Anyone who reaches the engineer port can open connections; a token is only asked for on a
stream.  Without limits, a few hundred idle TLS+HTTP/2 connections from one host hold the relay's
descriptors until no gateway can connect (issue 14).  So each listener has a `ConnectionGuard`:

* at accept time, before any TLS work, a connection over its source address's limits (all its
  connections; its unauthenticated ones) or over the listener's limit of unauthenticated
  connections is closed at once, counted (``relay_connections_refused_total{reason}``) and logged
  (rate-limited);
* an engineer connection must present a valid token on a stream within ``auth_timeout`` seconds
  of connecting, or it is closed (``no valid engineer token``); a gateway connection counts as
  unauthenticated until its certificate names a gateway id the relay takes in;
* an authenticated engineer connection without a stream for ``idle_timeout`` seconds is closed
  with a GOAWAY saying ``idle`` (the client dials again when it needs to).

`StreamLimits` bounds the streams of one engineer connection and of one gateway tunnel; over
them, a stream is refused with ``limit-reached`` and a reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.interfaces import IStreamServerEndpoint as _IStreamServerEndpoint
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from zope.interface import implementer

from gateway.config import is_target_name
from gateway.logsafe import RateLimitedLog, peer_address
from gateway.relay.metrics import RelayMetrics
from gateway.relay.refusals import Refused
from gateway.tls import FastTLSFactory
from gateway.tunnel.connection import NullObserver, TunnelConnection
from gateway.tunnel.stream import TunnelStream
from gateway.wire import Refusal

log = Logger()

# Why a connection was refused at accept time (``relay_connections_refused_total{reason}``).
PER_SOURCE = "per-source"
UNAUTHENTICATED_PER_SOURCE = "unauthenticated-per-source"
UNAUTHENTICATED = "unauthenticated"
# Why the relay closed a connection it had accepted (``relay_connections_closed_total{reason}``).
AUTH_TIMEOUT = "auth-timeout"
IDLE = "idle"


@frozen
class ConnectionLimits:
    """One listener's limits; None switches a limit off."""

    max_per_source: int | None = None
    """Connections from one address, authenticated or not."""
    max_unauthenticated_per_source: int | None = None
    """Connections from one address that have not authenticated yet."""
    max_unauthenticated: int | None = None
    """Connections from all addresses together that have not authenticated yet."""
    auth_timeout: float | None = None
    """Seconds from accept to authentication before the connection is closed."""
    idle_timeout: float | None = None
    """Seconds an authenticated connection may carry no stream before it is closed."""


class _Admitted:
    """One accepted connection: where from, whether it authenticated, its timers."""

    __slots__ = (
        "authenticated",
        "connection",
        "deadline",
        "host",
        "idle_check",
        "idle_since",
        "peer",
    )

    def __init__(self, connection: TunnelConnection, host: str, peer: str) -> None:
        self.connection = connection
        self.host = host
        self.peer = peer
        self.authenticated = False
        self.deadline: IDelayedCall | None = None
        self.idle_check: IDelayedCall | None = None
        self.idle_since: float | None = None


class ConnectionGuard:
    """Per-source accounting and the deadlines of one listener's connections."""

    def __init__(
        self,
        listener: str,
        limits: ConnectionLimits,
        *,
        clock: IReactorTime,
        metrics: RelayMetrics,
        lines: RateLimitedLog,
    ) -> None:
        self.listener = listener
        self.limits = limits
        self.clock = clock
        self.metrics = metrics
        self.lines = lines
        self._total: Counter[str] = Counter()
        self._unauthenticated: Counter[str] = Counter()
        self.unauthenticated = 0
        self._connections: dict[TunnelConnection, _Admitted] = {}
        self._open = {
            state: metrics.connections_open.labels(listener=listener, state=state)
            for state in ("authenticated", "unauthenticated")
        }

    # -- accept time -------------------------------------------------------------------------------

    def refusal(self, host: str) -> str | None:
        """Why a new connection from ``host`` must be refused now, or None."""
        limits = self.limits
        if limits.max_per_source is not None and self._total[host] >= limits.max_per_source:
            return PER_SOURCE
        if (
            limits.max_unauthenticated_per_source is not None
            and self._unauthenticated[host] >= limits.max_unauthenticated_per_source
        ):
            return UNAUTHENTICATED_PER_SOURCE
        if limits.max_unauthenticated is not None and (
            self.unauthenticated >= limits.max_unauthenticated
        ):
            return UNAUTHENTICATED
        return None

    def refused(self, address: Any, reason: str) -> None:
        self.metrics.connections_refused.labels(listener=self.listener, reason=reason).inc()
        self.lines.warn(
            log,
            "{listener} connection from {peer} refused at once: {why}",
            listener=self.listener,
            peer=peer_address(address),
            why=_REFUSAL_TEXT[reason],
        )

    def register(self, connection: TunnelConnection, address: Any) -> None:
        """Count an accepted connection as unauthenticated and start its deadline."""
        host = str(getattr(address, "host", address))
        admitted = _Admitted(connection, host, peer_address(address))
        self._connections[connection] = admitted
        self._total[host] += 1
        self._unauthenticated[host] += 1
        self.unauthenticated += 1
        self._open["unauthenticated"].inc()
        if self.limits.auth_timeout is not None:
            admitted.deadline = self.clock.callLater(
                self.limits.auth_timeout, self._deadline_passed, admitted
            )
        connection.when_lost().addCallback(lambda _: self._lost(admitted))

    # -- later -------------------------------------------------------------------------------------

    def authenticated(self, connection: TunnelConnection) -> None:
        """The connection proved who it is: no auth deadline now, the idle clock instead.

        A connection the guard did not accept (built directly, in tests) is ignored.
        """
        admitted = self._connections.get(connection)
        if admitted is None or admitted.authenticated:
            return
        admitted.authenticated = True
        self._unauthenticated[admitted.host] -= 1
        if not self._unauthenticated[admitted.host]:
            del self._unauthenticated[admitted.host]
        self.unauthenticated -= 1
        self._open["unauthenticated"].dec()
        self._open["authenticated"].inc()
        _cancel(admitted.deadline)
        admitted.deadline = None
        if self.limits.idle_timeout is not None:
            admitted.idle_check = self.clock.callLater(self._idle_tick, self._check_idle, admitted)

    def stream_arrived(self, connection: TunnelConnection) -> None:
        """A stream opened on ``connection``: it is not idle."""
        admitted = self._connections.get(connection)
        if admitted is not None:
            admitted.idle_since = None

    def peer(self, connection: TunnelConnection) -> str | None:
        admitted = self._connections.get(connection)
        return None if admitted is None else admitted.peer

    @property
    def _idle_tick(self) -> float:
        """How often an authenticated connection is looked at: a tenth of the idle timeout."""
        assert self.limits.idle_timeout is not None
        return max(0.5, self.limits.idle_timeout / 10)

    def _deadline_passed(self, admitted: _Admitted) -> None:
        admitted.deadline = None
        if admitted.authenticated or admitted.connection.closed:
            return
        timeout = self.limits.auth_timeout
        self.metrics.connections_closed.labels(listener=self.listener, reason=AUTH_TIMEOUT).inc()
        self.lines.info(
            log,
            "{listener} connection from {peer}: not authenticated within {t:g} s; closing",
            listener=self.listener,
            peer=admitted.peer,
            t=timeout,
        )
        _hang_up(admitted.connection, f"not authenticated within {timeout:g} s of connecting")

    def _check_idle(self, admitted: _Admitted) -> None:
        admitted.idle_check = None
        connection = admitted.connection
        if connection.closed:
            return
        timeout = self.limits.idle_timeout
        assert timeout is not None
        now = self.clock.seconds()
        if connection.streams:
            admitted.idle_since = None
        elif admitted.idle_since is None:
            admitted.idle_since = now
        elif now - admitted.idle_since >= timeout:
            self.metrics.connections_closed.labels(listener=self.listener, reason=IDLE).inc()
            self.lines.info(
                log,
                "{listener} connection from {peer}: no stream for {t:g} s; closing (idle)",
                listener=self.listener,
                peer=admitted.peer,
                t=timeout,
            )
            connection.close(why=IDLE)
            return
        admitted.idle_check = self.clock.callLater(self._idle_tick, self._check_idle, admitted)

    def _lost(self, admitted: _Admitted) -> None:
        self._connections.pop(admitted.connection, None)
        _cancel(admitted.deadline)
        _cancel(admitted.idle_check)
        admitted.deadline = admitted.idle_check = None
        host = admitted.host
        self._total[host] -= 1
        if not self._total[host]:
            del self._total[host]
        if admitted.authenticated:
            self._open["authenticated"].dec()
        else:
            self._open["unauthenticated"].dec()
            self.unauthenticated -= 1
            self._unauthenticated[host] -= 1
            if not self._unauthenticated[host]:
                del self._unauthenticated[host]

    def connections_from(self, host: str) -> tuple[int, int]:
        """(all, unauthenticated) connections from ``host`` now."""
        return self._total[host], self._unauthenticated[host]


_REFUSAL_TEXT = {
    PER_SOURCE: "too many connections from this address",
    UNAUTHENTICATED_PER_SOURCE: "too many unauthenticated connections from this address",
    UNAUTHENTICATED: "too many unauthenticated connections on this listener",
}


def _cancel(call: IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()


def _hang_up(connection: TunnelConnection, why: str) -> None:
    """GOAWAY with ``why`` if HTTP/2 is up; else (TLS not even done) drop the socket."""
    if connection.is_ready:
        connection.close(why=why)
    elif connection.transport is not None:
        connection.transport.abortConnection()


# -- the listening side ---------------------------------------------------------------------------


class GuardedTLSFactory(FastTLSFactory):
    """The tunnel's TLS factory, asking the guard before it builds anything.

    ``buildProtocol`` runs when the kernel hands over an accepted socket: returning None there
    makes Twisted close it at once, before a TLS handshake costs any CPU.
    """

    def __init__(
        self,
        guard: ConnectionGuard,
        options: CertificateOptions,
        wrapped: Any,
        clock: IReactorTime,
        congestion_control: str | None = None,
    ) -> None:
        super().__init__(options, False, wrapped, clock=clock)
        self.guard = guard
        self.congestion_control = congestion_control

    def buildProtocol(self, addr: Any) -> Any:
        host = str(getattr(addr, "host", addr))
        reason = self.guard.refusal(host)
        if reason is not None:
            self.guard.refused(addr, reason)
            return None
        protocol = super().buildProtocol(addr)
        connection = getattr(protocol, "wrappedProtocol", None)
        if isinstance(connection, TunnelConnection):
            self.guard.register(connection, addr)
        return protocol


@implementer(_IStreamServerEndpoint)
class GuardedTLSEndpoint:
    """``TLSServerEndpoint`` with a `ConnectionGuard` in front of every accepted connection."""

    def __init__(
        self,
        wrapped: _IStreamServerEndpoint,
        options: CertificateOptions,
        clock: IReactorTime,
        guard: ConnectionGuard,
        congestion_control: str | None = None,
    ) -> None:
        self._wrapped, self._options, self._clock, self.guard = wrapped, options, clock, guard
        self._congestion_control = congestion_control

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        factory = GuardedTLSFactory(
            self.guard, self._options, protocolFactory, self._clock, self._congestion_control
        )
        listening: Deferred[IListeningPort] = self._wrapped.listen(factory)
        return listening


class EngineerConnection(NullObserver):
    """Names an engineer connection in the tunnel's log lines by its address."""

    def __init__(self, address: Any) -> None:
        self.name = f"engineer connection from {peer_address(address)}"


# -- streams ---------------------------------------------------------------------------------------


@frozen
class StreamLimits:
    """At most this many streams at once on one engineer connection and on one gateway tunnel."""

    per_connection: int | None = None
    per_tunnel: int | None = None


class EngineerAdmission:
    """What the engineer stream handler asks before it goes on: limits, and who authenticated."""

    def __init__(
        self,
        *,
        guard: ConnectionGuard | None,
        limits: StreamLimits,
        tunnel_streams: Callable[[str], int | None],
    ) -> None:
        self.guard = guard
        self.limits = limits
        self._tunnel_streams = tunnel_streams

    def stream_arrived(self, stream: TunnelStream) -> Refused | None:
        """A refusal if the stream's connection has too many already (the new one included)."""
        connection = stream.connection
        if self.guard is not None and isinstance(connection, TunnelConnection):
            self.guard.stream_arrived(connection)
        limit = self.limits.per_connection
        streams = getattr(connection, "streams", ())
        if limit is not None and len(streams) > limit:
            return Refused(
                Refusal.LIMIT_REACHED,
                f"this connection has {limit} streams open already, the relay's limit per "
                "engineer connection; close some, or open a second connection",
            )
        return None

    def before_dial(self, gateway_id: str, target: str) -> Refused | None:
        """A refusal if ``target`` cannot be a target name, or the gateway's tunnel is full.

        Whether a target is allowed is the gateway's to say; that a 60 KB ``:authority`` or one
        with escape sequences names no target is plain syntax, and such bytes go no further.
        """
        if not is_target_name(target):
            # Shortened only: the wire (clean_reason) and the log (peer_text) escape it each.
            shown = target if len(target) <= 48 else target[:48] + "..."
            return Refused(
                Refusal.BAD_REQUEST,
                f"'{shown}' is not a target name (letters, digits, . _ -; at most 64)",
            )
        return self.tunnel_room(gateway_id)

    def tunnel_room(self, gateway_id: str) -> Refused | None:
        """A refusal if the gateway's tunnel carries as many streams as it may."""
        limit = self.limits.per_tunnel
        open_now = self._tunnel_streams(gateway_id)
        if limit is not None and open_now is not None and open_now >= limit:
            return Refused(
                Refusal.LIMIT_REACHED,
                f"gateway {gateway_id!r} has {limit} streams open already, the relay's limit "
                "per gateway tunnel; try again when some have ended",
            )
        return None

    def token_accepted(self, stream: TunnelStream) -> None:
        """A stream on this connection presented a valid token: the connection authenticated."""
        connection = stream.connection
        if self.guard is not None and isinstance(connection, TunnelConnection):
            self.guard.authenticated(connection)


def token_was_accepted(refused: Refused) -> bool:
    """Whether a refusal came after the token was accepted (so the connection authenticated).

    The path checks the token first: a refusal for the token itself (401) or for too many failed
    attempts says nothing about who is there; any later refusal (not authorised, unknown or
    offline gateway, a bad request) comes from an engineer the relay knows.
    """
    return refused.refusal.status != 401 and refused.refusal is not Refusal.TOO_MANY_ATTEMPTS
