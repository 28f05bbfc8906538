"""Endpoints that run the tunnel's TLS (``FastTLSFactory``) over any stream endpoint.

Twisted's ``wrapClientTLS`` would use its own ``TLSMemoryBIOFactory``; these use ours, so both
ends of the tunnel get the tuned record path, whether dialled directly or through a proxy.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import interfaces
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.ssl import CertificateOptions
from zope.interface import implementer

from gateway.tls.fast import FastTLSFactory


@implementer(interfaces.IStreamClientEndpoint)
class TLSClientEndpoint:
    """Dial ``wrapped`` and run TLS over it with ``FastTLSProtocol``; yields the inner protocol."""

    def __init__(
        self,
        wrapped: interfaces.IStreamClientEndpoint,
        options: interfaces.IOpenSSLClientConnectionCreator,
        clock: interfaces.IReactorTime,
        congestion_control: str | None = None,
    ) -> None:
        self._wrapped, self._options, self._clock = wrapped, options, clock
        self._congestion_control = congestion_control

    def __repr__(self) -> str:
        return f"<TLS to {getattr(self._options, '_hostnameASCII', '?')}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        factory = FastTLSFactory(self._options, True, protocolFactory, clock=self._clock)
        factory.congestion_control = self._congestion_control
        d: Deferred[Any] = self._wrapped.connect(factory)
        return d.addCallback(lambda proto: proto.wrappedProtocol)


@implementer(interfaces.IStreamServerEndpoint)
class TLSServerEndpoint:
    """Listen on ``wrapped`` and run TLS on each accepted connection with ``FastTLSProtocol``."""

    def __init__(
        self,
        wrapped: interfaces.IStreamServerEndpoint,
        options: CertificateOptions,
        clock: interfaces.IReactorTime,
        congestion_control: str | None = None,
    ) -> None:
        self._wrapped, self._options, self._clock = wrapped, options, clock
        self._congestion_control = congestion_control

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[interfaces.IListeningPort]:
        factory = FastTLSFactory(self._options, False, protocolFactory, clock=self._clock)
        factory.congestion_control = self._congestion_control
        return self._wrapped.listen(factory)
