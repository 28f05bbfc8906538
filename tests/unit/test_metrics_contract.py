"""The metrics contract: every name of BRIEF section 3 in each daemon's registry, with its type,
its unit in the name, plain HELP text and bounded labels; counters that never go back while the
process lives (a reconnect, a session's end or a stop leave them as they were)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import AccessMode
from gateway.edge.consent import Actor, EngineerRefused
from gateway.edge.metrics import GatewayMetrics
from gateway.edge.service import EdgeDaemon, makeService
from gateway.edge.testing import RecordingChannel
from gateway.reactor import IGatewayReactor
from gateway.relay.metrics import RelayMetrics
from gateway.relay.service import makeService as makeRelay
from gateway.tunnel.connection import TunnelConnection
from gateway.wire import SessionAsk
from tests.helpers.metricscontract import GATEWAY, RELAY, contract_problems, declared_types
from tests.unit.test_edge_service import as_gateway_reactor, config_in
from tests.unit.test_relay_service import relay_config

OPERATOR = Actor("operator", "alice")


def scrape(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def help_texts(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            _, _, name, *words = line.split(" ", 3)
            found[name] = words[0] if words else ""
    return found


class ContractTests(SynchronousTestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-metrics-contract-")
        self.addCleanup(tmp.cleanup)
        self.directory = Path(tmp.name)
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_700_000_000)

    def gateway(self, mode: AccessMode = AccessMode.UNATTENDED) -> EdgeDaemon:
        daemon = makeService(
            config_in(self.directory, access_mode=mode), as_gateway_reactor(self.reactor)
        )
        self.addCleanup(daemon.audit_file.close)
        return daemon

    def relay_text(self) -> str:
        daemon = makeRelay(relay_config(self), cast(IGatewayReactor, MemoryReactorClock()))
        return scrape(daemon.metrics.registry)

    def test_the_gateway_daemon_exports_every_name_of_the_contract(self) -> None:
        self.assertEqual(contract_problems(scrape(self.gateway().registry), GATEWAY), [])

    def test_the_relay_daemon_exports_every_name_of_the_contract(self) -> None:
        self.assertEqual(contract_problems(self.relay_text(), RELAY), [])

    def test_every_metric_explains_itself_in_words(self) -> None:
        for text in (scrape(self.gateway().registry), self.relay_text()):
            helps = help_texts(text)
            for name in declared_types(text):
                with self.subTest(name=name):
                    self.assertGreaterEqual(len(helps.get(name, "").split()), 3, name)

    def test_names_carry_their_unit_and_counters_end_in_total(self) -> None:
        for text in (scrape(self.gateway().registry), self.relay_text()):
            for name, kind in declared_types(text).items():
                with self.subTest(name=name):
                    self.assertEqual(kind == "counter", name.endswith("_total"), name)
                    for unit in ("_rtt_", "_timestamp_", "_delay_", "_bytes"):
                        # (``NAME_created``: when a counter started, prometheus_client's own)
                        if unit in name and kind != "counter" and not name.endswith("_created"):
                            self.assertRegex(name, r"_(seconds|bytes|bytes_per_second)$")

    def test_the_check_catches_a_missing_name_a_wrong_type_and_an_unbounded_label(self) -> None:
        registry = CollectorRegistry()
        Gauge("gateway_tunnel_up", "up or not", registry=registry)
        Gauge("gateway_tunnel_connects_total", "a gauge where a counter belongs", registry=registry)
        Counter(
            "gateway_stream_bytes", "bytes", ["direction", "engineer"], registry=registry
        ).labels(direction="to_target", engineer="erin").inc()
        problems = contract_problems(scrape(registry), GATEWAY)
        self.assertIn("gateway_sessions_active is missing", problems)
        self.assertIn("gateway_tunnel_connects_total is a gauge, not a counter", problems)
        self.assertIn(
            'gateway_stream_bytes_total{direction="to_target",engineer="erin"} carries '
            "unbounded labels ['engineer']",
            problems,
        )

    def test_session_codes_are_counted_created_used_and_failed(self) -> None:
        daemon = self.gateway(AccessMode.ATTENDED)
        daemon.startService()
        self.addCleanup(daemon.stopService)
        registry = daemon.registry

        def value(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, labels)

        self.assertEqual(value("gateway_session_codes_failed_total", reason="wrong"), 0)
        grant = daemon.consent.create_code(OPERATOR)
        self.assertEqual(value("gateway_session_codes_created_total"), 1)
        daemon.consent.ask("erin", SessionAsk(code=grant.code), RecordingChannel())
        self.assertEqual(value("gateway_session_codes_used_total"), 1)
        self.assertEqual(value("gateway_sessions_active"), 1)
        for code in (grant.code, "000000" if grant.code != "000000" else "111111"):
            self.assertRaises(
                EngineerRefused,
                daemon.consent.ask,
                "mallory",
                SessionAsk(code=code),
                RecordingChannel(),
            )
        self.assertEqual(value("gateway_session_codes_failed_total", reason="used"), 1)
        self.assertEqual(value("gateway_session_codes_failed_total", reason="wrong"), 1)
        self.assertEqual(value("gateway_session_decisions_total", decision="code"), 1)
        self.assertNotIn(grant.code, scrape(registry))

    def test_every_decision_and_login_failure_series_is_there_from_the_start(self) -> None:
        """A counter that first appears at 3 is no increase to ``rate()``: the first burst of
        wrong codes or bad tokens would not page anyone."""
        gateway = scrape(self.gateway().registry)
        for decision in ("approved", "denied", "expired", "code_wrong", "code_locked"):
            self.assertIn(f'gateway_session_decisions_total{{decision="{decision}"}} 0.0', gateway)
        relay = RelayMetrics(CollectorRegistry()).registry
        for kind in ("engineer_token", "not_authorised", "too_many_attempts"):
            self.assertEqual(relay.get_sample_value("relay_auth_failures_total", {"kind": kind}), 0)

    def test_a_gateway_cannot_grow_the_relays_stream_results_without_bound(self) -> None:
        metrics = RelayMetrics(CollectorRegistry())
        for i in range(100):
            metrics.stream_result(f"made-up-{i}")
        metrics.stream_result("target-not-allowed")
        registry = metrics.registry
        self.assertEqual(registry.get_sample_value("relay_streams_total", {"result": "other"}), 100)
        self.assertEqual(
            registry.get_sample_value("relay_streams_total", {"result": "target-not-allowed"}), 1
        )
        self.assertNotIn("made-up", scrape(registry))


class CountersNeverResetTests(SynchronousTestCase):
    """A counter that went back would read to Prometheus as a process restart, and ``rate()``
    over it as a burst: the daemon's counters live as long as the process does."""

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-metrics-reset-")
        self.addCleanup(tmp.cleanup)
        self.reactor = MemoryReactorClock()
        self.daemon = makeService(
            config_in(Path(tmp.name), access_mode=AccessMode.ATTENDED),
            as_gateway_reactor(self.reactor),
        )
        self.addCleanup(self.daemon.audit_file.close)
        self.daemon.startService()

    def counters(self) -> dict[str, float]:
        from gateway.promtext import parse

        text = scrape(self.daemon.registry)
        types = declared_types(text)
        return {
            s.key: s.value
            for s in parse(text)
            if s.name.endswith("_total") and types.get(s.name) == "counter"
        }

    def tunnel(self) -> TunnelConnection:
        tunnel = self.daemon.tunnel_factory.buildProtocol(None)
        assert isinstance(tunnel, TunnelConnection)
        self.daemon.observer.tunnel_ready(tunnel)
        return tunnel

    def test_reconnects_session_ends_and_mode_switches_leave_every_counter_standing(self) -> None:
        registry = self.daemon.registry
        first = self.tunnel()
        self.daemon.events.bytes_to_target(1000)
        self.daemon.events.bytes_from_target(50_000)
        grant = self.daemon.consent.create_code(OPERATOR)
        self.daemon.consent.ask("erin", SessionAsk(code=grant.code), RecordingChannel())
        self.assertRaises(
            EngineerRefused,
            self.daemon.consent.ask,
            "mallory",
            SessionAsk(code=grant.code),
            RecordingChannel(),
        )
        before = self.counters()
        self.assertEqual(before["gateway_tunnel_connects_total"], 1)

        first.connectionLost(Failure(ConnectionLost()))
        self.reactor.advance(60)  # the link redials; the dial itself is in the memory reactor
        second = self.tunnel()
        self.daemon.consent.end_all(OPERATOR, "done")
        self.daemon.consent.set_mode(AccessMode.DISABLED, OPERATOR)
        self.daemon.consent.set_mode(AccessMode.ATTENDED, OPERATOR)
        second.connectionLost(Failure(ConnectionLost()))

        after = self.counters()
        self.assertIs(self.daemon.registry, registry)
        for series, value in before.items():
            with self.subTest(series=series):
                self.assertGreaterEqual(after[series], value)
        self.assertEqual(after["gateway_tunnel_connects_total"], 2)
        self.assertEqual(after['gateway_stream_bytes_total{direction="from_target"}'], 50_000)
        self.assertEqual(after["gateway_session_codes_used_total"], 1)
        self.assertEqual(registry.get_sample_value("gateway_sessions_active"), 0)
        self.assertEqual(registry.get_sample_value("gateway_tunnel_up"), 0)

    def test_the_daemon_builds_its_metrics_once(self) -> None:
        """The link's factory, a redial and a stop create no metric: a second registration of a
        name would raise, and a new ``GatewayMetrics`` would start every counter at zero."""
        names = sorted(declared_types(scrape(self.daemon.registry)))
        for _ in range(3):
            self.tunnel().connectionLost(Failure(ConnectionLost()))
            self.reactor.advance(60)
        self.assertEqual(sorted(declared_types(scrape(self.daemon.registry))), names)
        self.assertIsInstance(self.daemon.metrics, GatewayMetrics)
        self.successResultOf(self.daemon.stopService())
        self.assertEqual(sorted(declared_types(scrape(self.daemon.registry))), names)
