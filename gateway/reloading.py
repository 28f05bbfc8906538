"""What both daemons' ``SIGHUP`` reloads share: their metrics.

The decisions are each daemon's own (`gateway.edge.reload`, `gateway.relay.reload`); what they
count is the same, named after each program (``gateway_`` or ``relay_``), as Prometheus reports
its own reloads.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ReloadMetrics:
    """``gateway_config_reloads_total{result}`` and the time of the last good one (as
    Prometheus itself reports its own reloads)."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "gateway") -> None:
        reloads = Counter(
            f"{prefix}_config_reloads_total",
            "Configuration reloads (SIGHUP) by result: applied, or refused as invalid",
            ["result"],
            registry=registry,
        )
        self.applied = reloads.labels(result="success")
        self.refused = reloads.labels(result="failure")
        self.last_success = Gauge(
            f"{prefix}_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (start or reload)",
            registry=registry,
        )
        self.last_ok = Gauge(
            f"{prefix}_config_last_reload_successful",
            "1 if the last reload was applied, 0 if it was refused",
            registry=registry,
        )
        self.last_ok.set(1)
