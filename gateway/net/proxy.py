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
    """Speaks HTTP CONNECT to the proxy, then hands the connection to the real protocol."""

    def __init__(
        self, target: Address, factory: IProtocolFactory, ready: Deferred[IProtocol]
    ) -> None:
        self._target, self._factory, self._ready = target, factory, ready
        self._head = b""
        self._inner: IProtocol | None = None

    def connectionMade(self) -> None:
        authority = str(self._target).encode("ascii")
        self.transport.write(  # type: ignore[union-attr]
            b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n"
            b"User-Agent: remote-service-gateway\r\n\r\n"
        )

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
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
        ready: Deferred[IProtocol] = Deferred()
        factory = Factory()
        factory.noisy = False
        factory.buildProtocol = lambda addr: _ConnectThenRelay(  # type: ignore[method-assign]
            self._target, protocolFactory, ready
        )
        connecting: Deferred[Any] = self._proxy_endpoint.connect(factory)
        connecting.addErrback(lambda f: None if ready.called else ready.errback(f))
        ready.addTimeout(self._timeout, self._reactor)  # type: ignore[arg-type]
        return ready
