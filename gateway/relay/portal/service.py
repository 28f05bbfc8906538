"""The portal's listener, built from ``[portal]`` and the relay's own parts."""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.web.server import Site

from gateway.config import Address, PortalConfig
from gateway.net.endpoints import listen_endpoint
from gateway.relay.portal.core import Portal
from gateway.relay.portal.pages import PortalPages
from gateway.relay.portal.proxy import PortalConnection
from gateway.tls import FastTLSFactory
from gateway.tls.options import TLS12_CIPHERS, load_identity

MAX_PER_SOURCE = 256
"""Browser connections from one address at once: a browser opens about six per origin, and an
engineer may have a few dozen pages of several targets open; more is someone else."""


class PortalFactory(Factory):
    """Builds each browser connection's router; bounds the connections per source address."""

    noisy = False

    def __init__(
        self, portal: Portal, pages: Site, clock: Any, max_per_source: int = MAX_PER_SOURCE
    ) -> None:
        self.portal = portal
        self.pages = pages
        self.clock = clock
        self.max_per_source = max_per_source
        self.open: Counter[str] = Counter()

    def admits(self, addr: Any) -> bool:
        return self.open[str(getattr(addr, "host", addr))] < self.max_per_source

    def buildProtocol(self, addr: Any) -> Protocol:
        host = str(getattr(addr, "host", addr))
        self.open[host] += 1
        return PortalConnection(
            self.portal, self.pages, host, self.clock, on_lost=lambda: self._lost(host)
        )

    def _lost(self, host: str) -> None:
        self.open[host] -= 1
        if self.open[host] <= 0:
            del self.open[host]


class _LimitedTLS(FastTLSFactory):
    """TLS for the portal, refusing a connection over its source's limit before any TLS work
    (None from ``buildProtocol``: Twisted closes the socket at once)."""

    def buildProtocol(self, addr: Any) -> Any:
        wrapped = self.wrappedFactory
        if isinstance(wrapped, PortalFactory) and not wrapped.admits(addr):
            return None
        return super().buildProtocol(addr)


def portal_tls(config: PortalConfig) -> CertificateOptions:
    """HTTPS for browsers: the portal's certificate, TLS 1.2 or later, HTTP/1.1 only."""
    identity = load_identity(config.cert, config.key)
    return CertificateOptions(
        privateKey=identity.privateKey.original.to_cryptography_key(),
        certificate=identity.original.to_cryptography(),
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=TLS12_CIPHERS,
        acceptableProtocols=[b"http/1.1"],
    )


def portal_service(config: PortalConfig, portal: Portal, reactor: Any) -> MultiService:
    """The portal's listener, and one more on each of ``extra_ports`` (target groups)."""
    site = Site(PortalPages(portal), reactor=reactor)
    site.displayTracebacks = False
    factory = PortalFactory(portal, site, reactor)
    tls = _LimitedTLS(portal_tls(config), False, factory, clock=reactor)
    top = MultiService()
    for port in (config.listen.port, *config.extra_ports):
        address = Address(config.listen.host, port)
        StreamServerEndpointService(listen_endpoint(reactor, address), tls).setServiceParent(top)
    return top
