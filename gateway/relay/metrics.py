"""The relay's Prometheus metrics (names are a contract: BRIEF section 3)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from twisted.internet.interfaces import IReactorTime

from gateway import __version__
from gateway.procmetrics import process_health
from gateway.wire import Refusal

AUTH_FAILURE_KINDS = (
    "engineer_token",
    "token_expired",
    "not_authorised",
    "too_many_attempts",
    "gateway_certificate",
    "gateway_handshake",
)
"""``relay_auth_failures_total{kind}``: every kind the relay counts (a bounded set)."""

STREAM_RESULTS = frozenset({"opened", "session", *(refusal.token for refusal in Refusal)})
"""``relay_streams_total{result}``: opened, a session ask, or a refusal the protocol defines."""


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry, clock: IReactorTime | None = None) -> None:
        self.registry = registry
        process_health(registry, "relay", clock)
        self.gateways_connected = Gauge(
            "relay_gateways_connected", "Gateways with a live tunnel", registry=registry
        )
        self.streams_active = Gauge(
            "relay_streams_active", "Engineer streams open now", registry=registry
        )
        self.sessions_active = Gauge(
            "relay_sessions_active",
            "Engineer sessions live through this relay, as the gateways' session events say",
            registry=registry,
        )
        streams = Counter(
            "relay_streams_total",
            "Engineer stream requests, by result (opened, or why refused)",
            ["result"],
            registry=registry,
        )
        self._streams = streams
        moved = Counter(
            "relay_stream_bytes_total",
            "Bytes relayed between engineers and gateways, by direction (to_gateway: from the "
            "engineer, from_gateway: to the engineer)",
            ["direction"],
            registry=registry,
        )
        self.to_gateway = moved.labels(direction="to_gateway")
        self.from_gateway = moved.labels(direction="from_gateway")
        self.auth_failures = Counter(
            "relay_auth_failures_total",
            "Refused logins, by kind (engineer_token: unknown token, token_expired, "
            "not_authorised: not allowed on that gateway, too_many_attempts: locked out, "
            "gateway_certificate, gateway_handshake)",
            ["kind"],
            registry=registry,
        )
        for kind in AUTH_FAILURE_KINDS:  # every series from the start: rate() sees the first one
            self.auth_failures.labels(kind=kind)
        self.bad_tokens = self.auth_failures.labels(kind="engineer_token")
        self.stream_open_seconds = Histogram(
            "relay_stream_open_seconds",
            "Seconds from an engineer's stream request to the gateway's answer",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.connections_refused = Counter(
            "relay_connections_refused_total",
            "Connections closed as they were accepted: over a per-source or unauthenticated limit",
            ["listener", "reason"],
            registry=registry,
        )
        self.connections_closed = Counter(
            "relay_connections_closed_total",
            "Connections the relay closed: not authenticated in time, or idle",
            ["listener", "reason"],
            registry=registry,
        )
        self.connections_open = Gauge(
            "relay_connections_open",
            "Connections open now, authenticated or not yet",
            ["listener", "state"],
            registry=registry,
        )
        self.gateway_id_conflicts = Counter(
            "relay_gateway_id_conflicts_total",
            "Connections with the id of a connected gateway: refused while it answers, "
            "or taking over from one that stopped answering",
            ["result"],
            registry=registry,
        )
        Info("relay_build", "Version of the relay software", registry=registry).info(
            {"version": __version__}
        )

    def stream_result(self, result: str) -> None:
        """Count one stream request; a refusal token the relay does not know (a gateway sent
        it) counts as ``other``, so no peer can grow the label without bound."""
        if result not in STREAM_RESULTS:
            result = "other"
        self._streams.labels(result=result).inc()
