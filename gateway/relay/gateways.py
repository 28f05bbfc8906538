"""Gateway tunnels arriving at the relay: identify each by its certificate, one tunnel per id."""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.relay.directory import IGatewayRegistry
from gateway.relay.metrics import RelayMetrics
from gateway.tls import peer_common_name
from gateway.tls.errors import describe_tls_failure
from gateway.tunnel.connection import ITunnelObserver, TunnelConnection

log = Logger()


@implementer(ITunnelObserver)
class GatewayPeer:
    """Watches one gateway connection: registers it once HTTP/2 is up, forgets it when lost."""

    def __init__(self, registry: IGatewayRegistry, metrics: RelayMetrics) -> None:
        self.registry = registry
        self.metrics = metrics
        self.gateway_id: str | None = None
        self.name = "a gateway"

    def tunnel_ready(self, connection: TunnelConnection) -> None:
        gateway_id = peer_common_name(connection.transport)
        if not gateway_id:
            log.warn("gateway certificate without a usable subject CN; closing")
            self.metrics.auth_failures.labels(kind="gateway_certificate").inc()
            connection.close()
            return
        self.gateway_id, self.name = gateway_id, f"gateway {gateway_id}"
        previous = self.registry.register(gateway_id, connection)
        self.metrics.gateways_connected.set(self.registry.connected_count())
        peer = connection.transport.getPeer() if connection.transport else None
        if previous is not None:
            log.info(
                "gateway {gw} connected again from {peer}; replacing its previous tunnel",
                gw=gateway_id,
                peer=str(getattr(peer, "host", peer)),
            )
            previous.close(
                why=f"replaced by a newer connection of gateway {gateway_id} from "
                f"{getattr(peer, 'host', peer)}: is this certificate installed on two machines?"
            )
        else:
            log.info(
                "gateway {gw} connected from {peer}",
                gw=gateway_id,
                peer=str(getattr(peer, "host", peer)),
            )

    def tunnel_rtt(self, connection: TunnelConnection, seconds: float) -> None:
        pass

    def tunnel_lost(self, connection: TunnelConnection, reason: Failure) -> None:
        if self.gateway_id is None:
            if not connection.is_ready:
                self.metrics.auth_failures.labels(kind="gateway_handshake").inc()
                log.info(
                    "gateway connection failed before HTTP/2: {why}",
                    why=describe_tls_failure(reason),
                )
            return
        self.registry.unregister(self.gateway_id, connection)
        self.metrics.gateways_connected.set(self.registry.connected_count())
        log.info(
            "gateway {gw} disconnected: {why}",
            gw=self.gateway_id,
            why=describe_tls_failure(reason),
        )
