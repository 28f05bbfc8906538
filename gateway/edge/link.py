"""The outbound tunnel: dial the relay, keep the connection alive, drain on shutdown.

A ``ClientService`` dials through TLS (pinned relay CA, host name checked, our certificate
presented) and redials with full-jitter backoff whenever the connection fails or drops; the
heartbeat inside ``TunnelConnection`` turns a dead or blackholed relay into a drop within
``heartbeat_interval + heartbeat_timeout`` seconds.
"""

from __future__ import annotations

import enum
from random import Random

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import RelayLink
from gateway.net.backoff import Backoff
from gateway.net.proxy import HTTPConnectEndpoint
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


class TunnelMetricsSink:
    """Where tunnel events are counted; ``GatewayMetrics`` overrides these."""

    def up(self, is_up: bool) -> None:
        pass

    def connected(self) -> None:
        pass

    def rtt(self, seconds: float) -> None:
        pass


@implementer(ITunnelObserver)
class TunnelState:
    """The tunnel as the status page and logs see it: phase, since when, round-trip time."""

    def __init__(self, relay: str, clock: IGatewayReactor, sink: TunnelMetricsSink) -> None:
        self.relay = relay
        self._clock = clock
        self._sink = sink
        self.phase = TunnelPhase.CONNECTING
        self.since = clock.seconds()
        self.rtt: float | None = None
        self.last_error: str | None = None
        self.connects = 0
        self.current: TunnelConnection | None = None
        self.backoff: Backoff | None = None

    name = property(lambda self: f"relay {self.relay}")

    def _move(self, phase: TunnelPhase, why: str) -> None:
        if phase is self.phase:
            return
        log.info("tunnel {old} -> {new}: {why}", old=self.phase.value, new=phase.value, why=why)
        self.phase, self.since = phase, self._clock.seconds()
        self._sink.up(phase is TunnelPhase.UP)

    def tunnel_ready(self, connection: TunnelConnection) -> None:
        self.current = connection
        if self.backoff is not None:
            self.backoff.succeeded()
        self.connects += 1
        self.last_error = None
        self._sink.connected()
        self._move(TunnelPhase.UP, f"connected to relay {self.relay}")

    def tunnel_rtt(self, connection: TunnelConnection, seconds: float) -> None:
        self.rtt = seconds
        self._sink.rtt(seconds)

    def tunnel_lost(self, connection: TunnelConnection, reason: Failure) -> None:
        if self.current is connection:
            self.current = None
        why = describe_tls_failure(reason)
        if not connection.is_ready:
            self.last_error = why
            log.warn("cannot open the tunnel to relay {relay}: {why}", relay=self.relay, why=why)
        if self.phase is not TunnelPhase.STOPPED:
            self._move(TunnelPhase.DOWN, f"connection lost: {why}")

    def stopped(self) -> None:
        self._move(TunnelPhase.STOPPED, "gateway stopping")

    def dial_failed(self, reason: Failure) -> None:
        """No connection at all (refused, unreachable, DNS, proxy): say why, every time."""
        if self.phase is TunnelPhase.STOPPED or reason.check(CancelledError):
            return  # we are stopping: a cancelled dial is not the relay's fault
        why = describe_tls_failure(reason)
        self.last_error = why
        log.warn("cannot reach relay {relay}: {why}", relay=self.relay, why=why)
        if self.phase is TunnelPhase.UP:
            self._move(TunnelPhase.DOWN, why)


@implementer(IStreamClientEndpoint)
class ReportingEndpoint:
    """Wraps the relay endpoint so that every failed dial is explained in the log and status."""

    def __init__(self, wrapped: IStreamClientEndpoint, state: TunnelState) -> None:
        self._wrapped, self._state = wrapped, state

    def __repr__(self) -> str:
        return repr(self._wrapped)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        d = self._wrapped.connect(protocolFactory)

        def report(failure: Failure) -> Failure:
            self._state.dial_failed(failure)
            return failure

        return d.addErrback(report)


def relay_endpoint(link: RelayLink, reactor: IGatewayReactor) -> IStreamClientEndpoint:
    """TLS to the relay, over TCP or through the plant's HTTP proxy (CONNECT)."""
    tcp: IStreamClientEndpoint
    if link.proxy is not None:
        tcp = HTTPConnectEndpoint(reactor, link.proxy, link.address, timeout=link.connect_timeout)
    else:
        tcp = HostnameEndpoint(
            reactor, link.address.host, link.address.port, timeout=link.connect_timeout
        )
    options = client_options(link.expected_name, link.ca, cert_path=link.cert, key_path=link.key)
    return TLSClientEndpoint(tcp, options, reactor)


class GatewayTunnelService(Service):
    """Keeps one tunnel to the relay up while running; drains it gracefully on stop."""

    def __init__(
        self,
        *,
        link: RelayLink,
        reactor: IGatewayReactor,
        endpoint: IStreamClientEndpoint,
        make_protocol: Factory,
        state: TunnelState,
        drain_timeout: float,
        rng: Random | None = None,
    ) -> None:
        self._reactor = reactor
        self._state = state
        self._drain_timeout = drain_timeout
        # No prepareConnection: ClientService has no transition for a connection lost while
        # one is pending (a traceback on every failed handshake).  The tunnel enforces its own
        # handshake deadline (TunnelConnection.ready_timeout) and the backoff keeps counting
        # failures until HTTP/2 is really up (TunnelState.tunnel_ready resets it).
        self.backoff = Backoff(rng or Random(), base=1.0, cap=link.reconnect_cap)
        state.backoff = self.backoff
        self.client = ClientService(
            ReportingEndpoint(endpoint, state),
            make_protocol,
            retryPolicy=self.backoff,
            clock=reactor,
        )

    @property
    def current(self) -> TunnelConnection | None:
        return self._state.current

    def startService(self) -> None:
        super().startService()
        self.client.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._state.stopped()
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
