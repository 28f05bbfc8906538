"""``makeService`` for the relay: what it listens on, and that it stops without leftovers.

A `MemoryReactorClock` stands in for the reactor, with a config made of real test certificates.
Tunnel connections built by the relay's own factories are joined in memory to a gateway and an
engineer client, so one engineer stream crosses the whole composed relay.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import cast

from OpenSSL import crypto
from twisted.internet.testing import MemoryReactorClock
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from gateway.config import Address, EngineerListener, GatewayListener, RelayConfig
from gateway.net.endpoints import RELAY_BACKLOG
from gateway.reactor import IGatewayReactor
from gateway.relay.credentials import CredentialFileError, add_engineer
from gateway.relay.service import RelayDaemon, makeService
from gateway.tls import FastTLSFactory
from gateway.tunnel.connection import TunnelConnection
from gateway.wire import AUTHORIZATION_HEADER, GATEWAY_HEADER
from tests.helpers.pki import make_pki
from tests.helpers.tunnel import AcceptAll, Recorder
from tests.unit.test_relay_gateways import CertifiedTransport


def relay_config(case: SynchronousTestCase, *, metrics: bool = True) -> RelayConfig:
    tmp = tempfile.TemporaryDirectory(prefix="test-relay-service-")
    case.addCleanup(tmp.cleanup)
    directory = Path(tmp.name)
    pki = make_pki(directory)
    return RelayConfig(
        path=directory / "relay.toml",
        gateways=GatewayListener(
            listen=Address("127.0.0.1", 8443),
            ca=pki.ca_cert,
            cert=pki.relay_cert,
            key=pki.relay_key,
        ),
        engineers=EngineerListener(
            listen=Address("0.0.0.0", 9443),
            tokens=directory / "engineers.toml",
            cert=pki.relay_cert,
            key=pki.relay_key,
        ),
        metrics_listen=Address("127.0.0.1", 9109) if metrics else None,
    )


def pump_all(*pumps: IOPump) -> None:
    for _ in range(1000):
        moved = False
        for pump in pumps:
            moved = pump.flush() or moved
        if not moved:
            return
    raise AssertionError("never settled")


class RelayServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.config = relay_config(self)

    def make(self, config: RelayConfig | None = None) -> RelayDaemon:
        return makeService(config or self.config, cast(IGatewayReactor, self.reactor))

    def test_nothing_listens_before_the_service_starts(self) -> None:
        self.make()
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_it_listens_for_gateways_engineers_and_metrics(self) -> None:
        relay = self.make()
        relay.startService()
        self.addCleanup(relay.stopService)
        listening = [
            (port, backlog, interface) for port, _, backlog, interface in self.reactor.tcpServers
        ]
        self.assertEqual(
            listening,
            [
                (8443, RELAY_BACKLOG, "127.0.0.1"),
                (9443, RELAY_BACKLOG, "0.0.0.0"),
                (9109, 50, "127.0.0.1"),
            ],
        )
        self.assertEqual(RELAY_BACKLOG, 4096)
        gateways, engineers, metrics = (factory for _, factory, _, _ in self.reactor.tcpServers)
        assert isinstance(gateways, FastTLSFactory)
        self.assertIs(gateways.wrappedFactory, relay.gateway_factory)
        assert isinstance(engineers, FastTLSFactory)
        self.assertIs(engineers.wrappedFactory, relay.engineer_factory)
        self.assertIsInstance(metrics, Site)

    def test_without_a_metrics_address_there_is_no_metrics_listener(self) -> None:
        relay = self.make(relay_config(self, metrics=False))
        relay.startService()
        self.addCleanup(relay.stopService)
        self.assertEqual([port for port, *_ in self.reactor.tcpServers], [8443, 9443])

    def test_stopping_leaves_no_delayed_calls(self) -> None:
        relay = self.make()
        relay.startService()
        self.successResultOf(relay.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_a_broken_engineers_file_stops_the_relay_from_starting(self) -> None:
        self.config.engineers.tokens.write_text("[[engineer\n")
        self.assertRaises(CredentialFileError, self.make)


class ComposedRelayTests(SynchronousTestCase):
    """The relay as makeService composes it, with one gateway and one engineer in memory."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.config = relay_config(self)
        self.token = add_engineer(self.config.engineers.tokens, "alice", gateways=["test-gateway"])
        self.relay = makeService(self.config, cast(IGatewayReactor, self.reactor))
        self.relay.startService()
        gateway_pem = (self.config.gateways.ca.parent / "gateway.pem").read_bytes()
        # The relay's own factories build the tunnels (TLS is left out: the transports are fake).
        self.relay_gw = self.relay.gateway_factory.buildProtocol(None)
        self.gateway = AcceptAll()
        self.gateway_end = TunnelConnection(
            client_side=False, clock=self.reactor, handler=self.gateway
        )
        self.gateway_pump = connect(
            self.gateway_end,
            FakeTransport(self.gateway_end, isServer=True),
            self.relay_gw,
            CertifiedTransport(
                self.relay_gw, crypto.load_certificate(crypto.FILETYPE_PEM, gateway_pem)
            ),
            clock=self.reactor,
        )
        self.relay_eng = self.relay.engineer_factory.buildProtocol(None)
        self.engineer = TunnelConnection(client_side=True, clock=self.reactor)
        self.engineer_pump = connect(
            self.relay_eng,
            FakeTransport(self.relay_eng, isServer=True),
            self.engineer,
            FakeTransport(self.engineer, isServer=False),
            clock=self.reactor,
        )
        self.pump()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.relay.running:
            self.relay.stopService()
        self.reactor.advance(self.config.drain_timeout)
        self.pump()

    def pump(self) -> None:
        pump_all(self.gateway_pump, self.engineer_pump)

    def test_an_engineer_stream_crosses_the_composed_relay(self) -> None:
        self.assertEqual(self.relay.metrics.gateways_connected._value.get(), 1)
        stream = self.engineer.open_stream(
            "web",
            headers=[
                (AUTHORIZATION_HEADER, f"Bearer {self.token}".encode()),
                (GATEWAY_HEADER, b"test-gateway"),
            ],
        )
        rec = Recorder()
        stream.attach(rec)
        stream.write(b"GET / HTTP/1.1\r\n\r\n")
        self.pump()
        self.assertEqual(self.successResultOf(stream.response).status, 200)
        asked = self.gateway.streams[0].request
        assert asked is not None
        self.assertEqual(asked.headers["engineer"], "alice")
        self.assertRegex(asked.headers["connection-id"], r"^c-[0-9a-f]{8}$")
        self.assertEqual(self.gateway.recorders[0].received, b"GET / HTTP/1.1\r\n\r\n")
        self.gateway.streams[0].write(b"HTTP/1.1 200 OK\r\n\r\n")
        self.pump()
        self.assertEqual(rec.received, b"HTTP/1.1 200 OK\r\n\r\n")

    def test_stopping_drains_every_tunnel_and_leaves_no_delayed_calls(self) -> None:
        stream = self.engineer.open_stream(
            "web",
            headers=[
                (AUTHORIZATION_HEADER, f"Bearer {self.token}".encode()),
                (GATEWAY_HEADER, b"test-gateway"),
            ],
        )
        rec = Recorder()
        stream.attach(rec)
        self.pump()
        self.assertEqual(self.successResultOf(stream.response).status, 200)
        stopped = self.relay.stopService()
        self.pump()
        self.assertNoResult(stopped)  # an open stream gets the drain timeout to finish
        self.reactor.advance(self.config.drain_timeout)
        self.pump()
        self.successResultOf(stopped)
        self.assertTrue(self.relay_gw.closed)
        self.assertTrue(self.relay_eng.closed)
        self.assertEqual(self.relay.metrics.gateways_connected._value.get(), 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIsNotNone(rec.lost)
