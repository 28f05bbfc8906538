"""Fakes for the edge daemon's event interfaces, for tests (each checked with ``verifyObject``)."""

from __future__ import annotations

from attrs import define, field
from zope.interface import implementer

from gateway.config import AccessMode
from gateway.edge.access import AccessRequest
from gateway.edge.events import (
    ConnectionRecord,
    IAccessEvents,
    IByteCounter,
    IStreamEvents,
    ITunnelEvents,
)
from gateway.wire import Refusal


@implementer(ITunnelEvents, IStreamEvents, IAccessEvents)
@define
class RecordingEvents:
    """Keeps every event it hears, in order, as ``(event name, *arguments)``."""

    seen: list[tuple[object, ...]] = field(factory=list)

    def named(self, name: str) -> list[tuple[object, ...]]:
        """The arguments of every ``name`` event."""
        return [e[1:] for e in self.seen if e[0] == name]

    def tunnel_up(self, why: str) -> None:
        self.seen.append(("tunnel_up", why))

    def tunnel_down(self, why: str) -> None:
        self.seen.append(("tunnel_down", why))

    def tunnel_failed(self, why: str) -> None:
        self.seen.append(("tunnel_failed", why))

    def tunnel_stopped(self, why: str) -> None:
        self.seen.append(("tunnel_stopped", why))

    def tunnel_rtt(self, seconds: float) -> None:
        self.seen.append(("tunnel_rtt", seconds))

    def stream_opened(self, connection: ConnectionRecord) -> None:
        self.seen.append(("stream_opened", connection))

    def stream_closed(
        self, connection: ConnectionRecord, bytes_to_target: int, bytes_from_target: int, why: str
    ) -> None:
        self.seen.append(("stream_closed", connection, bytes_to_target, bytes_from_target, why))

    def stream_refused(self, request: AccessRequest, refusal: Refusal, reason: str) -> None:
        self.seen.append(("stream_refused", request, refusal, reason))

    def access_mode_changed(self, old: AccessMode, new: AccessMode) -> None:
        self.seen.append(("access_mode_changed", old, new))


@implementer(IByteCounter)
@define
class ByteTally:
    """Adds up the bytes counted each way."""

    to_target: int = 0
    from_target: int = 0

    def bytes_to_target(self, n: int) -> None:
        self.to_target += n

    def bytes_from_target(self, n: int) -> None:
        self.from_target += n
