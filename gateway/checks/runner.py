"""Run every check at once, each with its own timeout; the whole run ends within `RUN_TIMEOUT`.

The checks of the path to the relay share two answers: the DNS lookup of the first hop and one
relay probe (`gateway.checks.probe`), so the relay sees one connection per run, not five.
Inside the daemon, while the tunnel is up, there is no probe at all: the live tunnel already
proves TCP, the proxy and TLS, and its handshake told the relay's clock.  A check that raises or
hangs becomes a failed check naming what happened; the others are not held up.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, TimeoutError, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.checks.certificate import check_certificate
from gateway.checks.clock import check_clock
from gateway.checks.dns import DnsAnswer, check_dns, resolve_first_hop
from gateway.checks.env import CheckEnv, TLSFacts, TunnelState
from gateway.checks.network import check_network
from gateway.checks.probe import ProbeReport, probe_relay
from gateway.checks.proxy import check_proxy
from gateway.checks.result import (
    CERTIFICATE,
    CLOCK,
    DNS,
    NETWORK,
    PROXY,
    TARGET_PREFIX,
    TCP,
    TLS,
    TUNNEL,
    CheckResult,
    Shared,
    crashed,
    failed,
)
from gateway.checks.targets import check_target
from gateway.checks.tcp import check_tcp
from gateway.checks.tls import check_tls, name_of
from gateway.checks.tunnel import check_tunnel
from gateway.tls import TLSFileError, load_identity

log = Logger()

RUN_TIMEOUT = 14.0
"""No check is waited for longer than this (the issue's bound for everything down: 15 s)."""


def gateway_id_of(env: CheckEnv) -> str | None:
    try:
        identity = load_identity(env.config.relay.cert, env.config.relay.key)
    except TLSFileError:
        return None
    return name_of(identity.original.to_cryptography().subject)


class _Run:
    """One run: the shared answers and the checks that read them."""

    def __init__(self, env: CheckEnv) -> None:
        self.env = env
        self.started = env.now()
        self.live: TunnelState | None = env.tunnel_state() if env.tunnel_state else None
        self.use_live = self.live is not None and self.live.up and self.live.tls is not None
        self.dns: Shared[DnsAnswer] = Shared(resolve_first_hop(env))
        self.probe: Shared[ProbeReport | None] = Shared(self.dns.wait().addCallback(self._probe))

    def _probe(self, answer: DnsAnswer) -> Deferred[ProbeReport | None]:
        if self.use_live or not answer.ok:
            return succeed(None)
        d: Deferred[ProbeReport | None] = probe_relay(
            self.env, answer.addresses[0], started=self.started
        ).addCallback(lambda report: report)
        return d

    def both(self, use: Callable[[DnsAnswer, ProbeReport | None], CheckResult]) -> Deferred[Any]:
        def with_dns(answer: DnsAnswer) -> Deferred[Any]:
            return self.probe.wait().addCallback(lambda report: use(answer, report))

        return self.dns.wait().addCallback(with_dns)

    def tcp(self, answer: DnsAnswer, report: ProbeReport | None) -> CheckResult:
        return check_tcp(self.env, answer, report, self.live)

    def tls(self, answer: DnsAnswer, report: ProbeReport | None) -> CheckResult:
        return check_tls(self.env, self.tcp(answer, report).ok, report, self.live)

    def clock(self, answer: DnsAnswer, report: ProbeReport | None) -> CheckResult:
        facts: TLSFacts | None = None
        why = None
        if self.use_live and self.live is not None:
            facts = self.live.tls
        elif report is not None and report.first_reply:
            facts = report.tls_facts()
        else:
            why = f"no TLS answer from {self.env.relay}"
        return check_clock(self.env, facts, why)

    def tunnel(self, answer: DnsAnswer, report: ProbeReport | None) -> CheckResult:
        tls_ok = self.tls(answer, report).ok
        return check_tunnel(self.env, tls_ok, report, self.live, gateway_id_of(self.env))

    def checks(self) -> list[tuple[str, Callable[[], Any]]]:
        env = self.env
        found: list[tuple[str, Callable[[], Any]]] = [
            (
                NETWORK,
                lambda: self.dns.wait().addCallback(
                    lambda a: check_network(env, list(a.addresses))
                ),
            ),
            (DNS, lambda: self.dns.wait().addCallback(lambda a: check_dns(env, a))),
            (PROXY, lambda: self.both(lambda a, r: check_proxy(env, a, r, self.live))),
            (TCP, lambda: self.both(self.tcp)),
            (TLS, lambda: self.both(self.tls)),
            (CLOCK, lambda: self.both(self.clock)),
            (CERTIFICATE, lambda: check_certificate(env)),
            (TUNNEL, lambda: self.both(self.tunnel)),
        ]
        for target in env.config.targets:
            found.append((TARGET_PREFIX + target.name, partial(check_target, env, target)))
        return found


def guarded(env: CheckEnv, name: str, check: Callable[[], Any]) -> Deferred[CheckResult]:
    """Run one check: its own timeout, and a crash is a failed check (logged with its traceback)."""
    d: Deferred[CheckResult] = maybeDeferred(check)
    d.addTimeout(RUN_TIMEOUT, env.reactor)

    def broken(failure: Failure) -> CheckResult:
        if failure.check(TimeoutError):
            return failed(
                name,
                f"no answer within {RUN_TIMEOUT:g} s",
                "run `gateway check` again; if it keeps timing out, send `gateway snapshot` "
                "to support",
            )
        log.failure("check {check} crashed", failure, check=name)
        return crashed(name, failure)

    return d.addErrback(broken)


def run_checks(env: CheckEnv) -> Deferred[list[CheckResult]]:
    """Every check, concurrently; fires with the results in report order (never errbacks)."""
    run = _Run(env)
    pending = [guarded(env, name, check) for name, check in run.checks()]
    together: Deferred[list[tuple[bool, CheckResult]]] = DeferredList(pending)
    return together.addCallback(lambda results: [result for _, result in results])


def all_ok(results: list[CheckResult]) -> bool:
    return all(r.ok for r in results)
