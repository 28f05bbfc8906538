"""``gateway connect``: the engineer's local port that reaches one processor target.

One TLS connection to the relay (CA pinned, host name checked) carries every local connection as
its own HTTP/2 stream, so opening a page costs no new TLS handshake.  A local connection's bytes
are sent right behind the stream's request, without waiting for the answer; if the relay or the
gateway refuses, the engineer gets one clear line and only that connection ends.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from random import Random

from attrs import frozen
from twisted.application.internet import ClientService, StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.config import Address
from gateway.net.backoff import Backoff
from gateway.net.endpoints import listen_endpoint, quiet_factory
from gateway.reactor import IGatewayReactor
from gateway.relay.engineers import GATEWAY_HEADER
from gateway.splice import SpliceEnd, splice
from gateway.tls import TLSClientEndpoint, client_options
from gateway.tls.errors import describe_tls_failure
from gateway.tunnel.batch import WriteBatch
from gateway.tunnel.connection import NullObserver, TunnelConnection
from gateway.tunnel.errors import TunnelClosed
from gateway.wire import StreamRefused

log = Logger()

Report = Callable[[str], None]


@frozen
class ConnectOptions:
    relay: Address
    ca: Path
    token: str
    gateway: str
    target: str
    listen: Address
    server_name: str | None = None


class _RelayObserver(NullObserver):
    def __init__(self, relay: Address, report: Report, backoff: Backoff) -> None:
        self.name = f"relay {relay}"
        self._backoff = backoff
        self._report = report
        self._relay = relay
        self.current: TunnelConnection | None = None

    def tunnel_ready(self, connection: TunnelConnection) -> None:
        self.current = connection
        self._backoff.succeeded()

    def tunnel_lost(self, connection: TunnelConnection, reason: Failure) -> None:
        if self.current is connection:
            self.current = None
        if not connection.is_ready:
            self._report(f"cannot reach relay {self._relay}: {describe_tls_failure(reason)}")
        else:
            self._report(f"connection to relay {self._relay} lost; reconnecting")


class LocalConnection(SpliceEnd):
    """A browser connection on the local port, forwarded through its own stream."""

    def __init__(self, client: EngineerClient) -> None:
        super().__init__()
        self.client = client

    def connectionMade(self) -> None:
        super().connectionMade()
        # Hold the browser's bytes until the stream exists.
        self.transport.pauseProducing()
        d = self.client.relay.whenConnected(failAfterFailures=1)
        d.addCallback(_when_ready).addCallbacks(self._open, self._relay_unreachable)
        d.addErrback(lambda f: log.failure("forwarding a local connection", f))

    def _relay_unreachable(self, failure: Failure) -> None:
        self.client.report(
            f"cannot reach relay {self.client.options.relay}: {describe_tls_failure(failure)}"
        )
        self.transport.abortConnection()

    def _open(self, connection: TunnelConnection) -> None:
        if self.lost:
            return
        try:
            stream = connection.open_stream(
                self.client.options.target, headers=self.client.stream_headers()
            )
        except TunnelClosed as e:
            self.client.report(f"relay connection is closing ({e}); try again")
            self.transport.abortConnection()
            return
        stream.response.addErrback(self._refused)
        stream_end = SpliceEnd()
        stream.attach(stream_end)
        splice(self, stream_end)
        self.transport.resumeProducing()

    def _refused(self, failure: Failure) -> None:
        if failure.check(StreamRefused):
            self.client.report(str(failure.value))
        elif not self.lost:
            self.client.report(f"the stream was cut: {failure.value}")
        if not self.lost:
            self.transport.abortConnection()


class EngineerClient(MultiService):
    """The relay connection (kept up, redialled with backoff) plus the local listener."""

    def __init__(self, options: ConnectOptions, reactor: IGatewayReactor, report: Report) -> None:
        super().__init__()
        self.options = options
        self.report = report
        self._reactor = reactor
        tls = client_options(
            options.server_name or options.relay.host,
            options.ca,
        )
        endpoint = TLSClientEndpoint(
            HostnameEndpoint(reactor, options.relay.host, options.relay.port, timeout=10),
            tls,
            reactor,
        )
        # Backoff counts failed handshakes too (see gateway.net.backoff.Backoff); no
        # prepareConnection, which ClientService mishandles when a handshake fails.
        self._backoff = Backoff(Random(), base=0.5, cap=15)
        observer = self._observer = _RelayObserver(options.relay, report, self._backoff)
        batch = WriteBatch()
        factory = quiet_factory(
            lambda: TunnelConnection(
                client_side=True, clock=reactor, observer=observer, batch=batch
            )
        )
        self.relay = ClientService(
            endpoint,
            factory,
            retryPolicy=self._backoff,
            clock=reactor,
        )
        self.relay.setServiceParent(self)
        local = quiet_factory(lambda: LocalConnection(self))
        self.listener = StreamServerEndpointService(listen_endpoint(reactor, options.listen), local)
        self.listener.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        """Say goodbye to the relay (GOAWAY, TLS close) rather than just dropping the socket."""
        if self._observer.current is not None:
            self._observer.current.close()
        stopped: Deferred[None] = super().stopService()
        return stopped

    def stream_headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"authorization", b"Bearer " + self.options.token.encode()),
            (GATEWAY_HEADER.encode(), self.options.gateway.encode()),
        ]

    def check_gateway(self) -> Deferred[dict[str, object]]:
        """Ask the relay whether the token works and the gateway is online (startup check)."""
        d = self.relay.whenConnected(failAfterFailures=1)

        def ask(connection: TunnelConnection) -> Deferred[dict[str, object]]:
            stream = connection.open_stream(
                self.options.relay.host,
                method="GET",
                path="/v1/gateway",
                headers=self.stream_headers(),
                end_stream=True,
            )
            body = _BodyCollector()
            stream.attach(body)
            return stream.response.addCallback(lambda _: body.done)

        return d.addCallback(_when_ready).addCallback(ask)


def _when_ready(connection: IProtocol) -> Deferred[TunnelConnection]:
    """``whenConnected`` fires at TCP connect; streams need HTTP/2 to be up."""
    assert isinstance(connection, TunnelConnection)
    return connection.when_ready()


class _BodyCollector(Protocol):
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.done: Deferred[dict[str, object]] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if self.done.called:
            return
        try:
            self.done.callback(json.loads(b"".join(self.parts) or b"{}"))
        except ValueError as e:
            self.done.errback(e)
