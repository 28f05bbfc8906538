"""``SIGHUP`` on the relay: new certificates for new handshakes, engineers.toml at once, and a
broken relay.toml refused while the running one stays (a memory reactor and a `Clock`)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import attrs
from prometheus_client import generate_latest
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Address, ConfigError, RelayConfig
from gateway.pki import issue_relay_certificate
from gateway.promtext import metric_value
from gateway.reactor import IGatewayReactor
from gateway.relay.reload import RelayFiles, plan_relay_reload
from gateway.relay.service import RelayDaemon, makeService
from tests.unit.test_relay_service import relay_config

SAME = RelayFiles("g", "e")


class RelayPlanTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.old = relay_config(self)

    def test_the_same_file_changes_nothing(self) -> None:
        self.assertEqual(plan_relay_reload(self.old, self.old, SAME, SAME).changes(), [])

    def test_a_renewed_certificate_in_the_same_file_is_a_change(self) -> None:
        plan = plan_relay_reload(self.old, self.old, SAME, RelayFiles("renewed", "e"))
        self.assertEqual(plan.changes(), ["gateways.cert/key/ca"])

    def test_a_new_listen_address_needs_a_restart(self) -> None:
        new = attrs.evolve(
            self.old, gateways=attrs.evolve(self.old.gateways, listen=Address("0.0.0.0", 443))
        )
        plan = plan_relay_reload(self.old, new, SAME, SAME)
        self.assertEqual(plan.restart_needed, ("gateways.listen",))


class RelayReloaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.config = relay_config(self)
        self.daemon: RelayDaemon = makeService(self.config, cast(IGatewayReactor, self.reactor))
        self.daemon.startService()
        self.addCleanup(self.daemon.stopService)
        self.next: RelayConfig | ConfigError = self.config
        self.daemon.reloader.load = self.loaded

    def loaded(self, path: Path) -> RelayConfig:
        if isinstance(self.next, ConfigError):
            raise self.next
        return self.next

    def metric(self, result: str) -> float | None:
        text = generate_latest(self.daemon.metrics.registry).decode()
        return metric_value(text, "relay_config_reloads_total", {"result": result})

    def renew_relay_certificate(self) -> None:
        ca = self.config.gateways.ca
        issue_relay_certificate(
            ca,
            ca.with_name("ca.key"),
            self.config.gateways.cert,
            self.config.gateways.key,
            names=["localhost"],
            force=True,
        )

    def test_a_renewed_certificate_serves_new_handshakes(self) -> None:
        before = self.daemon.gateway_tls.current
        engineers_before = self.daemon.engineer_tls.current
        self.renew_relay_certificate()
        outcome = self.daemon.reload()
        self.assertTrue(outcome.applied)
        self.assertIsNot(self.daemon.gateway_tls.current, before)
        self.assertIsNot(self.daemon.engineer_tls.current, engineers_before)  # the same files
        self.assertIsNotNone(self.daemon.gateway_tls.getContext())
        self.assertEqual(self.metric("success"), 1)

    def test_a_broken_file_changes_nothing(self) -> None:
        before = self.daemon.gateway_tls.current
        self.next = ConfigError(self.config.path, "gateways.listen", "not host:port")
        outcome = self.daemon.reload()
        self.assertFalse(outcome.applied)
        self.assertIn("relay.toml: gateways.listen: not host:port", outcome.problem or "")
        self.assertIs(self.daemon.gateway_tls.current, before)
        self.assertEqual(self.metric("failure"), 1)

    def test_a_key_that_does_not_match_is_refused(self) -> None:
        other = self.config.engineers.tokens.with_name("other.key")
        other.write_bytes(self.config.gateways.ca.with_name("ca.key").read_bytes())
        other.chmod(0o600)
        gateways = attrs.evolve(self.config.gateways, key=other)
        self.next = attrs.evolve(self.config, gateways=gateways)
        outcome = self.daemon.reload()
        self.assertFalse(outcome.applied)
        self.assertIn("gateways.cert", outcome.problem or "")

    def test_engineers_are_read_at_once(self) -> None:
        read: list[int] = []
        self.daemon.reloader._recheck = lambda: read.append(1)
        self.daemon.reload()
        self.assertEqual(read, [1])
