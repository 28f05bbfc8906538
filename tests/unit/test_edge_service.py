"""``makeService`` for ``gateway run``: what it listens on, dials, wires together, and cleans up."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import cast

from prometheus_client import generate_latest
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from gateway.config import AccessMode, Address, GatewayConfig, RelayLink, Target
from gateway.edge.service import EdgeDaemon, makeService
from gateway.reactor import IGatewayReactor
from gateway.tunnel.connection import TunnelConnection
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
    protocol.dataReceived(f"GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
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
            report["access"], {"mode": "unattended", "targets": ["web"], "requests": []}
        )
        self.assertEqual(
            (report["sessions"], report["connections"], report["checks"]), ([], [], [])
        )
        head, body = http_get(self.listening()[STATUS], "/")
        self.assertIn(b"plant7-gw", body)

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
