"""The checks inside the running daemon: at start, every ``[checks] interval``, soon after a
tunnel failure, and on demand; their results in the status JSON and ``gateway_check_ok``.

A run never overlaps another (a request during a run gets that run's results), a failing tunnel
that redials every second triggers at most one run per `AFTER_FAILURE_GAP`, and every delayed
call is cancelled on stop.  The schedule is its own ``callLater`` chain rather than a
``LoopingCall``, which would stop for good on the first exception; a run cannot raise anyway
(`gateway.checks.runner.guarded`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Gauge
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from zope.interface import implementer

from gateway.checks.env import CheckEnv, TLSFacts, TunnelState
from gateway.checks.probe import relay_time_of
from gateway.checks.result import CheckResult, Shared
from gateway.checks.runner import run_checks
from gateway.config import GatewayConfig
from gateway.edge.events import ITunnelEvents
from gateway.edge.status import CheckReport, IStatusView, StatusReport

log = Logger()

START_DELAY = 5.0
"""The first run waits this long after start: a tunnel that is up by then is read, not probed."""
AFTER_FAILURE_DELAY = 2.0
"""Seconds after a tunnel failure before the checks run (let the link log its own line)."""
AFTER_FAILURE_GAP = 60.0
"""At most one run per this many seconds because of tunnel failures."""


class CheckMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.ok = Gauge(
            "gateway_check_ok",
            "1 if the connectivity check passed at its last run, 0 if it failed",
            ["check"],
            registry=registry,
        )

    def record(self, results: list[CheckResult]) -> None:
        for result in results:
            self.ok.labels(check=result.name).set(1 if result.ok else 0)


def live_tls_facts(connection: Any) -> TLSFacts | None:
    """The handshake of the daemon's live tunnel connection (a TLS transport's OpenSSL handle)."""
    transport = getattr(connection, "transport", None)
    handle = getattr(transport, "getHandle", lambda: None)()
    if handle is None:
        return None
    try:
        chain = tuple(handle.get_peer_cert_chain(as_cryptography=True) or ())
        return TLSFacts(
            version=handle.get_protocol_version_name(),
            alpn=handle.get_alpn_proto_negotiated() or None,
            chain=chain,
            relay_time=relay_time_of(handle.server_random()),
            local_time=getattr(connection, "connected_at", None),
        )
    except Exception:
        log.failure("cannot read the live tunnel's TLS handshake")
        return None


@implementer(ITunnelEvents)
class DaemonChecks(Service):
    """Runs the checks on a schedule and keeps the last results.  An ``ITunnelEvents`` consumer
    (add it to the daemon's ``FanOut``): a failed dial or a lost tunnel triggers a run."""

    name = "checks"

    def __init__(
        self,
        env: CheckEnv,
        registry: CollectorRegistry,
        *,
        interval: float,
        run: Callable[[CheckEnv], Deferred[list[CheckResult]]] = run_checks,
    ) -> None:
        self._env = env
        self._clock = env.reactor
        self._interval = interval
        self._run = run
        self.metrics = CheckMetrics(registry)
        self.results: list[CheckResult] = []
        self.last_run: float | None = None
        self._running: Shared[list[CheckResult]] | None = None
        self._next: IDelayedCall | None = None
        self._soon: IDelayedCall | None = None
        self._last_failure_run = float("-inf")

    # -- schedule -----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._schedule(START_DELAY)

    def stopService(self) -> None:
        super().stopService()
        for call in (self._next, self._soon):
            if call is not None and call.active():
                call.cancel()
        self._next = self._soon = None

    def set_interval(self, interval: float) -> None:
        """A reloaded ``[checks] interval``: the next run is due that long from now."""
        self._interval = interval
        if self.running and self._running is None:
            self._schedule(interval)

    def use_config(self, config: GatewayConfig) -> None:
        """Check against a reloaded configuration (relay, proxy, targets) from the next run."""
        self._env.config = config

    def _schedule(self, delay: float) -> None:
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = self._clock.callLater(delay, self._scheduled)

    def _scheduled(self) -> None:
        self._next = None
        self.run_now()

    def run_now(self) -> Deferred[list[CheckResult]]:
        """Run the checks now (the JSON API's ``POST /api/checks/run``); a run already under
        way is joined, not doubled.  Fires with the results; never errbacks."""
        if self._running is not None:
            return self._running.wait()
        shared = Shared(self._run(self._env).addCallback(self._finished))
        if not shared.done:  # a run that answered at once is not under way any more
            self._running = shared
        return shared.wait()

    def _finished(self, results: list[CheckResult]) -> list[CheckResult]:
        self._running = None
        previous = {r.name: r.ok for r in self.results}
        self.results, self.last_run = results, self._clock.seconds()
        self.metrics.record(results)
        for result in results:
            if not result.ok and previous.get(result.name, True) and result.remedy:
                log.warn(
                    "check {check} failed: {detail}; {remedy}",
                    check=result.name,
                    detail=result.detail,
                    remedy=result.remedy,
                )
            elif result.ok and previous.get(result.name) is False:
                log.info(
                    "check {check} passes again: {detail}", check=result.name, detail=result.detail
                )
        if self.running:
            self._schedule(self._interval)
        return results

    # -- ITunnelEvents ------------------------------------------------------------------------

    def _after_failure(self) -> None:
        if not self.running or (self._soon is not None and self._soon.active()):
            return
        now = self._clock.seconds()
        if now - self._last_failure_run < AFTER_FAILURE_GAP:
            return
        self._last_failure_run = now
        self._soon = self._clock.callLater(AFTER_FAILURE_DELAY, self._failure_run)

    def _failure_run(self) -> None:
        self._soon = None
        self.run_now()

    def tunnel_failed(self, why: str) -> None:
        self._after_failure()

    def tunnel_down(self, why: str) -> None:
        self._after_failure()

    def tunnel_up(self, why: str) -> None:
        pass

    def tunnel_stopped(self, why: str) -> None:
        pass

    def tunnel_rtt(self, seconds: float) -> None:
        pass


def daemon_tunnel_state(status: Any, current: Callable[[], Any]) -> Callable[[], TunnelState]:
    """The daemon's tunnel as the checks read it: the status state machine (`TunnelStatus`)
    and, while up, the live connection's handshake."""
    from datetime import UTC, datetime

    def state() -> TunnelState:
        phase = status.phase.value
        connection = current() if phase == "up" else None
        return TunnelState(
            state=phase,
            since=datetime.fromtimestamp(status.since, UTC).isoformat(timespec="seconds"),
            rtt_ms=None if status.rtt is None else round(status.rtt * 1000, 2),
            last_error=status.last_error,
            via="this daemon",
            tls=live_tls_facts(connection) if connection is not None else None,
        )

    return state


@implementer(IStatusView)
class ChecksInStatus:
    """The daemon's status view with the last check results in its ``checks``, and the way to
    run them on demand (``run_checks``, which ``/api/checks/run`` calls)."""

    def __init__(self, view: IStatusView, checks: DaemonChecks) -> None:
        self._view = view
        self.checks = checks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)

    def report(self) -> StatusReport:
        report = self._view.report()
        return attrs.evolve(
            report,
            checks=[CheckReport(r.name, r.ok, r.detail, r.remedy) for r in self.checks.results],
        )

    def run_checks(self) -> Deferred[list[CheckResult]]:
        return self.checks.run_now()


def attach_checks(daemon: Any, reactor: Any) -> DaemonChecks:
    """Add the checks to the edge daemon's tree (`gateway.edge.service.EdgeDaemon`): a child
    service, a consumer of its tunnel events, its metrics in the daemon's registry, and its
    status view wrapped so the report carries the results."""
    from gateway.checks.env import thread_resolve

    env = CheckEnv(
        daemon.config,
        reactor,
        thread_resolve(reactor),
        tunnel_state=daemon_tunnel_state(daemon.tunnel_status, lambda: daemon.tunnel.current),
        fresh_tunnel=False,
    )
    checks = DaemonChecks(env, daemon.registry, interval=daemon.config.checks_interval)
    daemon.events.add(checks)
    checks.setServiceParent(daemon)
    daemon.view = ChecksInStatus(daemon.view, checks)
    return checks
