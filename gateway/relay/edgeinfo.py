"""Ask a connected gateway what it offers: its access mode, targets and target groups.

The relay's own question on the gateway's tunnel (``GET INFO_PATH``), answered with a
`gateway.wire.EdgeInfo` (a `GroupedEdgeInfo` when it has groups).  The portal asks it to show a
gateway's card, the engineer listener to answer ``gateway connect --group`` on
``GATEWAY_INFO_PATH``.  Bounded both ways: `INFO_TIMEOUT` seconds and `MAX_INFO` bytes, and only
the known fields are kept, each checked and cut to a bounded length.  It never fails: what went
wrong is in `EdgeOffer.problem`.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from attrs import field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.relay.gateways import GatewayTunnels
from gateway.tunnel.errors import TunnelClosed
from gateway.wire import INFO_PATH

__all__ = ["INFO_TIMEOUT", "MAX_INFO", "EdgeOffer", "ask_edge_info", "read_offer"]

INFO_TIMEOUT = 2.0
"""Seconds a gateway has to say what it offers (it answers at once unless it is stuck)."""
MAX_INFO = 64 * 1024


@frozen
class EdgeOffer:
    """What a gateway said it offers, checked; ``problem`` instead when it could not say."""

    online: bool
    mode: str | None = None
    targets: list[str] = field(factory=list)
    groups: dict[str, dict[str, str]] = field(factory=dict)
    """``{group: {"port": member}}``, the first member the group's page."""
    problem: str | None = None


def read_offer(body: bytes) -> EdgeOffer:
    """The gateway's answer, bounded; raises ValueError for anything else."""
    try:
        data = json.loads(body)
        mode = str(data["access_mode"])[:40]
        targets = [str(t)[:64] for t in data["targets"]][:200]
        groups = {
            str(name)[:64]: {str(port)[:5]: str(m)[:64] for port, m in members.items()}
            for name, members in list(dict(data.get("groups") or {}).items())[:50]
        }
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a gateway's info: {e}") from None
    return EdgeOffer(online=True, mode=mode, targets=targets, groups=groups)


def ask_edge_info(
    tunnels: GatewayTunnels, gateway_id: str, clock: IReactorTime, timeout: float = INFO_TIMEOUT
) -> Deferred[EdgeOffer]:
    """What ``gateway_id`` offers now, asked on its live tunnel (offline without one)."""
    tunnel = tunnels.get(gateway_id)
    if tunnel is None:
        return succeed(EdgeOffer(online=False))
    try:
        stream = tunnel.open_stream(gateway_id, method="GET", path=INFO_PATH, end_stream=True)
    except TunnelClosed as e:
        return succeed(EdgeOffer(online=False, problem=str(e)))
    done: Deferred[EdgeOffer] = Deferred()
    timer = clock.callLater(timeout, lambda: finish(None, "no answer in time"))

    def finish(body: bytes | None, problem: str | None = None) -> None:
        if done.called:
            return
        if timer.active():
            timer.cancel()
        if body is None:
            done.callback(EdgeOffer(online=True, problem=problem))  # first: aborting re-enters
            if not stream.finished:
                stream.abortConnection()
            return
        try:
            offer = read_offer(body)
        except ValueError:
            offer = EdgeOffer(online=True, problem="unreadable answer")
        done.callback(offer)

    stream.attach(_Collect(MAX_INFO, finish))
    stream.response.addErrback(lambda f: finish(None, f.getErrorMessage()))
    return done


@implementer(IHalfCloseableProtocol)
class _Collect(Protocol):
    def __init__(self, limit: int, done: Callable[[bytes | None, str | None], None]) -> None:
        self._limit, self._done, self._size = limit, done, 0
        self._parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            self._done(None, "answer too long")
            return
        self._parts.append(data)

    def readConnectionLost(self) -> None:
        self._done(b"".join(self._parts), None)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._done(None, "the answer broke off")
