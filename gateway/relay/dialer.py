"""Open a stream to a gateway's target, as an engineer, on a tunnel this relay holds.

The last step of the engineer path, and the only one that touches a live tunnel.  The CONNECT
carries who asks (``engineer``), the relay's id for this engineer connection (``connection-id``),
which the gateway uses in its logs, status and audit, and the session the engineer names
(``session``, already checked for its form).  A session ask is the same kind of request with
another method and path (``POST SESSION_PATH``), its body still to follow.  Only the request goes
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
from gateway.wire import (
    CONNECTION_ID_HEADER,
    ENGINEER_HEADER,
    SESSION_HEADER,
    SESSION_PATH,
    clean_reason,
)


class IGatewayDialer(Interface):
    def dial(
        gateway_id: str,
        engineer: Engineer,
        target: str,
        connection_id: str,
        session: str | None = None,
    ) -> TunnelStream:
        """The upstream stream to ``target`` on ``gateway_id``, its request sent (with the
        ``session`` header when one is given).

        Raises `gateway.relay.refusals.Refused` (``gateway-offline``) without a tunnel to use.
        """

    def ask_session(gateway_id: str, engineer: Engineer, connection_id: str) -> TunnelStream:
        """A ``POST SESSION_PATH`` to ``gateway_id``, its headers sent and the body to follow
        (the caller writes it and ends it); raises like `dial`."""


@implementer(IGatewayDialer)
class LocalDialer:
    """Dials on the tunnels this relay process holds."""

    def __init__(self, tunnels: GatewayTunnels) -> None:
        self._tunnels = tunnels

    def dial(
        self,
        gateway_id: str,
        engineer: Engineer,
        target: str,
        connection_id: str,
        session: str | None = None,
    ) -> TunnelStream:
        headers = _who(engineer, connection_id)
        if session is not None:
            headers.append((SESSION_HEADER, session.encode("ascii")))
        return self._open(gateway_id, target, headers)

    def ask_session(self, gateway_id: str, engineer: Engineer, connection_id: str) -> TunnelStream:
        headers = [*_who(engineer, connection_id), (b"content-type", b"application/json")]
        return self._open(gateway_id, gateway_id, headers, method="POST", path=SESSION_PATH)

    def _open(
        self,
        gateway_id: str,
        authority: str,
        headers: list[tuple[bytes, bytes]],
        *,
        method: str = "CONNECT",
        path: str | None = None,
    ) -> TunnelStream:
        tunnel = self._tunnels.get(gateway_id)
        if tunnel is None or tunnel.draining:
            raise gateway_offline(gateway_id)
        try:
            return tunnel.open_stream(authority, method=method, path=path, headers=headers)
        except TunnelClosed as e:
            raise gateway_offline(gateway_id, str(e)) from None


def _who(engineer: Engineer, connection_id: str) -> list[tuple[bytes, bytes]]:
    """Who asks: the engineer the relay authenticated, and this engineer connection's id."""
    return [
        (ENGINEER_HEADER, clean_reason(engineer.name)),
        # Unique per stream: indexing it in HPACK's table would only evict entries worth
        # keeping (engineer names) and lengthen every later header's lookup.
        NeverIndexedHeaderTuple(CONNECTION_ID_HEADER, connection_id.encode("ascii")),
    ]
