"""``makeService`` for ``gateway run``: what it listens on, dials, wires together, and cleans up."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, cast

from prometheus_client import generate_latest
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from gateway.config import AccessMode, Address, GatewayConfig, RelayLink, Target
from gateway.edge.consent import Actor, EngineerRefused, IConsent
from gateway.edge.service import EdgeDaemon, makeService
from gateway.edge.state import StateDirError
from gateway.edge.testing import RecordingChannel
from gateway.reactor import IGatewayReactor
from gateway.tunnel.connection import TunnelConnection
from gateway.wire import SESSION_PATH, SESSIONS_PATH, SessionAsk
from tests.helpers.pki import make_pki

STATUS = Address("127.0.0.1", 8081)
METRICS = Address("127.0.0.1", 9108)
RELAY = Address("127.0.0.1", 9443)


def config_in(directory: Path, **overrides: object) -> GatewayConfig:
    pki = make_pki(directory, gateway_id="plant7-gw")
    fields: dict[str, object] = {
        "path": directory / "gateway.toml",
        "relay": RelayLink(
            address=RELAY, ca=pki.ca_cert, cert=pki.gateway_cert, key=pki.gateway_key
        ),
        "targets": (Target("web", Address("192.168.10.2", 80)),),
        "access_mode": AccessMode.UNATTENDED,
        "status_listen": STATUS,
        "metrics_listen": METRICS,
    }
    fields.update(overrides)
    return GatewayConfig(**fields)  # type: ignore[arg-type]


def as_gateway_reactor(reactor: MemoryReactorClock) -> IGatewayReactor:
    """MemoryReactorClock has all that the daemon uses (TCP, time, a resolver) but does not
    declare every interface that IGatewayReactor bundles (processes, core)."""
    return cast(IGatewayReactor, reactor)


def http_get(site: Site, path: str) -> tuple[bytes, bytes]:
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    protocol.dataReceived(request.encode())
    head, _, body = transport.value().partition(b"\r\n\r\n")
    protocol.connectionLost(Failure(ConnectionRefusedError()))
    return head, body


class EdgeServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.config = config_in(self.directory())
        self.daemon: EdgeDaemon = makeService(self.config, as_gateway_reactor(self.reactor))

    def directory(self) -> Path:
        """A fresh directory removed after the test (trial's mktemp would write into the repo)."""
        tmp = tempfile.TemporaryDirectory(prefix="test-edge-service-")
        self.addCleanup(tmp.cleanup)
        return Path(tmp.name)

    def start(self) -> None:
        self.daemon.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.daemon.running:
            self.successResultOf(self.daemon.stopService())

    def listening(self) -> dict[Address, Site]:
        return {Address(i, port): cast(Site, f) for port, f, _, i in self.reactor.tcpServers}

    def test_make_service_starts_nothing(self) -> None:
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.daemon.gateway_id, "plant7-gw")

    def test_it_listens_for_status_and_metrics_and_dials_the_relay(self) -> None:
        self.start()
        self.assertEqual(set(self.listening()), {STATUS, METRICS})
        [(host, port, *_)] = self.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 9443))

    def test_without_listeners_it_only_dials(self) -> None:
        reactor = MemoryReactorClock()
        config = config_in(self.directory(), status_listen=None, metrics_listen=None)
        daemon = makeService(config, as_gateway_reactor(reactor))
        daemon.startService()
        self.assertEqual(reactor.tcpServers, [])
        self.assertEqual(len(reactor.tcpClients), 1)
        self.successResultOf(daemon.stopService())
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_stopping_cancels_every_timer(self) -> None:
        self.start()
        self.successResultOf(self.daemon.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.daemon.view.report().tunnel.state, "stopped")

    def test_a_failed_dial_shows_on_the_status_page_and_is_retried_until_stopped(self) -> None:
        self.start()
        self.daemon.checks.stopService()  # only the tunnel's own dials are counted here
        [(_, _, factory, *_)] = self.reactor.tcpClients
        [connector] = self.reactor.connectors
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.reactor.advance(0.5)  # HostnameEndpoint gives up once no address is left to try
        tunnel = self.daemon.view.report().tunnel
        self.assertEqual(tunnel.state, "connecting")
        self.assertIsNotNone(tunnel.last_error)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.successResultOf(self.daemon.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_the_status_listener_serves_the_status_json(self) -> None:
        self.start()
        head, body = http_get(self.listening()[STATUS], "/api/status")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        report = json.loads(body)
        self.assertEqual(report["id"], "plant7-gw")
        self.assertEqual(report["tunnel"]["state"], "connecting")
        self.assertEqual(report["tunnel"]["relay"], "127.0.0.1:9443")
        self.assertEqual(
            report["access"],
            {
                "mode": "unattended",
                "targets": ["web"],
                "requests": [],
                "code_entry_locked_until": None,
            },
        )
        self.assertEqual(
            (report["sessions"], report["connections"], report["checks"]), ([], [], [])
        )
        head, body = http_get(self.listening()[STATUS], "/")
        self.assertIn(b'<script src="/app.js"', body)  # the live page, filled in by its script

    def test_the_metrics_listener_serves_the_daemons_registry(self) -> None:
        self.start()
        site = self.listening()[METRICS]
        self.assertIn(b"metrics", site.resource.children)  # (WSGI: renders in a thread)
        text = generate_latest(self.daemon.registry)
        self.assertIn(b"gateway_tunnel_up 0.0", text)
        self.assertIn(b"gateway_certificate_expiry_timestamp_seconds", text)
        self.assertIn(b'gateway_build_info{version="', text)

    def test_every_tunnel_shares_the_daemons_batch_dispatcher_and_observer(self) -> None:
        first = self.daemon.tunnel_factory.buildProtocol(None)
        second = self.daemon.tunnel_factory.buildProtocol(None)
        assert isinstance(first, TunnelConnection) and isinstance(second, TunnelConnection)
        self.assertIsNot(first, second)
        self.assertIs(first.batch, self.daemon.batch)
        self.assertIs(second.batch, self.daemon.batch)
        self.assertIs(first.handler, self.daemon.dispatcher)
        self.assertIs(first.observer, self.daemon.observer)
        self.assertFalse(first.client_side)

    def test_a_tunnel_coming_up_reaches_metrics_and_status(self) -> None:
        self.start()
        tunnel = self.daemon.tunnel_factory.buildProtocol(None)
        assert isinstance(tunnel, TunnelConnection)
        self.daemon.observer.tunnel_ready(tunnel)
        self.assertEqual(self.daemon.view.report().tunnel.state, "up")
        self.assertEqual(self.daemon.view.report().tunnel.connects, 1)
        self.assertEqual(self.daemon.registry.get_sample_value("gateway_tunnel_up"), 1)
        self.assertEqual(self.daemon.registry.get_sample_value("gateway_tunnel_connects_total"), 1)
        tunnel.connectionLost(Failure(ConnectionRefusedError()))
        self.assertEqual(self.daemon.view.report().tunnel.state, "down")
        self.assertEqual(self.daemon.registry.get_sample_value("gateway_tunnel_up"), 0)


class ConsentCompositionTests(SynchronousTestCase):
    """The consent service in the daemon: state directory, mode, routes, status, metrics, stop."""

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-edge-service-")
        self.addCleanup(tmp.cleanup)
        self.directory = Path(tmp.name)
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_700_000_000)

    def make(self, **overrides: object) -> EdgeDaemon:
        config = config_in(self.directory, **overrides)
        daemon = makeService(config, as_gateway_reactor(self.reactor))
        self.addCleanup(daemon.audit_file.close)  # idempotent
        return daemon

    def test_the_daemon_exposes_one_consent_service_behind_every_face(self) -> None:
        daemon = self.make()
        self.assertTrue(verifyObject(IConsent, daemon.consent))
        self.assertIs(daemon.policy.sessions, daemon.consent)
        self.assertTrue(daemon.control.handles("POST", SESSION_PATH))
        self.assertTrue(daemon.control.handles("GET", SESSIONS_PATH))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_the_state_directory_is_made_private_beside_the_config(self) -> None:
        daemon = self.make()
        self.assertEqual(daemon.state.path, self.directory / "state")
        self.assertEqual((self.directory / "state").stat().st_mode & 0o777, 0o700)

    def test_a_state_directory_others_can_write_stops_start_up_in_one_line(self) -> None:
        state = self.directory / "shared"
        state.mkdir()
        os.chmod(state, 0o777)
        error = self.assertRaises(StateDirError, self.make, state_dir=state)
        self.assertIn("service.state_dir", str(error))
        self.assertIn(f"chmod go-w {state}", str(error))

    def test_the_plants_last_mode_wins_over_the_configured_one(self) -> None:
        config = config_in(self.directory, access_mode=AccessMode.UNATTENDED)
        daemon = makeService(config, as_gateway_reactor(self.reactor))
        daemon.consent.set_mode(AccessMode.DISABLED, Actor("operator", "alice"))
        daemon.audit_file.close()
        again = makeService(config, as_gateway_reactor(MemoryReactorClock()))
        self.addCleanup(again.audit_file.close)
        self.assertIs(again.policy.mode, AccessMode.DISABLED)
        self.assertEqual(again.view.report().access.mode, "disabled")
        registry = again.registry
        self.assertEqual(registry.get_sample_value("gateway_access_mode", {"mode": "disabled"}), 1)
        self.assertEqual(
            registry.get_sample_value("gateway_access_mode", {"mode": "unattended"}), 0
        )
        [changed] = [
            r for r in read_audit(self.directory / "state") if r["event"] == "mode.changed"
        ]
        self.assertEqual(
            (changed["who"], changed["old"], changed["new"]), ("alice", "unattended", "disabled")
        )

    def test_requests_sessions_and_the_lockout_show_in_the_status_json_and_metrics(self) -> None:
        daemon = self.make(access_mode=AccessMode.ATTENDED)
        daemon.startService()
        channel = RecordingChannel()
        daemon.consent.ask("eve", SessionAsk(reason="ticket 4711"), channel)
        report = daemon.view.report().to_json()
        [request] = report["access"]["requests"]
        self.assertEqual((request["engineer"], request["reason"]), ("eve", "ticket 4711"))
        self.assertEqual(daemon.registry.get_sample_value("gateway_session_requests_pending"), 1)
        session = daemon.consent.approve(request["id"], Actor("operator", "alice"))
        [shown] = daemon.view.report().to_json()["sessions"]
        self.assertEqual((shown["id"], shown["approved_by"]), (session.id, "alice"))
        self.assertEqual(shown["connections"], [])
        self.assertEqual(daemon.registry.get_sample_value("gateway_sessions_active"), 1)
        self.assertEqual(
            daemon.registry.get_sample_value(
                "gateway_session_decisions_total", {"decision": "approved"}
            ),
            1,
        )
        for attempt in range(5):
            self.assertRaises(
                EngineerRefused,
                daemon.consent.ask,
                "mallory",
                SessionAsk(code=f"00000{attempt}"),
                RecordingChannel(),
            )
        self.assertEqual(
            daemon.view.report().access.code_entry_locked_until, "2023-11-14T22:23:20+00:00"
        )
        # Stopping tells the engineer and leaves no timer behind.
        self.successResultOf(daemon.stopService())
        self.assertEqual(channel.last.why, "the gateway is shutting down")
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        events = [r["event"] for r in read_audit(self.directory / "state")]
        for expected in (
            "session.requested",
            "session.approved",
            "session.started",
            "code.failed",
            "code.locked",
            "session.ended",
        ):
            self.assertIn(expected, events)


def read_audit(state_dir: Path) -> list[dict[str, Any]]:
    """The records of a daemon's audit trail, as written on disk."""
    lines = (state_dir / "audit" / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]
