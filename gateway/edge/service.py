"""``gateway run``: compose the edge daemon's services.  ``makeService`` starts nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.twisted import MetricsResource
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.web.resource import Resource
from twisted.web.server import Site

from gateway import __version__
from gateway.config import GatewayConfig
from gateway.edge.access import AccessPolicy
from gateway.edge.control import ControlRoutes, info_route
from gateway.edge.dispatch import StreamDispatcher
from gateway.edge.forwarder import StreamForwarder, tcp_connector
from gateway.edge.link import (
    GatewayTunnelService,
    TunnelState,
    relay_endpoint,
)
from gateway.edge.metrics import GatewayMetrics
from gateway.net.endpoints import listen_endpoint, quiet_factory
from gateway.reactor import IGatewayReactor
from gateway.tls import load_identity
from gateway.tunnel.batch import WriteBatch
from gateway.tunnel.connection import TunnelConnection
from gateway.web.status import status_root


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


class EdgeDaemon(MultiService):
    """The gateway daemon's service tree, with the pieces tests and the status page reach for."""

    def __init__(self, config: GatewayConfig, reactor: IGatewayReactor) -> None:
        super().__init__()
        self.config = config
        identity = load_identity(config.relay.cert, config.relay.key)
        self.gateway_id = identity.getSubject().commonName.decode()
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, reactor)
        self.metrics.set_certificate(config.relay.cert.read_bytes())
        self.policy = AccessPolicy(config.targets, config.access_mode)
        self.forwarder = StreamForwarder(
            policy=self.policy,
            connect=tcp_connector(reactor),
            clock=reactor,
            events=self.metrics,
            half_close_timeout=config.half_close_timeout,
        )
        self.control = ControlRoutes(
            [info_route(self.gateway_id, self.policy, lambda: len(self.forwarder.active))]
        )
        self.dispatcher = StreamDispatcher(self.forwarder, self.control)
        self.state = TunnelState(str(config.relay.address), reactor, self.metrics)
        link = config.relay
        batch = WriteBatch()

        def make_tunnel() -> TunnelConnection:
            return TunnelConnection(
                client_side=False,
                clock=reactor,
                handler=self.dispatcher,
                observer=self.state,
                heartbeat_interval=link.heartbeat.interval,
                heartbeat_timeout=link.heartbeat.timeout,
                ready_timeout=link.connect_timeout + link.heartbeat.timeout,
                batch=batch,
            )

        self.tunnel = GatewayTunnelService(
            link=link,
            reactor=reactor,
            endpoint=relay_endpoint(link, reactor),
            make_protocol=quiet_factory(make_tunnel),
            state=self.state,
            drain_timeout=config.drain_timeout,
        )
        # Local listeners first: a port already in use stops start-up before anything dials out.
        if config.status_listen is not None:
            StreamServerEndpointService(
                listen_endpoint(reactor, config.status_listen), Site(status_root(self.status))
            ).setServiceParent(self)
        if config.metrics_listen is not None:
            root = Resource()
            root.putChild(b"metrics", MetricsResource(registry=self.registry))
            StreamServerEndpointService(
                listen_endpoint(reactor, config.metrics_listen), Site(root)
            ).setServiceParent(self)
        self.tunnel.setServiceParent(self)

    def status(self) -> dict[str, Any]:
        """The status JSON contract (BRIEF section 3)."""
        state = self.state
        return {
            "id": self.gateway_id,
            "version": __version__,
            "tunnel": {
                "state": state.phase.value,
                "since": _iso(state.since),
                "relay": state.relay,
                "rtt_ms": None if state.rtt is None else round(state.rtt * 1000, 2),
                "last_error": state.last_error,
                "connects": state.connects,
            },
            "access": {"mode": self.policy.mode.value, "targets": self.policy.target_names},
            "sessions": [],
            "connections": [
                {
                    "id": c.id,
                    "target": c.target,
                    "engineer": c.engineer,
                    "started": _iso(c.started),
                    "bytes_to_target": c.bytes_to_target,
                    "bytes_from_target": c.bytes_from_target,
                }
                for c in self.forwarder.active.values()
            ],
            "checks": [],
        }


def makeService(config: GatewayConfig, reactor: IGatewayReactor) -> EdgeDaemon:
    return EdgeDaemon(config, reactor)
