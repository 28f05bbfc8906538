"""The portal's listener, built from ``[portal]`` and the relay's own parts."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.web.server import Site

from gateway.config import PortalConfig
from gateway.net.endpoints import listen_endpoint
from gateway.relay.portal.core import Portal
from gateway.relay.portal.pages import PortalPages
from gateway.relay.portal.proxy import PortalConnection
from gateway.tls import FastTLSFactory
from gateway.tls.options import TLS12_CIPHERS, load_identity


class _PortalFactory(Factory):
    noisy = False

    def __init__(self, portal: Portal, pages: Site) -> None:
        self.portal = portal
        self.pages = pages

    def buildProtocol(self, addr: Any) -> Protocol:
        return PortalConnection(self.portal, self.pages, str(getattr(addr, "host", addr)))


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


def portal_service(
    config: PortalConfig, portal: Portal, reactor: Any
) -> StreamServerEndpointService:
    site = Site(PortalPages(portal), reactor=reactor)
    site.displayTracebacks = False
    tls = FastTLSFactory(portal_tls(config), False, _PortalFactory(portal, site), clock=reactor)
    return StreamServerEndpointService(listen_endpoint(reactor, config.listen), tls)
