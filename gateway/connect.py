"""``gateway connect``: the engineer's local port that reaches one processor target.

One TLS connection to the relay (CA pinned, host name checked) carries every local connection as
its own HTTP/2 stream, so opening a page costs no new TLS handshake.  A local connection's bytes
are sent right behind the stream's request, without waiting for the answer; if the relay or the
gateway refuses, the engineer gets one clear line and only that connection ends.

What the client tells the engineer goes to ``report``, one line per event: a relay that cannot be
reached is told once per outage (a browser opens several connections, the client redials), and
nothing at all once we are stopping (our own goodbye is not a lost connection).  Only the wire
contract is shared with the relay (`gateway.wire`); nothing of the relay is imported.
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
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.config import Address
from gateway.net.backoff import Backoff
from gateway.net.endpoints import listen_endpoint, quiet_factory
from gateway.reactor import IGatewayReactor
from gateway.splice import SpliceEnd, splice
from gateway.tls import TLSClientEndpoint, client_options
from gateway.tls.errors import describe_tls_failure
from gateway.tunnel.batch import WriteBatch
from gateway.tunnel.connection import NullObserver, TunnelConnection
from gateway.tunnel.errors import TunnelClosed
from gateway.wire import (
    AUTHORIZATION_HEADER,
    GATEWAY_HEADER,
    GATEWAY_INFO_PATH,
    GatewayInfo,
    StreamRefused,
)

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
    """Hands the relay connection's life to the client, which decides what to tell."""

    def __init__(self, client: EngineerClient) -> None:
        self.name = f"relay {client.options.relay}"
        self._client = client

    def tunnel_ready(self, connection: TunnelConnection) -> None:
        self._client._relay_up(connection)

    def tunnel_lost(self, connection: TunnelConnection, reason: Failure) -> None:
        self._client._relay_lost(connection, reason)


class LocalConnection(SpliceEnd):
    """A browser connection on the local port, forwarded through its own stream."""

    def __init__(self, client: EngineerClient) -> None:
        super().__init__()
        self.client = client

    def connectionMade(self) -> None:
        super().connectionMade()
        # Hold the browser's bytes until the stream exists.
        self.transport.pauseProducing()
        d = self.client.tunnel()
        d.addCallbacks(self._open, self._relay_unreachable)
        d.addErrback(lambda f: log.failure("forwarding a local connection", f))

    def _relay_unreachable(self, failure: Failure) -> None:
        self.client.relay_unreachable(failure)
        self.transport.abortConnection()

    def _open(self, connection: TunnelConnection) -> None:
        if self.lost:
            return
        try:
            stream = connection.open_stream(
                self.client.options.target, headers=self.client.stream_headers()
            )
        except TunnelClosed as e:
            self.client.tell(f"relay connection is closing ({e}); try again")
            self.transport.abortConnection()
            return
        stream.response.addErrback(self._refused)
        stream_end = SpliceEnd()
        stream.attach(stream_end)
        splice(self, stream_end)
        self.transport.resumeProducing()

    def _refused(self, failure: Failure) -> None:
        if failure.check(StreamRefused):
            self.client.tell(str(failure.value))
        elif not self.lost:
            self.client.tell(f"the stream was cut: {failure.value}")
        if not self.lost:
            self.transport.abortConnection()


class EngineerClient(MultiService):
    """The relay connection (kept up, redialled with backoff) plus the local listener.

    ``endpoint`` is how the relay is dialled; by default TLS to ``options.relay`` with the CA in
    ``options.ca`` pinned (tests pass an in-memory one).
    """

    def __init__(
        self,
        options: ConnectOptions,
        reactor: IGatewayReactor,
        report: Report,
        *,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        super().__init__()
        self.options = options
        self.report = report
        self.url = f"http://{options.listen}/"
        self.stopping = False
        self.current: TunnelConnection | None = None
        self._unreachable_told = False
        if endpoint is None:
            endpoint = TLSClientEndpoint(
                HostnameEndpoint(reactor, options.relay.host, options.relay.port, timeout=10),
                client_options(options.server_name or options.relay.host, options.ca),
                reactor,
            )
        # Backoff counts failed handshakes too (see gateway.net.backoff.Backoff); no
        # prepareConnection, which ClientService mishandles when a handshake fails.
        self._backoff = Backoff(Random(), base=0.5, cap=15)
        observer = _RelayObserver(self)
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
        self.stopping = True
        if self.current is not None:
            self.current.close()
        stopped: Deferred[None] = super().stopService()
        return stopped

    # -- what the engineer is told ----------------------------------------------------------------

    def tell(self, line: str) -> None:
        """One line for the engineer; none once we are stopping (our own doing, not news)."""
        if not self.stopping:
            self.report(line)

    def relay_unreachable(self, failure: Failure) -> None:
        """A connection attempt failed: told once until the relay is reached again."""
        if failure.check(TunnelClosed):
            return  # it was connected and lost before HTTP/2: `_relay_lost` told why
        if not self._unreachable_told:
            self.tell(f"cannot reach relay {self.options.relay}: {describe_tls_failure(failure)}")
            self._unreachable_told = True

    def _relay_up(self, connection: TunnelConnection) -> None:
        self.current = connection
        self._backoff.succeeded()
        self._unreachable_told = False

    def _relay_lost(self, connection: TunnelConnection, reason: Failure) -> None:
        if self.current is connection:
            self.current = None
        if not connection.is_ready:
            self.relay_unreachable(reason)
        else:
            self.tell(f"connection to relay {self.options.relay} lost; reconnecting")

    # -- streams ----------------------------------------------------------------------------------

    def tunnel(self) -> Deferred[TunnelConnection]:
        """The relay connection once HTTP/2 is up; fails if the next attempt to connect fails."""
        return self.relay.whenConnected(failAfterFailures=1).addCallback(_when_ready)

    def stream_headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (AUTHORIZATION_HEADER, b"Bearer " + self.options.token.encode()),
            (GATEWAY_HEADER, self.options.gateway.encode()),
        ]

    def check_gateway(self) -> Deferred[GatewayInfo]:
        """Ask the relay whether the token works and the gateway is online (startup check)."""
        return self.tunnel().addCallback(self._ask_gateway)

    def _ask_gateway(self, connection: TunnelConnection) -> Deferred[GatewayInfo]:
        stream = connection.open_stream(
            self.options.relay.host,
            method="GET",
            path=GATEWAY_INFO_PATH,
            headers=self.stream_headers(),
            end_stream=True,
        )
        body = _BodyCollector()
        stream.attach(body)
        return stream.response.addCallback(lambda _: body.done).addCallback(gateway_info)

    def report_gateway(self) -> Deferred[None]:
        """The startup check, told in one line: online, offline, refused or unreachable."""
        return Deferred.fromCoroutine(self._report_gateway())

    async def _report_gateway(self) -> None:
        try:
            connection = await self.tunnel()
        except Exception:
            self.relay_unreachable(Failure())
            return
        try:
            info = await self._ask_gateway(connection)
        except Exception as e:  # refused (a bad token, an unknown gateway), cut, or garbled
            self.tell(str(e))
            return
        state = "online" if info.online else "offline (waiting for it)"
        self.tell(f"gateway {self.options.gateway!r} is {state}; open {self.url}")


def gateway_info(body: bytes) -> GatewayInfo:
    """Read the relay's answer on ``GATEWAY_INFO_PATH``."""
    answer = json.loads(body or b"{}")
    if not isinstance(answer, dict):
        raise ValueError(f"the relay's answer on {GATEWAY_INFO_PATH} is not a JSON object")
    return GatewayInfo(gateway=str(answer.get("gateway", "")), online=bool(answer.get("online")))


def _when_ready(connection: IProtocol) -> Deferred[TunnelConnection]:
    """``whenConnected`` fires at TCP connect; streams need HTTP/2 to be up."""
    assert isinstance(connection, TunnelConnection)
    return connection.when_ready()


class _BodyCollector(Protocol):
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if not self.done.called:
            self.done.callback(b"".join(self.parts))
