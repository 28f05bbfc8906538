"""The outbound tunnel: dial the relay, keep the connection alive, drain on shutdown.

A ``ClientService`` dials through TLS (pinned relay CA, host name checked, our certificate
presented) and redials with full-jitter backoff whenever the connection fails or drops; the
heartbeat inside ``TunnelConnection`` turns a dead or blackholed relay into a drop within
``heartbeat_interval + heartbeat_timeout`` seconds.

Three parts, one job each:

* ``GatewayTunnelService``: the ``ClientService`` and the graceful drain on stop;
* ``TunnelObserver``: hears the tunnel (``ITunnelObserver``) and every failed dial, explains
  failures in plain language, resets the backoff once HTTP/2 is up, and reports ``ITunnelEvents``
  (to the daemon's fan-out);
* ``TunnelStatus``: the tunnel as the status page shows it, a small state machine fed by those
  events (phase, since when, round-trip time, last error, connects).
"""

from __future__ import annotations

import enum
from random import Random

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import RelayLink
from gateway.edge.events import ITunnelEvents
from gateway.net.backoff import Backoff
from gateway.net.proxy import relay_tcp_endpoint
from gateway.reactor import IGatewayReactor
from gateway.tls import TLSClientEndpoint, client_options
from gateway.tls.errors import describe_tls_failure
from gateway.tunnel.connection import ITunnelObserver, TunnelConnection

log = Logger()


class TunnelPhase(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    STOPPED = "stopped"


ALLOWED: dict[TunnelPhase, frozenset[TunnelPhase]] = {
    TunnelPhase.CONNECTING: frozenset({TunnelPhase.UP, TunnelPhase.DOWN, TunnelPhase.STOPPED}),
    TunnelPhase.UP: frozenset({TunnelPhase.DOWN, TunnelPhase.STOPPED}),
    TunnelPhase.DOWN: frozenset({TunnelPhase.UP, TunnelPhase.STOPPED}),
    TunnelPhase.STOPPED: frozenset(),
}
"""Which phase may follow which.  Stopped is final: a stopping gateway does not come back up."""


class InvalidTransition(Exception):
    """A move the table does not allow: a bug in whoever reported the event."""


@implementer(ITunnelEvents)
class TunnelStatus:
    """The tunnel as the status page and logs see it: phase, since when, round-trip time."""

    def __init__(self, relay: str, clock: IReactorTime) -> None:
        self.relay = relay
        self._clock = clock
        self.phase = TunnelPhase.CONNECTING
        self.since = clock.seconds()
        self.rtt: float | None = None
        self.last_error: str | None = None
        self.connects = 0

    def move(self, new: TunnelPhase, why: str) -> None:
        """Go to ``new`` and log it; staying in the same phase is not a move."""
        if new is self.phase:
            return
        if new not in ALLOWED[self.phase]:
            raise InvalidTransition(f"tunnel {self.phase.value} -> {new.value}: {why}")
        log.info("tunnel {old} -> {new}: {why}", old=self.phase.value, new=new.value, why=why)
        self.phase, self.since = new, self._clock.seconds()

    # ITunnelEvents
    def tunnel_up(self, why: str) -> None:
        self.connects += 1
        self.last_error = None
        self.move(TunnelPhase.UP, why)

    def tunnel_down(self, why: str) -> None:
        self.move(TunnelPhase.DOWN, why)

    def tunnel_failed(self, why: str) -> None:
        self.last_error = why

    def tunnel_stopped(self, why: str) -> None:
        self.move(TunnelPhase.STOPPED, why)

    def tunnel_rtt(self, seconds: float) -> None:
        self.rtt = seconds


@implementer(ITunnelObserver)
class TunnelObserver:
    """Turns the tunnel's callbacks and failed dials into ``ITunnelEvents``.

    It also keeps the connection that is up now (the one to drain on stop) and resets the
    backoff only once HTTP/2 is up, so that a relay failing every handshake is not redialled
    every second.
    """

    def __init__(self, relay: str, events: ITunnelEvents, backoff: Backoff | None = None) -> None:
        self.relay = relay
        self._events = events
        self.backoff = backoff
        self.current: TunnelConnection | None = None
        self.stopping = False

    @property
    def name(self) -> str:
        return f"relay {self.relay}"

    def tunnel_ready(self, connection: TunnelConnection) -> None:
        self.current = connection
        if self.backoff is not None:
            self.backoff.succeeded()
        if not self.stopping:  # a handshake finishing while we drain: about to be closed
            self._events.tunnel_up(f"connected to relay {self.relay}")

    def tunnel_rtt(self, connection: TunnelConnection, seconds: float) -> None:
        self._events.tunnel_rtt(seconds)

    def tunnel_lost(self, connection: TunnelConnection, reason: Failure) -> None:
        if self.current is connection:
            self.current = None
        why = describe_tls_failure(reason)
        if not connection.is_ready:
            log.warn("cannot open the tunnel to relay {relay}: {why}", relay=self.relay, why=why)
            self._events.tunnel_failed(why)
        if not self.stopping:
            self._events.tunnel_down(f"connection lost: {why}")

    def dial_failed(self, reason: Failure) -> None:
        """No connection at all (refused, unreachable, DNS, proxy): say why, every time."""
        if self.stopping or reason.check(CancelledError):
            return  # we are stopping: a cancelled dial is not the relay's fault
        why = describe_tls_failure(reason)
        log.warn("cannot reach relay {relay}: {why}", relay=self.relay, why=why)
        self._events.tunnel_failed(why)

    def stopped(self) -> None:
        if not self.stopping:
            self.stopping = True
            self._events.tunnel_stopped("gateway stopping")


@implementer(IStreamClientEndpoint)
class ReportingEndpoint:
    """Wraps the relay endpoint so that every failed dial is explained in the log and status."""

    def __init__(self, wrapped: IStreamClientEndpoint, observer: TunnelObserver) -> None:
        self._wrapped, self._observer = wrapped, observer

    def __repr__(self) -> str:
        return repr(self._wrapped)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        d = self._wrapped.connect(protocolFactory)

        def report(failure: Failure) -> Failure:
            self._observer.dial_failed(failure)
            return failure

        return d.addErrback(report)


def relay_endpoint(link: RelayLink, reactor: IGatewayReactor) -> IStreamClientEndpoint:
    """TLS to the relay, over TCP or through the plant's HTTP proxy (CONNECT, credentials and
    ``no_proxy`` as `gateway.net.proxy.relay_tcp_endpoint` says)."""
    tcp = relay_tcp_endpoint(reactor, link)
    options = client_options(link.expected_name, link.ca, cert_path=link.cert, key_path=link.key)
    return TLSClientEndpoint(tcp, options, reactor, congestion_control=link.congestion_control)


class GatewayTunnelService(Service):
    """Keeps one tunnel to the relay up while running; drains it gracefully on stop."""

    def __init__(
        self,
        *,
        link: RelayLink,
        reactor: IGatewayReactor,
        endpoint: IStreamClientEndpoint,
        make_protocol: Factory,
        observer: TunnelObserver,
        drain_timeout: float,
        rng: Random | None = None,
    ) -> None:
        self._reactor = reactor
        self._observer = observer
        self._drain_timeout = drain_timeout
        # No prepareConnection: ClientService has no transition for a connection lost while
        # one is pending (a traceback on every failed handshake).  The tunnel enforces its own
        # handshake deadline (TunnelConnection.ready_timeout) and the backoff keeps counting
        # failures until HTTP/2 is really up (TunnelObserver.tunnel_ready resets it).
        self.backoff = Backoff(rng or Random(), base=1.0, cap=link.reconnect_cap)
        observer.backoff = self.backoff
        self._reporting = ReportingEndpoint(endpoint, observer)
        self.client = ClientService(
            self._reporting,
            make_protocol,
            retryPolicy=self.backoff,
            clock=reactor,
        )

    @property
    def current(self) -> TunnelConnection | None:
        return self._observer.current

    def dial_with_renewed_certificate(self, endpoint: IStreamClientEndpoint) -> None:
        """Renewal (`gateway.edge.renewal`): the next connection dials ``endpoint`` (the new
        certificate's); the live tunnel carries on as it is."""
        self._reporting._wrapped = endpoint

    def startService(self) -> None:
        super().startService()
        self.client.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._observer.stopped()
        connection = self.current
        drained = succeed(None) if connection is None else connection.drain(self._drain_timeout)
        if connection is not None and connection.streams:
            log.info(
                "draining {n} open streams (at most {t:g}s)",
                n=len(connection.streams),
                t=self._drain_timeout,
            )

        def stop_client(_: object) -> Deferred[None]:
            stopped: Deferred[None] = self.client.stopService()
            return stopped

        return drained.addCallback(stop_client)
