"""Gateway tunnels arriving at this relay: who each is, and the live ones this process holds.

A gateway is who its client certificate says, by the one rule (`gateway.identity`): a certificate
whose subject is not a valid gateway id (issued before the rule, say ``plant_7``) is refused and
the gateway told why.  One live tunnel per id: a newer connection replaces the older one.

`GatewayTunnels` is this process's own table of live tunnels: only the dialer opens streams on
them.  The directory (`gateway.relay.directory`) hears where gateways are, never the tunnels.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.identity import InvalidGatewayId, gateway_id_of_peer
from gateway.relay.directory import IGatewayDirectory
from gateway.relay.metrics import RelayMetrics
from gateway.tls.errors import describe_tls_failure
from gateway.tunnel.connection import ITunnelObserver, TunnelConnection

log = Logger()


class GatewayTunnels:
    """The live tunnel of each gateway connected to this relay process."""

    def __init__(self) -> None:
        self._live: dict[str, TunnelConnection] = {}

    def add(self, gateway_id: str, tunnel: TunnelConnection) -> TunnelConnection | None:
        """Make ``tunnel`` the gateway's live one; returns the tunnel it replaces, if any."""
        previous = self._live.get(gateway_id)
        self._live[gateway_id] = tunnel
        return previous

    def remove(self, gateway_id: str, tunnel: TunnelConnection) -> bool:
        """Forget ``tunnel`` if it is still the gateway's live one (not if a newer replaced it)."""
        if self._live.get(gateway_id) is not tunnel:
            return False
        del self._live[gateway_id]
        return True

    def get(self, gateway_id: str) -> TunnelConnection | None:
        return self._live.get(gateway_id)

    def __len__(self) -> int:
        return len(self._live)


def _peer_host(connection: TunnelConnection) -> str:
    peer = connection.transport.getPeer() if connection.transport else None
    return str(getattr(peer, "host", peer))


@implementer(ITunnelObserver)
class GatewayPeer:
    """Watches one gateway connection: takes it in once HTTP/2 is up, forgets it when lost."""

    def __init__(
        self, tunnels: GatewayTunnels, directory: IGatewayDirectory, metrics: RelayMetrics
    ) -> None:
        self.tunnels = tunnels
        self.directory = directory
        self.metrics = metrics
        self.gateway_id: str | None = None
        self.name = "a gateway"

    def tunnel_ready(self, connection: TunnelConnection) -> None:
        try:
            gateway_id = gateway_id_of_peer(connection.transport)
        except InvalidGatewayId as e:
            self._refuse_certificate(connection, str(e))
            return
        self.gateway_id, self.name = gateway_id, f"gateway {gateway_id}"
        previous = self.tunnels.add(gateway_id, connection)
        self.metrics.gateways_connected.set(len(self.tunnels))
        self._tell_directory(self.directory.gateway_connected(gateway_id), "connected")
        peer = _peer_host(connection)
        if previous is not None:
            log.info(
                "gateway {gw} connected again from {peer}; replacing its previous tunnel",
                gw=gateway_id,
                peer=peer,
            )
            previous.close(
                why=f"replaced by a newer connection of gateway {gateway_id} from "
                f"{peer}: is this certificate installed on two machines?"
            )
        else:
            log.info("gateway {gw} connected from {peer}", gw=gateway_id, peer=peer)

    def _refuse_certificate(self, connection: TunnelConnection, why: str) -> None:
        """Count it, log it with the address, and tell the gateway (GOAWAY debug data)."""
        self.metrics.auth_failures.labels(kind="gateway_certificate").inc()
        log.warn(
            "gateway certificate from {peer} not accepted: {why}; closing",
            peer=_peer_host(connection),
            why=why,
        )
        connection.close(why=f"certificate: {why}")

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
        if self.tunnels.remove(self.gateway_id, connection):
            self._tell_directory(
                self.directory.gateway_disconnected(self.gateway_id), "disconnected"
            )
        self.metrics.gateways_connected.set(len(self.tunnels))
        log.info(
            "gateway {gw} disconnected: {why}",
            gw=self.gateway_id,
            why=describe_tls_failure(reason),
        )

    def _tell_directory(self, told: Deferred[None], what: str) -> None:
        told.addErrback(
            lambda f: log.failure(
                "the gateway directory did not record that {gw} {what}",
                f,
                gw=self.gateway_id,
                what=what,
            )
        )
