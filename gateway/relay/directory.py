"""Where each gateway's live tunnel is, behind a small interface.

Today one relay keeps this in memory.  When several relays share gateway locations through Redis,
another implementation of `IGatewayRegistry` slots in and the tunnel code does not change.
"""

from __future__ import annotations

from attrs import define
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

from gateway.tunnel.connection import TunnelConnection


@define
class GatewayRecord:
    gateway_id: str
    tunnel: TunnelConnection | None
    connected_since: float | None
    last_seen: float


class IGatewayRegistry(Interface):
    def register(gateway_id: str, tunnel: TunnelConnection) -> TunnelConnection | None:
        """Record the live tunnel of a gateway; returns the tunnel it replaces, if any."""

    def unregister(gateway_id: str, tunnel: TunnelConnection) -> None:
        """Forget ``tunnel`` (only if it is still the gateway's current one)."""

    def lookup(gateway_id: str) -> GatewayRecord | None:
        """The gateway's record, or None if it never connected."""

    def connected_count() -> int:
        """How many gateways have a live tunnel."""


@implementer(IGatewayRegistry)
class MemoryGatewayRegistry:
    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._records: dict[str, GatewayRecord] = {}
        self._live = 0

    def register(self, gateway_id: str, tunnel: TunnelConnection) -> TunnelConnection | None:
        now = self._clock.seconds()
        record = self._records.get(gateway_id)
        if record is None:
            record = self._records[gateway_id] = GatewayRecord(gateway_id, None, None, now)
        previous = record.tunnel
        if previous is None:
            self._live += 1
        record.tunnel, record.connected_since, record.last_seen = tunnel, now, now
        return previous

    def unregister(self, gateway_id: str, tunnel: TunnelConnection) -> None:
        record = self._records.get(gateway_id)
        if record is None or record.tunnel is not tunnel:
            return
        record.tunnel, record.connected_since = None, None
        record.last_seen = self._clock.seconds()
        self._live -= 1

    def lookup(self, gateway_id: str) -> GatewayRecord | None:
        return self._records.get(gateway_id)

    def connected_count(self) -> int:
        return self._live
