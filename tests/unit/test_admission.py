"""Who may hold a connection to the relay: per-source limits at accept time, the engineers' token
deadline and idle timeout, and stream limits per engineer connection and per gateway tunnel.

Tunnel connections are real and joined in memory; the accept-time check is driven through the
relay's own TLS factory (``buildProtocol`` is where Twisted hands over an accepted socket).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.logsafe import RateLimitedLog
from gateway.reactor import IGatewayReactor
from gateway.relay.admission import (
    ConnectionGuard,
    ConnectionLimits,
    EngineerAdmission,
    GuardedTLSFactory,
    StreamLimits,
)
from gateway.relay.authorisation import EveryAuthenticatedEngineer
from gateway.relay.dialer import LocalDialer
from gateway.relay.directory import MemoryGatewayDirectory
from gateway.relay.engineers import EngineerStreams
from gateway.relay.gateways import GatewayTunnels
from gateway.relay.metrics import RelayMetrics
from gateway.relay.path import EngineerPath
from gateway.relay.service import makeService
from gateway.tls import server_options
from gateway.tunnel.connection import TunnelConnection
from gateway.tunnel.stream import TunnelStream
from gateway.wire import AUTHORIZATION_HEADER, GATEWAY_HEADER, StreamRefused
from tests.helpers.pki import make_pki
from tests.helpers.tunnel import AcceptAll, Linked, Recorder, linked_tunnels, settle_all
from tests.unit.test_relay_engineers import OneToken
from tests.unit.test_relay_service import relay_config

HOST = "198.51.100.7"


def address(port: int, host: str = HOST) -> IPv4Address:
    return IPv4Address("TCP", host, port)


def lines(events: Sequence[LogEvent]) -> str:
    return "\n".join(formatEvent(e) for e in events)


class Guarded:
    """A guard on a clock, with its metrics."""

    def __init__(self, case: SynchronousTestCase, limits: ConnectionLimits) -> None:
        self.case = case
        self.clock = Clock()
        self.metrics = RelayMetrics(CollectorRegistry())
        self.guard = ConnectionGuard(
            "engineer",
            limits,
            clock=self.clock,
            metrics=self.metrics,
            lines=RateLimitedLog(self.clock),
        )

    def connect(self, port: int, host: str = HOST) -> Linked:
        """A connection accepted from ``host:port`` (HTTP/2 up), counted by the guard."""
        link = linked_tunnels(AcceptAll(), self.clock)
        self.guard.register(link.server, address(port, host))
        self.case.addCleanup(link.close)
        return link

    def metric(self, name: str, **labels: str) -> float | None:
        value: float | None = self.metrics.registry.get_sample_value(name, labels)
        return value


class PerSourceLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.g = Guarded(
            self,
            ConnectionLimits(
                max_per_source=3, max_unauthenticated_per_source=2, max_unauthenticated=4
            ),
        )

    def test_unauthenticated_connections_from_one_address_are_limited(self) -> None:
        self.g.connect(1)
        self.g.connect(2)
        self.assertEqual(self.g.guard.refusal(HOST), "unauthenticated-per-source")
        self.assertIsNone(self.g.guard.refusal("203.0.113.1"))  # another address is not

    def test_an_authenticated_connection_frees_its_unauthenticated_slot(self) -> None:
        first = self.g.connect(1)
        self.g.connect(2)
        self.g.guard.authenticated(first.server)
        self.assertIsNone(self.g.guard.refusal(HOST))
        self.assertEqual(self.g.guard.connections_from(HOST), (2, 1))

    def test_all_connections_from_one_address_are_limited(self) -> None:
        for port in (1, 2, 3):
            self.g.guard.authenticated(self.g.connect(port).server)
        self.assertEqual(self.g.guard.refusal(HOST), "per-source")

    def test_unauthenticated_connections_from_all_addresses_are_limited(self) -> None:
        for n in range(4):
            self.g.connect(1, host=f"203.0.113.{n}")
        self.assertEqual(self.g.guard.refusal("203.0.113.99"), "unauthenticated")

    def test_a_closed_connection_gives_its_slots_back(self) -> None:
        first = self.g.connect(1)
        self.g.connect(2)
        first.close()
        self.assertIsNone(self.g.guard.refusal(HOST))
        self.assertEqual(self.g.guard.connections_from(HOST), (1, 1))
        self.assertEqual(
            self.g.metric("relay_connections_open", listener="engineer", state="unauthenticated"),
            1,
        )


class AcceptTimeTests(SynchronousTestCase):
    """The check happens in the TLS factory's buildProtocol: before any TLS work."""

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-admission-")
        self.addCleanup(tmp.cleanup)
        pki = make_pki(Path(tmp.name))
        self.g = Guarded(self, ConnectionLimits(max_unauthenticated_per_source=2))
        self.built: list[TunnelConnection] = []

        def build() -> TunnelConnection:
            connection = TunnelConnection(client_side=False, clock=self.g.clock)
            self.built.append(connection)
            return connection

        inner = Factory.forProtocol(build)
        options = server_options(pki.relay_cert, pki.relay_key, client_ca=None)
        self.factory = GuardedTLSFactory(self.g.guard, options, inner, self.g.clock)

    def test_a_connection_over_the_limit_is_closed_before_tls_and_counted(self) -> None:
        for port in (1, 2):
            protocol = self.factory.buildProtocol(address(port))
            self.assertIs(protocol.wrappedProtocol, self.built[-1])
            protocol.makeConnection(StringTransport(peerAddress=address(port)))
        with capturedLogs() as events:
            refused = self.factory.buildProtocol(address(3))
        self.assertIsNone(refused)  # Twisted closes the socket at once
        self.assertEqual(len(self.built), 2)
        self.assertIn(
            "engineer connection from 198.51.100.7:3 refused at once: too many unauthenticated "
            "connections from this address",
            lines(events),
        )
        self.assertEqual(
            self.g.metric(
                "relay_connections_refused_total",
                listener="engineer",
                reason="unauthenticated-per-source",
            ),
            1,
        )

    def test_refusals_are_logged_rate_limited(self) -> None:
        for port in (1, 2):
            self.factory.buildProtocol(address(port)).makeConnection(StringTransport())
        with capturedLogs() as events:
            for port in range(3, 503):
                self.factory.buildProtocol(address(port))
        self.assertEqual(len(events), 20)
        self.assertEqual(
            self.g.metric(
                "relay_connections_refused_total",
                listener="engineer",
                reason="unauthenticated-per-source",
            ),
            500,
        )


class DeadlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.g = Guarded(self, ConnectionLimits(auth_timeout=10, idle_timeout=60))

    def test_a_connection_without_a_valid_token_in_time_is_told_and_closed(self) -> None:
        link = self.g.connect(1)
        self.g.clock.advance(9.9)
        self.assertFalse(link.server.closed)
        with capturedLogs() as events:
            self.g.clock.advance(0.1)
            link.settle()
        logged = lines(events)
        self.assertIn(
            "engineer connection from 198.51.100.7:1: not authenticated within 10 s; closing",
            logged,
        )
        self.assertIn("(GOAWAY NO_ERROR: not authenticated within 10 s of connecting)", logged)
        self.assertTrue(link.server.closed)
        self.assertEqual(
            self.g.metric(
                "relay_connections_closed_total", listener="engineer", reason="auth-timeout"
            ),
            1,
        )
        self.assertEqual(self.g.guard.connections_from(HOST), (0, 0))

    def test_a_connection_still_in_its_tls_handshake_is_dropped(self) -> None:
        connection = TunnelConnection(client_side=False, clock=self.g.clock, ready_timeout=None)
        transport = StringTransport()
        connection.makeConnection(transport)
        self.g.guard.register(connection, address(1))
        self.g.clock.advance(10)
        self.assertTrue(transport.disconnecting)

    def test_an_authenticated_connection_has_no_deadline(self) -> None:
        link = self.g.connect(1)
        self.g.guard.authenticated(link.server)
        self.g.clock.advance(30)
        link.settle()
        self.assertFalse(link.server.closed)

    def test_an_authenticated_connection_without_streams_is_closed_as_idle(self) -> None:
        link = self.g.connect(1)
        self.g.guard.authenticated(link.server)
        with capturedLogs() as events:
            for _ in range(14):
                self.g.clock.advance(6)
                link.settle()
        logged = lines(events)
        self.assertIn("no stream for 60 s; closing (idle)", logged)
        self.assertIn("closed the tunnel (GOAWAY NO_ERROR: idle)", logged)
        self.assertTrue(link.client.closed)
        self.assertEqual(
            self.g.metric("relay_connections_closed_total", listener="engineer", reason="idle"),
            1,
        )

    def test_an_open_stream_keeps_a_connection_from_being_idle(self) -> None:
        link = self.g.connect(1)
        self.g.guard.authenticated(link.server)
        link.client.open_stream("web").attach(Recorder())
        for _ in range(30):
            self.g.clock.advance(6)
            link.settle()
        self.assertFalse(link.server.closed)

    def test_a_closed_connection_leaves_no_timer(self) -> None:
        link = self.g.connect(1)
        link.close()
        other = self.g.connect(2)
        self.g.guard.authenticated(other.server)
        other.close()
        self.assertEqual(self.g.clock.getDelayedCalls(), [])


class EngineerWorld:
    """An engineer connection (guarded) and a gateway tunnel, with the relay's handler between."""

    def __init__(self, case: SynchronousTestCase, limits: StreamLimits) -> None:
        self.clock = Clock()
        self.metrics = RelayMetrics(CollectorRegistry())
        self.tunnels = GatewayTunnels()
        directory = MemoryGatewayDirectory(self.clock)
        self.guard = ConnectionGuard(
            "engineer",
            ConnectionLimits(auth_timeout=10),
            clock=self.clock,
            metrics=self.metrics,
            lines=RateLimitedLog(self.clock),
        )
        handler = EngineerStreams(
            path=EngineerPath(
                credentials=OneToken(),
                authorisation=EveryAuthenticatedEngineer(),
                directory=directory,
                metrics=self.metrics,
            ),
            dialer=LocalDialer(self.tunnels),
            metrics=self.metrics,
            clock=self.clock,
            admission=EngineerAdmission(
                guard=self.guard, limits=limits, tunnel_streams=self.tunnels.streams
            ),
        )
        self.eng = linked_tunnels(handler, self.clock)
        self.gw = linked_tunnels(AcceptAll(accept=False), self.clock)
        self.tunnels.add("gw-1", self.gw.client)
        directory.gateway_connected("gw-1")
        self.guard.register(self.eng.server, address(1))
        self.streams: list[TunnelStream] = []
        case.addCleanup(self.close)

    def close(self) -> None:
        self.eng.close()
        self.gw.close()
        for stream in self.streams:  # answers a test did not look at
            stream.response.addErrback(lambda _: None)

    def ask(self, token: str = "good", gateway: str = "gw-1", target: str = "web") -> TunnelStream:
        stream = self.eng.client.open_stream(
            target,
            headers=[
                (AUTHORIZATION_HEADER, b"Bearer " + token.encode()),
                (GATEWAY_HEADER, gateway.encode()),
            ],
        )
        stream.attach(Recorder())
        self.streams.append(stream)
        settle_all(self.eng, self.gw)
        return stream


class EngineerAdmissionTests(SynchronousTestCase):
    def test_a_valid_token_authenticates_the_connection(self) -> None:
        world = EngineerWorld(self, StreamLimits())
        world.ask(token="bad")
        self.assertEqual(world.guard.connections_from(HOST), (1, 1))
        world.ask()
        self.assertEqual(world.guard.connections_from(HOST), (1, 0))
        world.clock.advance(10)
        settle_all(world.eng, world.gw)
        self.assertFalse(world.eng.server.closed)

    def test_a_refusal_after_the_token_was_accepted_still_authenticates(self) -> None:
        world = EngineerWorld(self, StreamLimits())
        refused = world.ask(gateway="nowhere")
        self.failureResultOf(refused.response, StreamRefused)
        self.assertEqual(world.guard.connections_from(HOST), (1, 0))

    def test_only_bad_tokens_and_the_connection_is_closed_at_the_deadline(self) -> None:
        world = EngineerWorld(self, StreamLimits())
        for _ in range(3):
            world.ask(token="bad")
        world.clock.advance(10)
        settle_all(world.eng, world.gw)
        self.assertTrue(world.eng.client.closed)

    def test_streams_over_the_limit_per_connection_are_refused(self) -> None:
        world = EngineerWorld(self, StreamLimits(per_connection=2))
        first, second = world.ask(), world.ask()
        third = world.ask()
        refused = self.failureResultOf(third.response, StreamRefused).value
        assert isinstance(refused, StreamRefused)
        self.assertEqual((refused.status, refused.token), (429, "limit-reached"))
        self.assertIn("limit per engineer connection", refused.reason)
        self.assertEqual(
            world.metrics.registry.get_sample_value(
                "relay_streams_total", {"result": "limit-reached"}
            ),
            1,
        )
        self.assertNoResult(first.response)  # the two before it carry on
        self.assertNoResult(second.response)

    def test_streams_over_the_limit_per_tunnel_are_refused(self) -> None:
        world = EngineerWorld(self, StreamLimits(per_tunnel=2))
        world.ask(), world.ask()
        third = world.ask()
        refused = self.failureResultOf(third.response, StreamRefused).value
        assert isinstance(refused, StreamRefused)
        self.assertEqual(refused.token, "limit-reached")
        self.assertIn("gateway 'gw-1' has 2 streams open already", refused.reason)


class TargetNameTests(SynchronousTestCase):
    def test_an_authority_that_names_no_target_goes_no_further_than_the_relay(self) -> None:
        world = EngineerWorld(self, StreamLimits())
        for authority in ("\x1b[2Jweb", "a" * 60_000, "web/../plc", "we b"):
            refused = self.failureResultOf(world.ask(target=authority).response, StreamRefused)
            assert isinstance(refused.value, StreamRefused)
            self.assertEqual(refused.value.token, "bad-request")
            self.assertIn("is not a target name", refused.value.reason)
        self.assertEqual(world.gw.server.streams, {})  # the gateway never heard of them
        self.assertEqual(len(world.gw.handler.streams), 0)


class ComposedRelayTests(SynchronousTestCase):
    """makeService puts a guard on both listeners, with the limits from relay.toml."""

    def test_both_listeners_check_each_connection_before_tls(self) -> None:
        reactor = MemoryReactorClock()
        relay = makeService(relay_config(self), cast(IGatewayReactor, reactor))
        relay.startService()
        self.addCleanup(relay.stopService)
        gateways, engineers, _ = (factory for _, factory, _, _ in reactor.tcpServers)
        assert isinstance(gateways, GuardedTLSFactory)
        assert isinstance(engineers, GuardedTLSFactory)
        self.assertEqual(engineers.guard.limits.max_unauthenticated_per_source, 16)
        self.assertEqual(engineers.guard.limits.max_per_source, 64)
        self.assertEqual(engineers.guard.limits.auth_timeout, 10)
        self.assertEqual(engineers.guard.limits.idle_timeout, 600)
        self.assertEqual(gateways.guard.limits.max_unauthenticated_per_source, 64)
        self.assertIsNone(gateways.guard.limits.auth_timeout)
        for port in range(16):
            engineers.buildProtocol(address(port)).makeConnection(StringTransport())
        self.assertIsNone(engineers.buildProtocol(address(99)))
        self.assertIsNotNone(gateways.buildProtocol(address(99)))
