"""Revocation takes effect at once: the relay re-reads its revocation list twice a second.

``gateway relay revoke`` writes the list (`gateway.enrollment.revocations`); `RevocationWatch`
sees the change within half a second and closes the live tunnel of every gateway the list now
refuses, with a GOAWAY saying why, logged, counted (``relay_gateways_revoked_total``) and audited.
New tunnels, renewals and enrollments of a revoked gateway are refused where they arrive
(`gateway.relay.gateways`, `gateway.relay.enrollment`).
"""

from __future__ import annotations

from prometheus_client import Counter
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.audit import AuditWriteError, IAuditTrail
from gateway.enrollment.revocations import Revocations
from gateway.periodic import PeriodicService
from gateway.relay.gateways import GatewayTunnels, _peer_serial
from gateway.relay.metrics import RelayMetrics

log = Logger()

CHECK_INTERVAL = 0.5


class RevocationWatch(PeriodicService):
    name = "gateway-revocation-watch"

    def __init__(
        self,
        revocations: Revocations,
        tunnels: GatewayTunnels,
        clock: IReactorTime,
        metrics: RelayMetrics,
        *,
        audit: IAuditTrail | None = None,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        self.revocations = revocations
        self.tunnels = tunnels
        self.clock = clock
        self.audit = audit
        self.interval = interval
        self._warned: str | None = None
        self.cut = Counter(
            "relay_gateways_revoked_total",
            "Live gateway tunnels closed because the gateway or its certificate was revoked",
            registry=metrics.registry,
        )

    def check(self) -> int:
        """One round; never raises.  How many tunnels it closed."""
        try:
            if self.revocations.refresh():
                return self.cut_revoked()
            problem = self.revocations.problem
            if problem is not None and problem != self._warned:
                log.error(
                    "revocation list unreadable, keeping the last good one: {problem}",
                    problem=problem,
                )
            self._warned = problem
        except Exception:
            log.failure("checking gateway revocations")
        return 0

    def cut_revoked(self) -> int:
        count = 0
        for gateway_id, live in self.tunnels.live().items():
            why = self.revocations.why_revoked(gateway_id, _peer_serial(live.tunnel))
            if why is None:
                continue
            log.warn(
                "closing the tunnel of gateway {gw} from {peer}: {why}",
                gw=gateway_id,
                peer=live.peer,
                why=why,
            )
            if self.audit is not None:
                try:
                    self.audit.record(
                        "gateway.revoked", who=gateway_id, result="closed", peer=live.peer, why=why
                    )
                except AuditWriteError as e:
                    log.warn("audit trail: {why}", why=str(e))
            live.tunnel.close(why=f"certificate: {why}")
            count += 1
        self.cut.inc(count)
        return count
