"""Dial through the plant's HTTP proxy with ``CONNECT``, then run TLS end to end over it.

Many plants allow the internet only through an HTTP proxy.  The gateway asks the proxy for a
``CONNECT relay:443`` tunnel and starts TLS inside it, so the proxy sees only the relay's name and
encrypted bytes, and the relay's certificate is still checked against the pinned CA.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import Address

MAX_RESPONSE_HEAD = 16 * 1024


class ProxyError(Exception):
    """The proxy would not open the tunnel; the message says what it answered."""


class _ConnectThenRelay(Protocol):
    """Speaks HTTP CONNECT to the proxy, then hands the connection to the real protocol.

    Once ``ready`` has fired without it (timed out, cancelled, refused) the attempt is over: a
    late answer builds nothing and the proxy connection is closed.
    """

    def __init__(
        self, target: Address, factory: IProtocolFactory, ready: Deferred[IProtocol]
    ) -> None:
        self._target, self._factory, self._ready = target, factory, ready
        self._head = b""
        self._inner: IProtocol | None = None

    def connectionMade(self) -> None:
        if self._ready.called:  # given up while TCP was connecting
            self.abandon()
            return
        authority = str(self._target).encode("ascii")
        self.transport.write(  # type: ignore[union-attr]
            b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n"
            b"User-Agent: remote-service-gateway\r\n\r\n"
        )

    def abandon(self) -> None:
        """Close the proxy connection: nobody waits for this tunnel any more."""
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        if self._ready.called:  # an answer after the timeout or a cancel
            self.abandon()
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_RESPONSE_HEAD:
                self._fail(ProxyError("the proxy's answer to CONNECT is too long"))
            return
        status_line = self._head.split(b"\r\n", 1)[0].decode("latin-1")
        rest = self._head[end + 4 :]
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or parts[1] != "200":
            self._fail(
                ProxyError(f"the proxy refused CONNECT {self._target}: {status_line.strip()!r}")
            )
            return
        inner = self._factory.buildProtocol(self.transport.getPeer())  # type: ignore[union-attr]
        if inner is None:
            self._fail(ProxyError("no protocol for the proxied connection"))
            return
        self._inner = inner
        inner.makeConnection(self.transport)  # type: ignore[arg-type]
        self._ready.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def _fail(self, error: Exception) -> None:
        if not self._ready.called:
            self._ready.errback(error)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._inner is not None:
            self._inner.connectionLost(reason)
        elif not self._ready.called:
            self._ready.errback(ProxyError(f"the proxy closed the connection: {reason.value}"))


class _Attempt(Factory):
    """One dial through the proxy: TCP to the proxy, then CONNECT; ``ready`` can be cancelled.

    Cancelling ``ready`` (``addTimeout`` does, and so does ``ClientService`` when it stops) stops
    the TCP connect if it is still under way, or closes the proxy connection if it is not.
    """

    noisy = False

    def __init__(self, target: Address, factory: IProtocolFactory) -> None:
        self._target, self._factory = target, factory
        self.ready: Deferred[IProtocol] = Deferred(self._cancel)
        self.connecting: Deferred[Any] | None = None
        self._speaker: _ConnectThenRelay | None = None
        self._cancelling = False

    def buildProtocol(self, addr: IAddress | None) -> _ConnectThenRelay:
        self._speaker = _ConnectThenRelay(self._target, self._factory, self.ready)
        return self._speaker

    def tcp_failed(self, reason: Failure) -> None:
        if not (self.ready.called or self._cancelling):
            self.ready.errback(reason)

    def _cancel(self, _ready: Deferred[IProtocol]) -> None:
        # Deferred.cancel errbacks ``ready`` with CancelledError after this returns (addTimeout
        # turns that into TimeoutError), so the TCP attempt's own cancel error is swallowed.
        self._cancelling = True
        if self._speaker is not None:
            self._speaker.abandon()
        elif self.connecting is not None:
            self.connecting.cancel()


@implementer(IStreamClientEndpoint)
class HTTPConnectEndpoint:
    """An endpoint that reaches ``target`` through an HTTP proxy's CONNECT method."""

    def __init__(
        self, reactor: Any, proxy: Address, target: Address, *, timeout: float = 10.0
    ) -> None:
        self._proxy_endpoint = HostnameEndpoint(reactor, proxy.host, proxy.port, timeout=timeout)
        self._reactor: IReactorTCP | IReactorTime = reactor
        self._proxy, self._target, self._timeout = proxy, target, timeout

    def __repr__(self) -> str:
        return f"<CONNECT {self._target} via proxy {self._proxy}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        attempt = _Attempt(self._target, protocolFactory)
        attempt.connecting = self._proxy_endpoint.connect(attempt)
        attempt.connecting.addErrback(attempt.tcp_failed)
        attempt.ready.addTimeout(self._timeout, self._reactor)  # type: ignore[arg-type]
        return attempt.ready
