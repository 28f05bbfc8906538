"""Where a gateway is: never seen, offline, or online with its tunnel at this relay.

The engineer path asks the directory before it dials.  The answer is data, never a live tunnel: a
directory shared by several relays (Redis, BRIEF section 2) can say where a gateway's tunnel is,
not hand it out.  The tunnels themselves stay with the relay process that accepted them
(`gateway.relay.gateways.GatewayTunnels`), which tells the directory when one comes and goes.

Every method returns a Deferred.  The memory directory's have fired already, so the engineer path
runs to the dial in the same reactor turn as the request arrived (time to first byte).
"""

from __future__ import annotations

import enum

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer


class Presence(enum.Enum):
    UNKNOWN = "unknown"
    """No gateway of that id ever connected (since this relay started)."""
    OFFLINE = "offline"
    """The gateway connected before; its tunnel is down now."""
    HERE = "here"
    """Online: its live tunnel ends at this relay.  (Shared locations will add a presence for
    "online at another relay", whose streams are forwarded there.)"""


@frozen
class GatewayLocation:
    gateway_id: str
    presence: Presence
    connected_since: float | None = None
    """When the current tunnel came up (online only)."""
    last_seen: float | None = None
    """When the gateway last connected or disconnected (never for an unknown gateway)."""

    @property
    def online(self) -> bool:
        return self.presence is Presence.HERE


class IGatewayDirectory(Interface):
    def locate(gateway_id: str) -> Deferred[GatewayLocation]:
        """Where ``gateway_id`` is now."""

    def gateway_connected(gateway_id: str) -> Deferred[None]:
        """This relay now holds the gateway's live tunnel (a newer one replaces an older)."""

    def gateway_disconnected(gateway_id: str) -> Deferred[None]:
        """This relay no longer holds a live tunnel of the gateway."""


@implementer(IGatewayDirectory)
class MemoryGatewayDirectory:
    """One relay's directory, in memory: one small record per gateway it has seen."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._seen: dict[str, GatewayLocation] = {}

    def locate(self, gateway_id: str) -> Deferred[GatewayLocation]:
        location = self._seen.get(gateway_id)
        return succeed(location or GatewayLocation(gateway_id, Presence.UNKNOWN))

    def gateway_connected(self, gateway_id: str) -> Deferred[None]:
        now = self._clock.seconds()
        self._seen[gateway_id] = GatewayLocation(gateway_id, Presence.HERE, now, now)
        return succeed(None)

    def gateway_disconnected(self, gateway_id: str) -> Deferred[None]:
        if gateway_id in self._seen:
            now = self._clock.seconds()
            self._seen[gateway_id] = GatewayLocation(gateway_id, Presence.OFFLINE, None, now)
        return succeed(None)
