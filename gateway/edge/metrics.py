"""The gateway's Prometheus metrics (names are a contract: BRIEF section 3).

One consumer of the daemon's events.  Labelled children are looked up once here: ``.labels()``
costs microseconds, and the byte counters run per chunk on the data path.
"""

from __future__ import annotations

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from gateway import __version__
from gateway.edge.access import AccessRequest
from gateway.edge.events import ConnectionRecord, IByteCounter, IStreamEvents, ITunnelEvents
from gateway.procmetrics import process_health
from gateway.wire import Refusal


@implementer(ITunnelEvents, IStreamEvents, IByteCounter)
class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry, clock: IReactorTime | None = None) -> None:
        self.registry = registry
        process_health(registry, "gateway", clock)
        self._up = Gauge(
            "gateway_tunnel_up", "1 while the tunnel to the relay is up", registry=registry
        )
        self._connects = Counter(
            "gateway_tunnel_connects_total", "Tunnels established to the relay", registry=registry
        )
        self._rtt = Gauge(
            "gateway_tunnel_rtt_seconds",
            "Last heartbeat round-trip time to the relay",
            registry=registry,
        )
        self._active = Gauge(
            "gateway_streams_active", "Engineer connections open now", registry=registry
        )
        streams = Counter(
            "gateway_streams_total",
            "Streams the relay asked for, by result",
            ["result"],
            registry=registry,
        )
        self._opened = streams.labels(result="opened")
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
        self._certificate_expiry = Gauge(
            "gateway_certificate_expiry_timestamp_seconds",
            "When this gateway's certificate expires (Unix time)",
            registry=registry,
        )
        Info("gateway_build", "Version of the gateway software", registry=registry).info(
            {"version": __version__}
        )
        self._up.set(0)

    def set_certificate(self, pem: bytes) -> None:
        cert = x509.load_pem_x509_certificate(pem)
        self._certificate_expiry.set(cert.not_valid_after_utc.timestamp())

    # ITunnelEvents
    def tunnel_up(self, why: str) -> None:
        self._connects.inc()
        self._up.set(1)

    def tunnel_down(self, why: str) -> None:
        self._up.set(0)

    def tunnel_failed(self, why: str) -> None:
        pass

    def tunnel_stopped(self, why: str) -> None:
        self._up.set(0)

    def tunnel_rtt(self, seconds: float) -> None:
        self._rtt.set(seconds)

    # IStreamEvents
    def stream_opened(self, connection: ConnectionRecord) -> None:
        self._opened.inc()
        self._active.inc()

    def stream_closed(
        self, connection: ConnectionRecord, bytes_to_target: int, bytes_from_target: int, why: str
    ) -> None:
        self._active.dec()

    def stream_refused(self, request: AccessRequest, refusal: Refusal, reason: str) -> None:
        self._streams.labels(result=refusal.token).inc()

    # IByteCounter: per chunk, on the data path
    def bytes_to_target(self, n: int) -> None:
        self._to_target.inc(n)

    def bytes_from_target(self, n: int) -> None:
        self._from_target.inc(n)
