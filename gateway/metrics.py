"""Prometheus metrics of the gateway and the relay (names are a contract: BRIEF section 3).

One ``CollectorRegistry`` per service tree, never the global one.  Labelled children are cached:
``.labels()`` costs ~2 us per call on the byte-counting hot path, a cached child's ``.inc`` ~0.6.
"""

from __future__ import annotations

from cryptography import x509
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)
from twisted.internet.interfaces import IReactorTime

from gateway import __version__
from gateway.edge.forwarder import StreamEvents
from gateway.edge.tunnel_service import TunnelMetricsSink


def process_health(registry: CollectorRegistry, prefix: str, clock: IReactorTime | None) -> None:
    """Memory, file descriptors and pending timers: what leak and soak tests watch."""
    ProcessCollector(registry=registry)
    if clock is not None:
        Gauge(
            f"{prefix}_reactor_delayed_calls",
            "Timers pending in the reactor (grows if something forgets to cancel one)",
            registry=registry,
        ).set_function(lambda: len(clock.getDelayedCalls()))


class GatewayMetrics(TunnelMetricsSink, StreamEvents):
    def __init__(self, registry: CollectorRegistry, clock: IReactorTime | None = None) -> None:
        self.registry = registry
        process_health(registry, "gateway", clock)
        self.tunnel_up = Gauge(
            "gateway_tunnel_up", "1 while the tunnel to the relay is up", registry=registry
        )
        self.tunnel_connects = Counter(
            "gateway_tunnel_connects_total", "Tunnels established to the relay", registry=registry
        )
        self.tunnel_rtt = Gauge(
            "gateway_tunnel_rtt_seconds",
            "Last heartbeat round-trip time to the relay",
            registry=registry,
        )
        self.streams_active = Gauge(
            "gateway_streams_active", "Engineer connections open now", registry=registry
        )
        streams = Counter(
            "gateway_streams_total",
            "Streams the relay asked for, by result",
            ["result"],
            registry=registry,
        )
        self.streams_opened = streams.labels(result="opened")
        self._streams = streams
        moved = Counter(
            "gateway_stream_bytes_total",
            "Bytes moved between engineers and processors",
            ["direction"],
            registry=registry,
        )
        self._to_target = moved.labels(direction="to_target")
        self._from_target = moved.labels(direction="from_target")
        self.sessions_active = Gauge(
            "gateway_sessions_active", "Attended sessions open now", registry=registry
        )
        self.certificate_expiry = Gauge(
            "gateway_certificate_expiry_timestamp_seconds",
            "When this gateway's certificate expires (Unix time)",
            registry=registry,
        )
        Info("gateway_build", "Version of the gateway software", registry=registry).info(
            {"version": __version__}
        )
        self.tunnel_up.set(0)

    def set_certificate(self, pem: bytes) -> None:
        cert = x509.load_pem_x509_certificate(pem)
        self.certificate_expiry.set(cert.not_valid_after_utc.timestamp())

    # TunnelMetricsSink
    def up(self, is_up: bool) -> None:
        self.tunnel_up.set(1 if is_up else 0)

    def connected(self) -> None:
        self.tunnel_connects.inc()

    def rtt(self, seconds: float) -> None:
        self.tunnel_rtt.set(seconds)

    # StreamEvents
    def stream_opened(self, target: str) -> None:
        self.streams_opened.inc()
        self.streams_active.inc()

    def stream_closed(self, target: str) -> None:
        self.streams_active.dec()

    def stream_refused(self, target: str, token: str) -> None:
        self._streams.labels(result=token).inc()

    def bytes_to_target(self, n: int) -> None:
        self._to_target.inc(n)

    def bytes_from_target(self, n: int) -> None:
        self._from_target.inc(n)


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
        streams = Counter(
            "relay_streams_total",
            "Engineer stream requests, by result",
            ["result"],
            registry=registry,
        )
        self._streams = streams
        moved = Counter(
            "relay_stream_bytes_total",
            "Bytes relayed between engineers and gateways",
            ["direction"],
            registry=registry,
        )
        self.to_gateway = moved.labels(direction="to_gateway")
        self.from_gateway = moved.labels(direction="from_gateway")
        self.auth_failures = Counter(
            "relay_auth_failures_total",
            "Refused engineer tokens and gateway certificates",
            ["kind"],
            registry=registry,
        )
        self.bad_tokens = self.auth_failures.labels(kind="engineer_token")
        self.stream_open_seconds = Histogram(
            "relay_stream_open_seconds",
            "Time from an engineer's request to the gateway's answer",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        Info("relay_build", "Version of the relay software", registry=registry).info(
            {"version": __version__}
        )

    def stream_result(self, result: str) -> None:
        self._streams.labels(result=result).inc()
