"""Gateway tunnels arriving at this relay: who each is, and the live ones this process holds.

A gateway is who its client certificate says, by the one rule (`gateway.identity`): a certificate
whose subject is not a valid gateway id (issued before the rule, say ``plant_7``) is refused and
the gateway told why.

One live tunnel per id, and the one that is there keeps its place while it answers.  A second
connection with the same id (the certificate copied to a second machine, a cloned edge PC) must
not take a working gateway over: the two would replace each other at every redial, cutting every
open stream each time.  So a newcomer is refused, with a GOAWAY saying which address holds the id,
while the tunnel there answered its last heartbeat PING; if that tunnel's PING is out, the newcomer
waits for the verdict: an answer keeps the old tunnel and refuses the newcomer, the heartbeat
dropping the old tunnel lets the newcomer in at once (the gateway redialled before the relay
noticed that its old connection died).  Every such case is counted
(``relay_gateway_id_conflicts_total{result}``), logged on both sides and audited.

`GatewayTunnels` is this process's own table of live tunnels: only the dialer opens streams on
them.  The directory (`gateway.relay.directory`) hears where gateways are, never the tunnels.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.audit import AuditWriteError, IAuditTrail
from gateway.identity import InvalidGatewayId, gateway_id_of_peer
from gateway.logsafe import RateLimitedLog, peer_address, peer_text
from gateway.relay.admission import ConnectionGuard
from gateway.relay.directory import IGatewayDirectory
from gateway.relay.metrics import RelayMetrics
from gateway.tls.errors import describe_tls_failure
from gateway.tunnel.connection import ITunnelObserver, TunnelConnection

log = Logger()


class News(enum.Enum):
    """What became of a live tunnel that a newcomer with its id waits on."""

    ANSWERED = "answered"
    """Its PING was answered: it is alive and keeps its place."""
    LOST = "lost"
    """It is gone (the heartbeat dropped it, or it closed): the id is free."""


@define
class LiveTunnel:
    """A gateway's live tunnel, where it comes from, and when it last answered a PING."""

    tunnel: TunnelConnection
    peer: str
    last_answer: float
    """When its last PING answer arrived (at first: when HTTP/2 came up)."""
    waiting: list[Callable[[News], None]] = field(factory=list)
    """Newcomers with this id waiting for what becomes of this tunnel."""

    def tell(self, news: News) -> None:
        waiting, self.waiting = self.waiting, []
        for tell in waiting:
            tell(news)


class GatewayTunnels:
    """The live tunnel of each gateway connected to this relay process."""

    def __init__(self) -> None:
        self._live: dict[str, LiveTunnel] = {}

    def add(
        self, gateway_id: str, tunnel: TunnelConnection, *, peer: str = "", now: float = 0.0
    ) -> TunnelConnection | None:
        """Make ``tunnel`` the gateway's live one; returns the tunnel it replaces, if any."""
        previous = self._live.get(gateway_id)
        self._live[gateway_id] = LiveTunnel(tunnel, peer, now)
        if previous is not None:
            previous.tell(News.LOST)
            return previous.tunnel
        return None

    def remove(self, gateway_id: str, tunnel: TunnelConnection) -> bool:
        """Forget ``tunnel`` if it is still the gateway's live one (not if a newer replaced it)."""
        live = self._live.get(gateway_id)
        if live is None or live.tunnel is not tunnel:
            return False
        del self._live[gateway_id]
        live.tell(News.LOST)
        return True

    def get(self, gateway_id: str) -> TunnelConnection | None:
        live = self._live.get(gateway_id)
        return None if live is None else live.tunnel

    def holder(self, gateway_id: str) -> LiveTunnel | None:
        return self._live.get(gateway_id)

    def live(self) -> dict[str, LiveTunnel]:
        """Every live tunnel by gateway id, a copy (the support desk lists them)."""
        return dict(self._live)

    def answered(self, gateway_id: str, tunnel: TunnelConnection, now: float) -> None:
        """The gateway's live tunnel answered a PING: it is alive."""
        live = self._live.get(gateway_id)
        if live is not None and live.tunnel is tunnel:
            live.last_answer = now
            live.tell(News.ANSWERED)

    def streams(self, gateway_id: str) -> int | None:
        """Streams open on the gateway's live tunnel now, or None without one."""
        live = self._live.get(gateway_id)
        return None if live is None else len(live.tunnel.streams)

    def __len__(self) -> int:
        return len(self._live)


class Standing(enum.Enum):
    ALIVE = "alive"
    """It answered its last PING and the next is not due: it keeps its place."""
    ASKED = "asked"
    """A PING is out: its answer, or the heartbeat dropping the tunnel, decides."""


def standing(live: LiveTunnel, now: float, interval: float) -> Standing:
    """Where a live tunnel stands when a newcomer with its id arrives.

    The heartbeat sends the next PING ``interval`` seconds after an answer, so within that time
    the tunnel has answered its latest one; later, a PING is out and has not been answered yet.
    """
    return Standing.ALIVE if now - live.last_answer < interval else Standing.ASKED


_CONFLICT_WHY = (
    "a gateway with id {gw} is already connected from {peer}; is this certificate installed on "
    "two machines?"
)


@implementer(ITunnelObserver)
class GatewayPeer:
    """Watches one gateway connection: takes it in once HTTP/2 is up, forgets it when lost."""

    def __init__(
        self,
        tunnels: GatewayTunnels,
        directory: IGatewayDirectory,
        metrics: RelayMetrics,
        *,
        address: Any = None,
        guard: ConnectionGuard | None = None,
        audit: IAuditTrail | None = None,
        lines: RateLimitedLog | None = None,
        revoked: Callable[[str, int | None], str | None] | None = None,
    ) -> None:
        self.revoked = revoked
        """Why a gateway id or certificate serial is revoked, or None (`gateway.enrollment`)."""
        self.tunnels = tunnels
        self.directory = directory
        self.metrics = metrics
        self.guard = guard
        self.audit = audit
        self.lines = lines
        self.peer = peer_address(address) if address is not None else "an unknown address"
        self.gateway_id: str | None = None
        self.registered = False
        self._connection: TunnelConnection | None = None
        self._waiting_on: LiveTunnel | None = None
        self._wait_bound: IDelayedCall | None = None

    @property
    def name(self) -> str:
        if self.gateway_id is None:
            return f"a gateway from {self.peer}"
        return f"gateway {self.gateway_id} from {self.peer}"

    def _peer_of(self, connection: TunnelConnection) -> str:
        if self.peer == "an unknown address" and connection.transport is not None:
            self.peer = peer_address(connection.transport.getPeer())
        return self.peer

    def tunnel_ready(self, connection: TunnelConnection) -> None:
        self._peer_of(connection)
        try:
            gateway_id = gateway_id_of_peer(connection.transport)
        except InvalidGatewayId as e:
            self._refuse_certificate(connection, str(e))
            return
        if self.revoked is not None:
            why = self.revoked(gateway_id, _peer_serial(connection))
            if why is not None:
                self.gateway_id = gateway_id
                self._refuse_certificate(connection, why)
                return
        self.gateway_id, self._connection = gateway_id, connection
        if self.guard is not None:
            self.guard.authenticated(connection)
        self._arrive(connection)

    def _arrive(self, connection: TunnelConnection) -> None:
        """Take the tunnel in, refuse it, or wait for what the live one with its id does."""
        assert self.gateway_id is not None
        holder = self.tunnels.holder(self.gateway_id)
        if holder is None:
            self._take_in(connection, replacing=None)
            return
        now = connection.clock.seconds()
        heartbeat = holder.tunnel.heartbeat
        if standing(holder, now, heartbeat.interval) is Standing.ALIVE:
            self._refuse_duplicate(connection, holder)
            return
        log.info(
            "gateway {gw} connected from {peer} while its tunnel from {holder} has not answered "
            "for {silent:.1f} s; waiting for that tunnel's heartbeat",
            gw=self.gateway_id,
            peer=self.peer,
            holder=holder.peer,
            silent=now - holder.last_answer,
        )
        self._waiting_on = holder
        holder.waiting.append(self._heard)
        # The heartbeat drops a tunnel whose PING goes unanswered for its timeout, unless frames
        # keep arriving (a PING answer stuck behind a download): past this, it is alive.
        bound = holder.last_answer + heartbeat.interval + heartbeat.timeout + 1.0 - now
        self._wait_bound = connection.clock.callLater(max(0.0, bound), self._heard, News.ANSWERED)

    def _heard(self, news: News) -> None:
        holder, self._waiting_on = self._waiting_on, None
        bound, self._wait_bound = self._wait_bound, None
        if bound is not None and bound.active():
            bound.cancel()
        if holder is not None and self._heard in holder.waiting:
            holder.waiting.remove(self._heard)
        connection = self._connection
        if holder is None or connection is None or connection.closed:
            return
        if news is News.ANSWERED:
            self._refuse_duplicate(connection, holder)
        elif self.tunnels.holder(self.gateway_id or "") is None:
            self._take_in(connection, replacing=holder)
        else:
            self._arrive(connection)  # another newcomer was quicker: decide against that one

    def _take_in(self, connection: TunnelConnection, replacing: LiveTunnel | None) -> None:
        gateway_id = self.gateway_id
        assert gateway_id is not None
        now = connection.clock.seconds()
        self.tunnels.add(gateway_id, connection, peer=self.peer, now=now)
        self.registered = True
        self.metrics.gateways_connected.set(len(self.tunnels))
        self._tell_directory(self.directory.gateway_connected(gateway_id), "connected")
        self._audit("gateway.connected")
        if replacing is None:
            log.info("gateway {gw} connected from {peer}", gw=gateway_id, peer=self.peer)
            return
        self.metrics.gateway_id_conflicts.labels(result="replaced").inc()
        log.warn(
            "gateway {gw} connected from {peer}; its previous tunnel from {old} stopped answering "
            "and was dropped; replacing its previous tunnel",
            gw=gateway_id,
            peer=self.peer,
            old=replacing.peer,
        )
        self._audit("gateway.id_conflict", result="replaced", holder=replacing.peer)

    def _refuse_duplicate(self, connection: TunnelConnection, holder: LiveTunnel) -> None:
        """The id is live elsewhere: tell the newcomer why (GOAWAY), count, log, audit."""
        gateway_id = self.gateway_id
        assert gateway_id is not None
        self.metrics.gateway_id_conflicts.labels(result="refused").inc()
        fields = {"gw": gateway_id, "peer": self.peer, "holder": holder.peer}
        text = (
            "gateway {gw} from {peer} refused: a gateway with this id is already connected from "
            "{holder} and answering; is this certificate installed on two machines?"
        )
        if self.lines is not None:
            self.lines.warn(log, text, **fields)
        else:
            log.warn(text, **fields)
        self._audit("gateway.id_conflict", result="refused", holder=holder.peer)
        connection.close(why=_CONFLICT_WHY.format(gw=gateway_id, peer=holder.peer))

    def _audit(self, event: str, *, result: str = "ok", **details: Any) -> None:
        """A gateway's arrival, departure, refusal or id conflict, with the address it came
        from; a trail that cannot be written is logged and never stops the tunnel."""
        if self.audit is None:
            return
        try:
            self.audit.record(event, who=self.gateway_id, result=result, peer=self.peer, **details)
        except AuditWriteError as e:
            log.warn("audit trail: {why}", why=str(e))

    def _refuse_certificate(self, connection: TunnelConnection, why: str) -> None:
        """Count it, log it with the address, and tell the gateway (GOAWAY debug data)."""
        self.metrics.auth_failures.labels(kind="gateway_certificate").inc()
        text = "gateway certificate from {peer} not accepted: {why}; closing"
        fields = {"peer": self.peer, "why": peer_text(why, 300)}
        if self.lines is not None:
            self.lines.warn(log, text, **fields)
        else:
            log.warn(text, **fields)
        self._audit("gateway.refused", result="refused", why=peer_text(why, 300))
        connection.close(why=f"certificate: {why}")

    def tunnel_rtt(self, connection: TunnelConnection, seconds: float) -> None:
        if self.registered and self.gateway_id is not None:
            self.tunnels.answered(self.gateway_id, connection, connection.clock.seconds())

    def tunnel_lost(self, connection: TunnelConnection, reason: Failure) -> None:
        if connection.handed_off is not None:
            return  # an enrollment request (gateway.relay.enrollment): it logs its own
        if self._waiting_on is not None:
            self._connection = None
            self._heard(News.LOST)  # only clears the wait: this connection is gone
        if self.gateway_id is None:
            if not connection.is_ready:
                self.metrics.auth_failures.labels(kind="gateway_handshake").inc()
                text = "gateway connection from {peer} failed before HTTP/2: {why}"
                fields = {"peer": self._peer_of(connection), "why": describe_tls_failure(reason)}
                if self.lines is not None:
                    self.lines.info(log, text, **fields)
                else:
                    log.info(text, **fields)
            return
        if not self.registered:
            return  # refused as a duplicate: said so already
        # A newcomer waiting on this tunnel may have taken its place already (remove tells it).
        removed = self.tunnels.remove(self.gateway_id, connection)
        if removed and self.tunnels.get(self.gateway_id) is None:
            self._tell_directory(
                self.directory.gateway_disconnected(self.gateway_id), "disconnected"
            )
        if removed:
            self._audit("gateway.disconnected", why=describe_tls_failure(reason))
        self.metrics.gateways_connected.set(len(self.tunnels))
        log.info(
            "gateway {gw} disconnected from {peer}: {why}",
            gw=self.gateway_id,
            peer=self.peer,
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


def _peer_serial(connection: TunnelConnection) -> int | None:
    """The serial number of the peer's certificate, if it sent one."""
    get = getattr(connection.transport, "getPeerCertificate", None)
    peer = get() if get is not None else None
    return None if peer is None else int(peer.to_cryptography().serial_number)
