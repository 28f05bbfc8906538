"""``gateway run``: compose the edge daemon's services.  ``makeService`` starts nothing.

The parts meet here and nowhere else: the link and the forwarder report to one ``FanOut`` of
events, whose consumers are the metrics, the status model (tunnel state machine and live
connections) and, with the consent work, the audit trail; the status page reads a ``StatusView``.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry
from prometheus_client.twisted import MetricsResource
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Site

from gateway.audit import IAuditTrail
from gateway.auditlog.writer import open_daemon_trail
from gateway.config import GatewayConfig
from gateway.edge.access import AccessPolicy
from gateway.edge.control import ControlRoutes, info_route
from gateway.edge.dispatch import StreamDispatcher
from gateway.edge.events import FanOut
from gateway.edge.forwarder import StreamForwarder, tcp_connector
from gateway.edge.link import GatewayTunnelService, TunnelObserver, TunnelStatus, relay_endpoint
from gateway.edge.metrics import GatewayMetrics
from gateway.edge.status import LiveConnections, StatusView
from gateway.net.endpoints import listen_endpoint, quiet_factory
from gateway.reactor import IGatewayReactor
from gateway.tls import load_identity
from gateway.tunnel.batch import WriteBatch
from gateway.tunnel.connection import TunnelConnection
from gateway.web.status import status_root


class EdgeDaemon(MultiService):
    """The gateway daemon's service tree, with the pieces tests and the status page reach for."""

    def __init__(self, config: GatewayConfig, reactor: IGatewayReactor) -> None:
        super().__init__()
        self.config = config
        # The audit trail first: an unwritable state directory stops start-up in one line, and
        # everything built below may record through it.
        self.audit_file = open_daemon_trail(
            config.state_dir, config_file=config.path, clock=reactor
        )
        self.audit: IAuditTrail = self.audit_file
        link = config.relay
        relay = str(link.address)
        identity = load_identity(link.cert, link.key)  # fails early on an unreadable pair
        self.gateway_id = _common_name(identity.original.to_cryptography())
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, reactor)
        self.metrics.set_certificate(link.cert.read_bytes())
        self.tunnel_status = TunnelStatus(relay, reactor)
        self.connections = LiveConnections()
        # Every event goes to every consumer; the audit trail will be added here too.
        self.events = FanOut(self.metrics, self.tunnel_status, self.connections)
        self.policy = AccessPolicy(
            config.targets, config.access_mode, on_mode_change=self.events.access_mode_changed
        )
        self.forwarder = StreamForwarder(
            policy=self.policy,
            connect=tcp_connector(reactor),
            clock=reactor,
            events=self.events,
            counter=self.events,
            half_close_timeout=config.half_close_timeout,
        )
        self.control = ControlRoutes(
            [info_route(self.gateway_id, self.policy, lambda: len(self.forwarder.active))]
        )
        self.dispatcher = StreamDispatcher(self.forwarder, self.control)
        self.observer = TunnelObserver(relay, self.events)
        self.view = StatusView(self.gateway_id, self.tunnel_status, self.policy, self.connections)
        self.batch = batch = WriteBatch()  # one per daemon, shared by its tunnel connections

        def make_tunnel() -> TunnelConnection:
            return TunnelConnection(
                client_side=False,
                clock=reactor,
                handler=self.dispatcher,
                observer=self.observer,
                heartbeat_interval=link.heartbeat.interval,
                heartbeat_timeout=link.heartbeat.timeout,
                ready_timeout=link.connect_timeout + link.heartbeat.timeout,
                batch=batch,
            )

        self.tunnel_factory = quiet_factory(make_tunnel)
        self.tunnel = GatewayTunnelService(
            link=link,
            reactor=reactor,
            endpoint=relay_endpoint(link, reactor),
            make_protocol=self.tunnel_factory,
            observer=self.observer,
            drain_timeout=config.drain_timeout,
        )
        # Local listeners first: a port already in use stops start-up before anything dials out.
        if config.status_listen is not None:
            StreamServerEndpointService(
                listen_endpoint(reactor, config.status_listen), Site(status_root(self.view))
            ).setServiceParent(self)
        if config.metrics_listen is not None:
            root = Resource()
            root.putChild(b"metrics", MetricsResource(registry=self.registry))
            StreamServerEndpointService(
                listen_endpoint(reactor, config.metrics_listen), Site(root)
            ).setServiceParent(self)
        self.tunnel.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        """Stop everything, then flush and close the audit trail (records made while streams
        drain still reach it)."""
        stopped: Deferred[None] = super().stopService()
        stopped.addBoth(self._close_audit)
        return stopped

    def _close_audit(self, result: object) -> object:
        self.audit_file.close()
        return result


def _common_name(certificate: x509.Certificate) -> str:
    """Who we are: the subject's common name (the relay checks it against the id rule)."""
    value = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value.decode() if isinstance(value, bytes) else value


def makeService(config: GatewayConfig, reactor: IGatewayReactor) -> EdgeDaemon:
    return EdgeDaemon(config, reactor)
