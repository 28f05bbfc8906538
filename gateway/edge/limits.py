"""How many engineer streams the gateway carries at once: per target, per engineer, per tunnel.

Each stream the gateway accepts costs a descriptor on the edge PC and a connection on the
processor, and a PLC's web server has a handful of HTTP slots: one engineer's browser (or script)
opening 300 streams to it would flood the processor and, with enough of them, leave the gateway
no descriptors for anything else.  So every ``CONNECT`` the access decision allowed also needs a
slot here (`StreamLimiter.admit`), refused with ``Refusal.LIMIT_REACHED`` and a reason naming the
limit and its key in gateway.toml when one is full.

A slot is held from the decision until the processor connection is gone (or its dialling failed),
not only while the tunnel stream lives: what the limits protect is the processor and the gateway's
descriptors, and a connection being dialled uses both.  The forwarder asks once per stream and
hands the slot the dialling (`StreamSlot.hold`); nothing else has to remember to give it back.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.config import StreamLimits
from gateway.edge.access import AccessRequest, Refused
from gateway.logsafe import RateLimitedLog, peer_text
from gateway.splice import SpliceEnd
from gateway.wire import Refusal

__all__ = ["StreamLimiter", "StreamSlot"]

log = Logger()

K = TypeVar("K", str, int)


class StreamSlot:
    """One admitted stream's place in the counts; released exactly once."""

    __slots__ = ("_keys", "_limiter")

    def __init__(self, limiter: StreamLimiter, keys: tuple[str, str, int]) -> None:
        self._limiter: StreamLimiter | None = limiter
        self._keys = keys

    def release(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._release(self._keys)

    @property
    def held(self) -> bool:
        return self._limiter is not None

    def hold(self, dialling: Deferred[Any], processor: SpliceEnd) -> None:
        """Keep the slot while ``processor`` is being dialled and connected: released when the
        dial fails, or when that connection is lost.  Add this before the dial's own callbacks
        (it passes the result on untouched)."""

        def settled(result: object) -> object:
            if isinstance(result, Failure):
                self.release()
                return result
            before = processor.on_lost

            def lost(reason: Failure) -> None:
                self.release()
                if before is not None:
                    before(reason)

            processor.on_lost = lost
            return result

        dialling.addBoth(settled)


class StreamLimiter:
    """Counts the streams open per target, per engineer and per tunnel against `StreamLimits`."""

    def __init__(self, limits: StreamLimits, clock: IReactorTime) -> None:
        self.limits = limits
        self._targets: dict[str, int] = {}
        self._engineers: dict[str, int] = {}
        self._tunnels: dict[int, int] = {}
        self._log = RateLimitedLog(clock, burst=1)

    def admit(self, request: AccessRequest, tunnel: object) -> StreamSlot | Refused:
        """A slot for ``request`` arriving on ``tunnel`` (the connection carrying the stream),
        or why not: the first limit that is full, target before engineer before tunnel."""
        target, engineer, tunnel_key = request.target, request.engineer, id(tunnel)
        limits = self.limits
        reason = None
        if self._targets.get(target, 0) >= limits.streams_per_target:
            reason = (
                f"target {target!r} already has {limits.streams_per_target} streams open, the "
                "most this gateway allows (limits.streams_per_target in gateway.toml); close "
                "some and try again"
            )
            kind = "target"
        elif self._engineers.get(engineer, 0) >= limits.streams_per_engineer:
            reason = (
                f"engineer {engineer!r} already has {limits.streams_per_engineer} streams open "
                "through this gateway, the most it allows (limits.streams_per_engineer in "
                "gateway.toml); close some and try again"
            )
            kind = "engineer"
        elif self._tunnels.get(tunnel_key, 0) >= limits.streams_per_tunnel:
            reason = (
                f"the tunnel already carries {limits.streams_per_tunnel} streams, the most this "
                "gateway allows (limits.streams_per_tunnel in gateway.toml); try again later"
            )
            kind = "tunnel"
        if reason is not None:
            self._log.warn(
                log,
                "stream limit reached: refusing {engineer}'s streams to {target} "
                "(limits.streams_per_{limit})",
                kind=f"limit-{kind}",
                limit=kind,
                engineer=peer_text(engineer),
                target=peer_text(target),
            )
            return Refused(Refusal.LIMIT_REACHED, reason)
        self._targets[target] = self._targets.get(target, 0) + 1
        self._engineers[engineer] = self._engineers.get(engineer, 0) + 1
        self._tunnels[tunnel_key] = self._tunnels.get(tunnel_key, 0) + 1
        return StreamSlot(self, (target, engineer, tunnel_key))

    def open_streams(self, *, target: str | None = None, engineer: str | None = None) -> int:
        """Streams holding a slot now, for one target or engineer (or all)."""
        if target is not None:
            return self._targets.get(target, 0)
        if engineer is not None:
            return self._engineers.get(engineer, 0)
        return sum(self._tunnels.values())

    def stop(self) -> None:
        """Write any pending log summary now; leaves no timer behind."""
        self._log.stop()

    def _release(self, keys: tuple[str, str, int]) -> None:
        target, engineer, tunnel = keys
        _less(self._targets, target)
        _less(self._engineers, engineer)
        _less(self._tunnels, tunnel)


def _less(counts: dict[K, int], key: K) -> None:
    """One fewer for ``key``; no entry is left behind for a past tunnel, engineer or target."""
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
