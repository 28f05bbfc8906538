"""The gateway's Prometheus metrics (names are a contract: BRIEF section 3)."""

from __future__ import annotations

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from twisted.internet.interfaces import IReactorTime

from gateway import __version__
from gateway.edge.forwarder import StreamEvents
from gateway.edge.link import TunnelMetricsSink
from gateway.procmetrics import process_health


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
