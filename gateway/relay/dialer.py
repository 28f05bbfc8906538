"""Open a stream to a gateway's target, as an engineer, on a tunnel this relay holds.

The last step of the engineer path, and the only one that touches a live tunnel.  The CONNECT
carries who asks (``engineer``) and the relay's id for this engineer connection
(``connection-id``), which the gateway uses in its logs, status and audit.  Only the request goes
out here: the gateway's answer arrives on the returned stream's ``response``.

Synchronous on purpose: opening a stream on a connected tunnel is a local act.  Forwarding to
another relay will be another dialer, over a tunnel between the relays held open the same way.
"""

from __future__ import annotations

from hpack import NeverIndexedHeaderTuple
from zope.interface import Interface, implementer

from gateway.relay.credentials import Engineer
from gateway.relay.gateways import GatewayTunnels
from gateway.relay.refusals import gateway_offline
from gateway.tunnel.errors import TunnelClosed
from gateway.tunnel.stream import TunnelStream
from gateway.wire import CONNECTION_ID_HEADER, ENGINEER_HEADER, clean_reason


class IGatewayDialer(Interface):
    def dial(gateway_id: str, engineer: Engineer, target: str, connection_id: str) -> TunnelStream:
        """The upstream stream to ``target`` on ``gateway_id``, its request sent.

        Raises `gateway.relay.refusals.Refused` (``gateway-offline``) without a tunnel to use.
        """


@implementer(IGatewayDialer)
class LocalDialer:
    """Dials on the tunnels this relay process holds."""

    def __init__(self, tunnels: GatewayTunnels) -> None:
        self._tunnels = tunnels

    def dial(
        self, gateway_id: str, engineer: Engineer, target: str, connection_id: str
    ) -> TunnelStream:
        tunnel = self._tunnels.get(gateway_id)
        if tunnel is None or tunnel.draining:
            raise gateway_offline(gateway_id)
        try:
            return tunnel.open_stream(
                target,
                headers=[
                    (ENGINEER_HEADER, clean_reason(engineer.name)),
                    # Unique per stream: indexing it in HPACK's table would only evict entries
                    # worth keeping (engineer names) and lengthen every later header's lookup.
                    NeverIndexedHeaderTuple(CONNECTION_ID_HEADER, connection_id.encode("ascii")),
                ],
            )
        except TunnelClosed as e:
            raise gateway_offline(gateway_id, str(e)) from None
