"""The gateway's Prometheus metrics (names are a contract: BRIEF section 3).

One consumer of the daemon's events.  Labelled children are looked up once here: ``.labels()``
costs microseconds, and the byte counters run per chunk on the data path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from gateway import __version__
from gateway.config import AccessMode
from gateway.edge.access import AccessRequest
from gateway.edge.consent import PendingRequest, Session
from gateway.edge.events import (
    ConnectionRecord,
    IAccessEvents,
    IByteCounter,
    IRequestEvents,
    IStreamEvents,
    ITunnelEvents,
)
from gateway.edge.httpfollow import Exchange
from gateway.net.queues import PathReport
from gateway.procmetrics import process_health
from gateway.wire import Refusal

CODE_FAILURES = ("wrong", "used", "expired", "locked")
"""Why a session code is refused (``IAccessEvents.code_refused``)."""
DECISIONS = (
    "approved",
    "denied",
    "expired",
    "withdrawn",
    "code",
    "unattended",
    *(f"code_{why}" for why in CODE_FAILURES),
)
"""``gateway_session_decisions_total{decision}``: a request's outcome, how a session started
without one, or why a code was refused."""


@implementer(ITunnelEvents, IStreamEvents, IByteCounter, IAccessEvents, IRequestEvents)
class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry, clock: IReactorTime | None = None) -> None:
        self.registry = registry
        process_health(registry, "gateway", clock)
        self._up = Gauge(
            "gateway_tunnel_up",
            "1 while the tunnel to the relay is up, 0 while it is down",
            registry=registry,
        )
        self._connects = Counter(
            "gateway_tunnel_connects_total",
            "Times the tunnel to the relay came up (each rise after the first is a reconnect)",
            registry=registry,
        )
        self._rtt = Gauge(
            "gateway_tunnel_rtt_seconds",
            "Round-trip time to the relay in seconds, as the last heartbeat measured it",
            registry=registry,
        )
        self._active = Gauge(
            "gateway_streams_active", "Engineer connections open now", registry=registry
        )
        streams = Counter(
            "gateway_streams_total",
            "Engineer streams the relay asked for, by result (opened, or why refused)",
            ["result"],
            registry=registry,
        )
        self._opened = streams.labels(result="opened")
        self._streams = streams
        moved = Counter(
            "gateway_stream_bytes_total",
            "Bytes passed between engineers and processors, by direction (to_target: engineer "
            "to processor, from_target: processor to engineer)",
            ["direction"],
            registry=registry,
        )
        self._to_target = moved.labels(direction="to_target")
        self._from_target = moved.labels(direction="from_target")
        self.sessions_active = Gauge(
            "gateway_sessions_active",
            "Sessions live now (approved, from a code, or the implicit ones of unattended mode)",
            registry=registry,
        )
        self._pending = Gauge(
            "gateway_session_requests_pending",
            "Engineers' requests waiting for the plant's answer",
            registry=registry,
        )
        self._decisions = Counter(
            "gateway_session_decisions_total",
            "What became of engineers' session requests and codes, by decision (approved, "
            "denied, expired: nobody answered in time, withdrawn, code: a code let one in, "
            "unattended, code_wrong, code_used, code_expired, code_locked)",
            ["decision"],
            registry=registry,
        )
        for decision in DECISIONS:  # every series from the start: rate() sees the first one
            self._decisions.labels(decision=decision)
        self._codes_created = Counter(
            "gateway_session_codes_created_total",
            "Session codes created by plant staff",
            registry=registry,
        )
        self._codes_used = Counter(
            "gateway_session_codes_used_total",
            "Session codes an engineer used to start a session",
            registry=registry,
        )
        failed = Counter(
            "gateway_session_codes_failed_total",
            "Session codes refused, by reason (wrong: no such code, used: used already, "
            "expired, locked: code entry locked after too many wrong codes)",
            ["reason"],
            registry=registry,
        )
        self._codes_failed = {reason: failed.labels(reason=reason) for reason in CODE_FAILURES}
        mode = Gauge(
            "gateway_access_mode",
            "1 for the access mode in force, 0 for the others (attended, unattended, disabled)",
            ["mode"],
            registry=registry,
        )
        self._modes = {m: mode.labels(mode=m.value) for m in AccessMode}
        requests = Counter(
            "gateway_http_requests_total",
            "Requests on streams to http targets, by result (forwarded, refused)",
            ["result"],
            registry=registry,
        )
        self._forwarded = requests.labels(result="forwarded")
        self._refused = requests.labels(result="refused")
        self._audit_failures = Counter(
            "gateway_audit_write_failures_total",
            "Audit records that could not be written (the audit trail's disk is full or not "
            "writable); no new session starts while it fails",
            registry=registry,
        )
        self._certificate_expiry = Gauge(
            "gateway_certificate_expiry_timestamp_seconds",
            "When this gateway's certificate expires, in seconds since 1970 (Unix time)",
            registry=registry,
        )
        Info("gateway_build", "Version of the gateway software", registry=registry).info(
            {"version": __version__}
        )
        self._up.set(0)

    def watch_path(self, source: Callable[[], PathReport | None]) -> None:
        """Report the tunnel's path as ``source`` sees it at each scrape (`TunnelPathCollector`)."""
        self.registry.register(TunnelPathCollector(source))

    def show_mode(self, mode: AccessMode) -> None:
        """``gateway_access_mode{mode}``: 1 for ``mode``, 0 for the others."""
        for each, child in self._modes.items():
            child.set(1 if each is mode else 0)

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

    # IRequestEvents
    def request_seen(self, connection: ConnectionRecord, exchange: Exchange) -> None:
        (self._forwarded if exchange.forwarded else self._refused).inc()

    # IByteCounter: per chunk, on the data path
    def bytes_to_target(self, n: int) -> None:
        self._to_target.inc(n)

    def bytes_from_target(self, n: int) -> None:
        self._from_target.inc(n)

    # IAccessEvents
    def access_mode_changed(self, old: AccessMode, new: AccessMode) -> None:
        self.show_mode(new)

    def request_opened(self, request: PendingRequest) -> None:
        self._pending.inc()

    def request_closed(self, request: PendingRequest, outcome: str) -> None:
        self._pending.dec()
        self._decisions.labels(decision=outcome).inc()

    def session_started(self, session: Session, how: str) -> None:
        self.sessions_active.inc()
        if how != "approved":  # an approval is counted as its request's decision
            self._decisions.labels(decision=how).inc()
        if how == "code":
            self._codes_used.inc()

    def session_ended(self, session: Session, why: str) -> None:
        self.sessions_active.dec()

    def code_created(self, code_id: str) -> None:
        self._codes_created.inc()

    def code_refused(self, why: str) -> None:
        self._decisions.labels(decision=f"code_{why}").inc()
        failed = self._codes_failed.get(why)
        if failed is not None:
            failed.inc()

    def audit_failed(self, why: str) -> None:
        self._audit_failures.inc()


class TunnelPathCollector(Collector):
    """The tunnel's path at scrape time: the kernel's smoothed RTT and how long a byte written
    now would wait in our buffer and in the kernel's before it leaves (a saturated uplink shows
    as queueing delay, long before the heartbeat's RTT tells).  Nothing while the tunnel is down.
    """

    def __init__(self, source: Callable[[], PathReport | None]) -> None:
        self._source = source

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families(None))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families(self._source()))

    def _families(self, report: PathReport | None) -> list[GaugeMetricFamily]:
        srtt = GaugeMetricFamily(
            "gateway_tunnel_smoothed_rtt_seconds",
            "The kernel's smoothed round-trip time of the tunnel's TCP connection "
            "(the uplink's queue included)",
        )
        rate = GaugeMetricFamily(
            "gateway_tunnel_delivery_rate_bytes_per_second",
            "Bytes per second the tunnel's path recently delivered to the relay",
        )
        delay = GaugeMetricFamily(
            "gateway_tunnel_queue_delay_seconds",
            "How long a byte written to the tunnel now waits before it leaves, by queue "
            "(gateway: our write buffer; kernel: the socket's unsent bytes)",
            labels=["queue"],
        )
        if report is not None:
            srtt.add_metric([], report.smoothed_rtt)
            rate.add_metric([], report.delivery_rate)
            delay.add_metric(["gateway"], report.delay(report.waiting_in_process))
            delay.add_metric(["kernel"], report.delay(report.waiting_in_kernel))
        return [srtt, rate, delay]
