"""Both daemons keep an audit trail in their state directory and close it when they stop."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import cast

import attrs
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auditlog.files import CURRENT
from gateway.auditlog.reader import read_trail, verify_trail
from gateway.config import ConfigError
from gateway.edge import service as edge_service
from gateway.reactor import IGatewayReactor
from gateway.relay import service as relay_service
from tests.unit.test_edge_service import config_in
from tests.unit.test_relay_service import relay_config


class DaemonTrailTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_714_560_000)

    def directory(self) -> Path:
        tmp = tempfile.TemporaryDirectory(prefix="test-audit-daemons-")
        self.addCleanup(tmp.cleanup)
        return Path(tmp.name)

    def test_the_gateway_records_into_its_state_directory(self) -> None:
        config = config_in(self.directory())
        daemon = edge_service.makeService(config, cast(IGatewayReactor, self.reactor))
        daemon.startService()
        daemon.audit.record("mode.changed", who="alice", mode="disabled")
        self.successResultOf(daemon.stopService())
        folder = config.state_dir / "audit"
        self.assertTrue((folder / CURRENT).exists())
        self.assertEqual([r["event"] for r in read_trail(folder)][-1], "mode.changed")
        self.assertTrue(verify_trail(folder).ok)
        self.assertIsNone(daemon.audit_file._fd)  # closed (and fsynced) on stop

    def test_the_relay_records_into_its_state_directory(self) -> None:
        config = relay_config(self)
        daemon = relay_service.makeService(config, cast(IGatewayReactor, self.reactor))
        daemon.startService()
        daemon.audit.record("gateway.connected", gateway="plant7-gw")
        self.successResultOf(daemon.stopService())
        folder = config.state_dir / "audit"
        self.assertEqual([r["event"] for r in read_trail(folder)][-1], "gateway.connected")
        self.assertTrue(verify_trail(folder).ok)
        self.assertIsNone(daemon.audit_file._fd)

    def test_a_state_directory_that_cannot_be_written_stops_start_up_in_one_line(self) -> None:
        directory = self.directory()
        (directory / "taken").write_text("")
        config = attrs.evolve(config_in(directory), state_dir=directory / "taken" / "state")
        error = self.assertRaises(
            ConfigError, edge_service.makeService, config, cast(IGatewayReactor, self.reactor)
        )
        self.assertEqual(error.key, "service.state_dir")
        relay = attrs.evolve(relay_config(self), state_dir=directory / "taken" / "state")
        error = self.assertRaises(
            ConfigError, relay_service.makeService, relay, cast(IGatewayReactor, self.reactor)
        )
        self.assertEqual(error.key, "service.state_dir")
