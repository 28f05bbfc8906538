"""``SIGHUP`` on the gateway: what a changed gateway.toml means (`plan_reload`) and how the running
daemon applies it (`ConfigReloader`), on a memory reactor and a `Clock`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import attrs
from prometheus_client import generate_latest
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import (
    AccessMode,
    Address,
    ConfigError,
    ConsentRules,
    GatewayConfig,
    Heartbeat,
    Target,
)
from gateway.edge.access import Refused
from gateway.edge.reload import (
    TARGET_REMOVED,
    Fingerprints,
    ListenerChange,
    ReloadPlan,
    plan_reload,
)
from gateway.edge.service import EdgeDaemon, makeService
from gateway.pki import issue_gateway_certificate
from gateway.promtext import metric_value
from tests.unit.test_edge_service import as_gateway_reactor, config_in

SAME = Fingerprints(identity="i", ca="c")


def temp_dir(case: SynchronousTestCase) -> Path:
    tmp = tempfile.TemporaryDirectory(prefix="test-reload-")
    case.addCleanup(tmp.cleanup)
    return Path(tmp.name)


class PlanTests(SynchronousTestCase):
    """The decision alone: old and new config (and what their files held) in, a plan out."""

    def setUp(self) -> None:
        self.old = config_in(temp_dir(self))

    def plan(self, new: GatewayConfig, files: Fingerprints = SAME) -> ReloadPlan:
        return plan_reload(self.old, new, SAME, files)

    def test_the_same_file_changes_nothing(self) -> None:
        plan = self.plan(self.old)
        self.assertEqual(plan, ReloadPlan())
        self.assertEqual(plan.changes(), [])

    def test_targets_added_removed_and_changed(self) -> None:
        new = attrs.evolve(
            self.old,
            targets=(
                Target("web", Address("192.168.10.3", 80)),  # moved
                Target("hmi", Address("192.168.10.9", 443)),
            ),
        )
        plan = self.plan(new)
        self.assertEqual(plan.targets_added, ("hmi",))
        self.assertEqual(plan.targets_moved, ("web",))
        self.assertEqual(plan.changes(), ["target hmi added", "target web changed"])
        gone = self.plan(attrs.evolve(self.old, targets=()))
        self.assertEqual(gone.targets_removed, ("web",))

    def test_a_new_connect_timeout_alone_keeps_the_targets_streams(self) -> None:
        target = self.old.targets[0]
        plan = self.plan(attrs.evolve(self.old, targets=(attrs.evolve(target, connect_timeout=9),)))
        self.assertEqual(plan.targets_changed, ("web",))
        self.assertEqual(plan.targets_moved, ())

    def test_a_new_relay_address_reconnects(self) -> None:
        link = attrs.evolve(self.old.relay, address=Address("relay2.example.com", 443))
        plan = self.plan(attrs.evolve(self.old, relay=link))
        self.assertEqual(plan.reconnect, ("address",))
        self.assertIn("relay.address", plan.changes())

    def test_a_new_ca_in_the_same_file_reconnects(self) -> None:
        plan = self.plan(self.old, Fingerprints(identity="i", ca="other"))
        self.assertEqual(plan.reconnect, ("ca",))
        self.assertFalse(plan.identity)

    def test_a_proxy_reconnects(self) -> None:
        link = attrs.evolve(self.old.relay, proxy=Address("proxy.plant.local", 3128))
        self.assertEqual(self.plan(attrs.evolve(self.old, relay=link)).reconnect, ("proxy",))

    def test_a_renewed_certificate_in_the_same_files_keeps_the_tunnel(self) -> None:
        plan = self.plan(self.old, Fingerprints(identity="renewed", ca="c"))
        self.assertTrue(plan.identity)
        self.assertEqual(plan.reconnect, ())
        self.assertEqual(plan.changes(), ["relay.cert/key"])

    def test_heartbeat_applies_from_the_next_connection(self) -> None:
        link = attrs.evolve(self.old.relay, heartbeat=Heartbeat(5, 5))
        plan = self.plan(attrs.evolve(self.old, relay=link))
        self.assertEqual((plan.reconnect, plan.next_connection), ((), ("heartbeat",)))

    def test_listeners_rebind_on_a_new_address_only(self) -> None:
        new = attrs.evolve(
            self.old, status_listen=Address("127.0.0.1", 8082), metrics_allowed_hosts=("gw",)
        )
        plan = self.plan(new)
        self.assertEqual(plan.status, ListenerChange(rebind=True))
        self.assertEqual(plan.metrics, ListenerChange(hosts=True))

    def test_checks_access_limits_and_timeouts(self) -> None:
        new = attrs.evolve(
            self.old,
            checks_interval=60,
            consent=ConsentRules(request_timeout=30),
            access_mode=AccessMode.ATTENDED,
            drain_timeout=3,
        )
        plan = self.plan(new)
        self.assertTrue(plan.checks and plan.consent and plan.access_mode)
        self.assertEqual(plan.timeouts, ("drain_timeout",))

    def test_a_moved_state_directory_needs_a_restart(self) -> None:
        plan = self.plan(attrs.evolve(self.old, state_dir=self.old.state_dir / "elsewhere"))
        self.assertEqual(plan.restart_needed, ("service.state_dir",))
        self.assertIn("service.state_dir (needs a restart)", plan.changes())


class FlakyPorts(MemoryReactorClock):
    """A memory reactor on which some ports are taken by someone else."""

    def __init__(self) -> None:
        super().__init__()
        self.taken: set[int] = set()

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port in self.taken:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


class FakeConnection:
    def __init__(self) -> None:
        self.drained: list[float] = []
        self.streams: dict[int, object] = {}

    def drain(self, timeout: float) -> Any:
        from twisted.internet.defer import succeed

        self.drained.append(timeout)
        return succeed(None)


class ReloaderTests(SynchronousTestCase):
    """The running daemon applying a plan (a memory reactor; nothing really listens)."""

    def setUp(self) -> None:
        self.reactor = FlakyPorts()
        self.dir = temp_dir(self)
        self.config = config_in(self.dir)
        self.daemon: EdgeDaemon = makeService(self.config, as_gateway_reactor(self.reactor))
        self.daemon.startService()
        self.addCleanup(self.daemon.stopService)
        self.next_config: GatewayConfig | ConfigError = self.config
        self.daemon.reloader.load = self.loaded
        self.logged: list[LogEvent] = []
        observer = cast(ILogObserver, self.logged.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def loaded(self, path: Path) -> GatewayConfig:
        if isinstance(self.next_config, ConfigError):
            raise self.next_config
        return self.next_config

    def reload_with(self, **changes: Any) -> Any:
        self.next_config = attrs.evolve(self.daemon.config, **changes)
        return self.daemon.reload()

    def metric(self, name: str, **labels: str) -> float | None:
        return metric_value(generate_latest(self.daemon.registry).decode(), name, labels or None)

    def records(self, event: str) -> list[dict[str, Any]]:
        from gateway.auditlog.files import audit_folder
        from gateway.auditlog.reader import read_trail

        trail = read_trail(audit_folder(self.config.state_dir))
        return [dict(r) for r in trail if r["event"] == event]

    def errors(self) -> list[str]:
        from twisted.logger import LogLevel, formatEvent

        return [formatEvent(e) for e in self.logged if e.get("log_level") is LogLevel.error]

    def test_a_broken_file_changes_nothing_and_says_so_in_one_line(self) -> None:
        self.next_config = ConfigError(self.config.path, "target.address", "not host:port")
        outcome = self.daemon.reload()
        self.assertFalse(outcome.applied)
        self.assertIs(self.daemon.config, self.config)
        self.assertEqual(self.daemon.policy.target_names, ["web"])
        [line] = self.errors()
        self.assertIn("gateway.toml: target.address: not host:port", line)
        self.assertIn("the running one stays", line)
        self.assertEqual(self.metric("gateway_config_reloads_total", result="failure"), 1)
        self.assertEqual(self.metric("gateway_config_last_reload_successful"), 0)
        [record] = self.records("config.reloaded")
        self.assertEqual(record["result"], "refused")

    def test_a_new_target_is_reachable_and_a_removed_one_loses_its_streams(self) -> None:
        to_web, to_other = StringTransport(), StringTransport()
        for cid, target, transport in (("g-1", "web", to_web), ("g-2", "other", to_other)):
            fake = SimpleNamespace(
                id=cid, target=target, to_target=SimpleNamespace(transport=transport)
            )
            self.daemon.forwarder.active[cid] = cast(Any, fake)
        outcome = self.reload_with(targets=(Target("hmi", Address("192.168.10.9", 443)),))
        self.assertTrue(outcome.applied)
        self.assertEqual(self.daemon.policy.target_names, ["hmi"])
        self.assertTrue(to_web.disconnecting)  # StringTransport's abortConnection
        self.assertFalse(to_other.disconnecting)
        self.assertTrue(
            any(TARGET_REMOVED in str(e.get("why")) for e in self.logged), "no line says why"
        )
        [record] = self.records("config.reloaded")
        self.assertEqual(record["changes"], ["target hmi added", "target web removed"])
        self.assertEqual(self.metric("gateway_config_reloads_total", result="success"), 1)

    def test_success_time_is_the_clock_s(self) -> None:
        self.reactor.advance(1000)
        self.reload_with(checks_interval=60)
        self.assertEqual(self.metric("gateway_config_last_reload_success_timestamp_seconds"), 1000)
        self.assertEqual(self.daemon.checks._interval, 60)

    def test_unchanged_relay_settings_keep_the_tunnel(self) -> None:
        live = FakeConnection()
        self.daemon.observer.current = live  # type: ignore[assignment]
        self.reload_with(targets=())
        self.assertEqual(live.drained, [])

    def test_a_new_relay_address_drains_the_tunnel_and_dials_the_new_one(self) -> None:
        live = FakeConnection()
        self.daemon.observer.current = live  # type: ignore[assignment]
        new = Address("127.0.0.1", 9999)
        self.reload_with(relay=attrs.evolve(self.config.relay, address=new))
        self.assertEqual(live.drained, [self.config.drain_timeout])
        self.assertEqual(self.daemon.tunnel.link.address, new)
        self.assertEqual(self.daemon.tunnel_status.relay, "127.0.0.1:9999")
        self.daemon.tunnel._endpoint.connect(self.daemon.tunnel_factory)  # the next dial
        host, port, *_ = self.reactor.tcpClients[-1]
        self.assertEqual((host, port), ("127.0.0.1", 9999))

    def test_a_renewed_certificate_is_used_without_dropping_the_tunnel(self) -> None:
        live = FakeConnection()
        self.daemon.observer.current = live  # type: ignore[assignment]
        before = self.daemon.tunnel._endpoint.wrapped
        issue_gateway_certificate(
            self.config.relay.ca,
            self.config.relay.ca.with_name("ca.key"),
            self.config.relay.cert,
            self.config.relay.key,
            gateway_id="plant7-gw",
            force=True,
        )
        outcome = self.daemon.reload()
        self.assertTrue(outcome.applied)
        assert outcome.plan is not None
        self.assertEqual(outcome.plan.changes(), ["relay.cert/key"])
        self.assertEqual(live.drained, [])
        self.assertIsNot(self.daemon.tunnel._endpoint.wrapped, before)

    def test_a_certificate_for_another_gateway_is_refused(self) -> None:
        issue_gateway_certificate(
            self.config.relay.ca,
            self.config.relay.ca.with_name("ca.key"),
            self.config.relay.cert,
            self.config.relay.key,
            gateway_id="plant8-gw",
            force=True,
        )
        outcome = self.daemon.reload()
        self.assertFalse(outcome.applied)
        self.assertIn("is for gateway 'plant8-gw'", outcome.problem or "")
        self.assertEqual(len(self.errors()), 1)

    def test_a_status_listener_moves_once_the_new_port_is_bound(self) -> None:
        old = self.daemon.listeners["status"]
        outcome = self.reload_with(status_listen=Address("127.0.0.1", 8082))
        self.assertTrue(outcome.applied)
        ports = [port for port, *_ in self.reactor.tcpServers]
        self.assertEqual(ports.count(8082), 1)
        self.assertIsNot(self.daemon.listeners["status"], old)
        self.assertFalse(old.running)

    def test_a_status_port_taken_keeps_the_old_listener(self) -> None:
        old = self.daemon.listeners["status"]
        self.reactor.taken.add(8082)
        outcome = self.reload_with(status_listen=Address("127.0.0.1", 8082))
        self.assertTrue(outcome.applied)  # the rest is applied; the listener stays
        self.assertIs(self.daemon.listeners["status"], old)
        self.assertTrue(old.running)
        self.assertIn("status.listen: cannot listen on 127.0.0.1:8082", outcome.warnings[0])
        self.assertEqual(self.daemon.config.status_listen, self.config.status_listen)
        self.reactor.taken.clear()  # plant IT freed the port: the next SIGHUP moves it
        again = self.daemon.reload()
        assert again.plan is not None
        self.assertEqual(again.plan.changes(), ["status.listen"])
        self.assertIsNot(self.daemon.listeners["status"], old)

    def test_the_file_s_mode_applies_when_the_plant_never_chose_one(self) -> None:
        grant = self.daemon.consent.implicit_session("erin")
        assert not isinstance(grant, Refused)
        self.reload_with(access_mode=AccessMode.DISABLED)
        self.assertIs(self.daemon.policy.mode, AccessMode.DISABLED)
        self.assertIsNone(self.daemon.consent.grant(grant.session))  # ended, as a switch would
        self.assertIsNone(self.daemon.state.read_mode())  # the file said it: nothing saved
        [record] = self.records("mode.changed")
        self.assertEqual(record["who"], "config reload")

    def test_the_plant_s_choice_wins_over_the_file_s_mode(self) -> None:
        self.daemon.state.write_mode(AccessMode.UNATTENDED, by="staff", at=0)
        self.reload_with(access_mode=AccessMode.DISABLED)
        self.assertIs(self.daemon.policy.mode, AccessMode.UNATTENDED)

    def test_access_timings_and_limits_apply_at_once(self) -> None:
        from gateway.config import StreamLimits

        self.reload_with(
            consent=ConsentRules(request_timeout=30), limits=StreamLimits(streams_per_target=2)
        )
        self.assertEqual(self.daemon.consent.rules.request_timeout, 30)
        assert self.daemon.forwarder.limits is not None
        self.assertEqual(self.daemon.forwarder.limits.limits.streams_per_target, 2)

    def test_unattended_sessions_follow_the_allowlist(self) -> None:
        grant = self.daemon.consent.implicit_session("erin")
        assert not isinstance(grant, Refused)
        self.assertEqual(grant.targets, frozenset({"web"}))
        self.reload_with(targets=(Target("hmi", Address("192.168.10.9", 443)),))
        now = self.daemon.consent.grant(grant.session)
        assert now is not None
        self.assertEqual(now.targets, frozenset({"hmi"}))

    def test_use_identity_swaps_the_certificate_for_renewal(self) -> None:
        """What renewal calls once it has written the new pair in place: the next connection
        presents it, the live one carries on, the expiry metric follows, and a later SIGHUP
        sees nothing new."""
        expiry = self.metric("gateway_certificate_expiry_timestamp_seconds") or 0.0
        live = FakeConnection()
        self.daemon.observer.current = live  # type: ignore[assignment]
        before = self.daemon.tunnel._endpoint.wrapped
        relay = self.config.relay
        issue_gateway_certificate(
            relay.ca,
            relay.ca.with_name("ca.key"),
            relay.cert,
            relay.key,
            gateway_id="plant7-gw",
            days=30,
            force=True,
        )
        self.daemon.use_identity(relay.cert, relay.key)
        self.assertIsNot(self.daemon.tunnel._endpoint.wrapped, before)
        self.assertEqual(live.drained, [])
        self.daemon.observer.current = None  # the metrics read a real tunnel's socket
        renewed = self.metric("gateway_certificate_expiry_timestamp_seconds") or 0.0
        self.assertLess(renewed, expiry)
        outcome = self.daemon.reload()
        assert outcome.plan is not None
        self.assertEqual(outcome.plan.changes(), [])

    def test_use_identity_refuses_a_pair_that_does_not_match(self) -> None:
        from gateway.tls import TLSFileError

        before = self.daemon.tunnel._endpoint.wrapped
        relay = self.config.relay
        with self.assertRaises(TLSFileError):
            self.daemon.use_identity(relay.cert, relay.ca.with_name("ca.key"))
        self.assertIs(self.daemon.tunnel._endpoint.wrapped, before)

    def test_a_moved_state_directory_is_left_for_a_restart(self) -> None:
        elsewhere = self.config.state_dir.parent / "elsewhere"
        outcome = self.reload_with(state_dir=elsewhere, checks_interval=60)
        self.assertTrue(outcome.applied)
        self.assertEqual(
            outcome.warnings, ("service.state_dir changed: takes effect after a restart",)
        )
        self.assertEqual(self.daemon.config.state_dir, self.config.state_dir)
        self.assertEqual(self.daemon.config.checks_interval, 60)
        self.assertFalse(elsewhere.exists())
