# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The engineer client (`gateway.connect`) composed as ``gateway connect`` runs it.

`EngineerClient` runs on a `MemoryReactorClock`: its local listener is the reactor's recorded TCP
server (a browser connection is a `StringTransport`), and its relay is an in-memory tunnel whose
far end answers like the relay's engineer side does on the wire (`gateway.wire`), so these tests
check the client against the contract, not against the relay's code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

from h2.connection import ConnectionState
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.config import Address
from gateway.connect import ConnectOptions, EngineerClient, LocalConnection, gateway_info
from gateway.reactor import IGatewayReactor
from gateway.tunnel.connection import IStreamHandler, TunnelConnection
from gateway.tunnel.stream import TunnelStream
from gateway.wire import GATEWAY_INFO_PATH, GatewayInfo, Refusal
from tests.helpers.tunnel import Recorder

RELAY = Address("relay.example.com", 9443)
OPTIONS = ConnectOptions(
    relay=RELAY,
    ca=Path("never-read-ca.pem"),  # the in-memory relay needs no TLS
    token="rsg_secret",
    gateway="plant7",
    target="web",
    listen=Address("127.0.0.1", 18080),
)


class BrowserTransport(StringTransport):
    """A browser's TCP connection: half-closeable, like the real one."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


@implementer(IStreamHandler)
class FakeRelay:
    """The relay's engineer side as the wire describes it.

    ``answers`` are used up one per CONNECT stream: ``None`` accepts (the bytes go to a
    `Recorder`), a ``(Refusal, reason)`` refuses.  ``GATEWAY_INFO_PATH`` is answered with ``info``.
    """

    def __init__(self) -> None:
        self.streams: list[TunnelStream] = []
        self.recorders: list[Recorder] = []
        self.answers: list[tuple[Refusal, str] | None] = []
        self.info: object = {"gateway": "plant7", "online": True}
        self.info_refusal: tuple[Refusal, str] | None = None

    def stream_requested(self, stream: TunnelStream) -> None:
        self.streams.append(stream)
        assert stream.request is not None
        if stream.request.method == "GET" and stream.request.path == GATEWAY_INFO_PATH:
            if self.info_refusal is not None:
                stream.refuse(*self.info_refusal)
                return
            stream.respond(200, [(b"content-type", b"application/json")])
            stream.write(json.dumps(self.info).encode())
            stream.loseWriteConnection()
            return
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            stream.refuse(*answer)
            return
        stream.accept()
        recorder = Recorder()
        self.recorders.append(recorder)
        stream.attach(recorder)


@implementer(IStreamClientEndpoint)
class InMemoryRelay:
    """Dials `FakeRelay` over an in-memory tunnel; ``refuse`` makes every dial fail instead."""

    def __init__(self, clock: MemoryReactorClock, handler: FakeRelay) -> None:
        self.clock = clock
        self.handler = handler
        self.refuse: Exception | None = None
        self.greet = True
        self.ends: list[TunnelConnection] = []
        self.pumps: list[IOPump] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.refuse is not None:
            return fail(self.refuse)
        protocol = factory.buildProtocol(IPv4Address("TCP", RELAY.host, RELAY.port))
        assert protocol is not None
        relay = TunnelConnection(client_side=False, clock=self.clock, handler=self.handler)
        relay_io = FakeTransport(relay, isServer=True)
        client_io = FakeTransport(protocol, isServer=False)
        pump = connect(relay, relay_io, protocol, client_io, greet=self.greet, clock=self.clock)
        self.pumps.append(pump)
        self.ends.append(relay)
        return succeed(protocol)

    def settle(self) -> None:
        for _ in range(100):
            if not any([pump.flush() for pump in self.pumps]):
                return
        raise AssertionError("the in-memory tunnel never settled")


class EngineerClientTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.relay = FakeRelay()
        self.endpoint = InMemoryRelay(self.reactor, self.relay)
        self.reports: list[str] = []
        self.client = self.engineer_client(self.endpoint)

    def engineer_client(self, endpoint: IStreamClientEndpoint) -> EngineerClient:
        # MemoryReactorClock declares only the reactor interfaces it fakes (no processes).
        reactor = cast(IGatewayReactor, self.reactor)
        return EngineerClient(OPTIONS, reactor, self.reports.append, endpoint=endpoint)

    def start(self) -> None:
        self.client.startService()
        self.addCleanup(self.stop)
        self.endpoint.settle()

    def stop(self) -> None:
        if self.client.running:
            d = self.client.stopService()
            self.endpoint.settle()
            self.reactor.advance(10)  # a relay that never answers our close is aborted
            self.successResultOf(d)

    def browser(self, settle: bool = True) -> tuple[LocalConnection, BrowserTransport]:
        """A browser connecting to the local port."""
        [(port, factory, _, interface)] = self.reactor.tcpServers
        self.assertEqual((interface, port), ("127.0.0.1", 18080))
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        assert isinstance(protocol, LocalConnection)
        transport = BrowserTransport()
        protocol.makeConnection(transport)
        if settle:
            self.endpoint.settle()
        return protocol, transport


class StreamTests(EngineerClientTestCase):
    def test_the_fakes_provide_their_interfaces(self) -> None:
        verifyObject(IStreamHandler, self.relay)
        verifyObject(IStreamClientEndpoint, self.endpoint)

    def test_streams_carry_the_bearer_token_and_the_gateway_id(self) -> None:
        self.start()
        self.browser()
        [stream] = self.relay.streams
        assert stream.request is not None
        self.assertEqual((stream.request.method, stream.request.authority), ("CONNECT", "web"))
        self.assertEqual(stream.request.headers["authorization"], "Bearer rsg_secret")
        self.assertEqual(stream.request.headers["gateway"], "plant7")

    def test_bytes_flow_both_ways_through_the_stream(self) -> None:
        self.start()
        browser, transport = self.browser()
        self.assertEqual(transport.producerState, "producing")
        browser.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.endpoint.settle()
        self.assertEqual(self.relay.recorders[0].received, b"GET / HTTP/1.1\r\n\r\n")
        self.relay.streams[0].write(b"HTTP/1.1 200 OK\r\n\r\n")
        self.endpoint.settle()
        self.assertEqual(transport.value(), b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(self.reports, [])

    def test_browser_bytes_wait_for_the_relay(self) -> None:
        self.endpoint.greet = False  # the relay's HTTP/2 settings arrive at settle()
        self.client.startService()
        self.addCleanup(self.stop)
        browser, transport = self.browser(settle=False)
        self.assertEqual(transport.producerState, "paused")
        browser.dataReceived(b"early")
        self.endpoint.settle()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.relay.recorders[0].received, b"early")


class RefusalTests(EngineerClientTestCase):
    def test_a_refusal_is_one_line_and_ends_only_that_connection(self) -> None:
        reason = "target 'web' is not in this gateway's allowlist"
        self.relay.answers = [(Refusal.TARGET_NOT_ALLOWED, reason), None]
        self.start()
        _, refused = self.browser()
        other, kept = self.browser()
        self.assertEqual(self.reports, [reason])
        self.assertTrue(refused.disconnecting)
        self.assertFalse(kept.disconnecting)
        other.dataReceived(b"still here")
        self.endpoint.settle()
        self.assertEqual(self.relay.recorders[0].received, b"still here")
        self.assertIsNotNone(self.client.current)

    def test_the_gateways_own_words_reach_the_engineer(self) -> None:
        reason = "gateway 'plant7' is offline (its tunnel to the relay is down)"
        self.relay.answers = [(Refusal.GATEWAY_OFFLINE, reason)]
        self.start()
        self.browser()
        self.assertEqual(self.reports, [reason])


class UnreachableRelayTests(EngineerClientTestCase):
    def test_an_unreachable_relay_is_one_line_however_many_connections_wait(self) -> None:
        self.endpoint.refuse = ConnectionRefusedError()
        self.start()
        self.client.report_gateway()
        browsers = [self.browser()[1] for _ in range(3)]
        for _ in range(5):
            self.reactor.advance(16)  # past the longest backoff: every waiter saw a failure
        self.assertEqual(
            self.reports,
            [f"cannot reach relay {RELAY}: Connection was refused by other side"],
        )
        self.assertTrue(all(transport.disconnecting for transport in browsers))

    def test_a_relay_reached_again_is_news_after_the_next_outage(self) -> None:
        self.endpoint.refuse = ConnectionRefusedError()
        self.start()
        self.browser()
        self.reactor.advance(16)
        self.endpoint.refuse = None
        self.reactor.advance(16)
        self.endpoint.settle()
        self.assertIsNotNone(self.client.current)
        self.endpoint.refuse = ConnectionRefusedError()
        self.endpoint.ends[0].transport.loseConnection()  # the relay goes away
        self.endpoint.settle()
        self.browser()
        self.reactor.advance(16)
        self.assertEqual(
            self.reports,
            [
                f"cannot reach relay {RELAY}: Connection was refused by other side",
                f"connection to relay {RELAY} lost; reconnecting",
                f"cannot reach relay {RELAY}: Connection was refused by other side",
            ],
        )

    def test_a_failed_handshake_is_told_once_in_plain_words(self) -> None:
        dialled: list[IProtocol] = []

        @implementer(IStreamClientEndpoint)
        class SilentRelay:
            def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
                protocol = factory.buildProtocol(IPv4Address("TCP", RELAY.host, RELAY.port))
                assert protocol is not None
                protocol.makeConnection(StringTransport())
                dialled.append(protocol)
                return succeed(protocol)

        verifyObject(IStreamClientEndpoint, SilentRelay())
        self.client = self.engineer_client(SilentRelay())
        self.start()
        self.client.report_gateway()
        self.browser()
        handshake = SSL.Error([("SSL routines", "", "certificate verify failed")])
        dialled[0].connectionLost(Failure(handshake))
        self.assertEqual(
            self.reports,
            [
                f"cannot reach relay {RELAY}: the other side's certificate is not signed by the "
                "pinned CA (or has expired)"
            ],
        )


class StopTests(EngineerClientTestCase):
    def test_stopping_says_goodbye_and_reports_nothing(self) -> None:
        self.start()
        _, transport = self.browser()
        [relay] = self.endpoint.ends
        d = self.client.stopService()
        self.endpoint.settle()
        self.successResultOf(d)
        self.assertEqual(relay.h2.state_machine.state, ConnectionState.CLOSED)  # heard GOAWAY
        self.assertTrue(relay.closed)
        self.assertTrue(transport.disconnecting)  # open browser connections end with us
        self.assertEqual(self.reports, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopping_while_the_relay_is_unreachable_reports_nothing(self) -> None:
        self.endpoint.refuse = ConnectionRefusedError()
        self.start()
        self.client.report_gateway()
        self.browser()
        self.successResultOf(self.client.stopService())
        self.assertEqual(self.reports, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_a_relay_that_goes_away_is_reported_as_lost(self) -> None:
        self.start()
        self.endpoint.ends[0].transport.loseConnection()
        self.endpoint.settle()
        self.assertEqual(self.reports, [f"connection to relay {RELAY} lost; reconnecting"])


class GatewayCheckTests(EngineerClientTestCase):
    def test_check_gateway_reads_the_relays_answer(self) -> None:
        self.relay.info = {"gateway": "plant7", "online": False}
        self.start()
        d = self.client.check_gateway()
        self.endpoint.settle()
        self.assertEqual(self.successResultOf(d), GatewayInfo(gateway="plant7", online=False))
        [stream] = self.relay.streams
        assert stream.request is not None
        self.assertEqual(stream.request.headers["authorization"], "Bearer rsg_secret")
        self.assertEqual(stream.request.headers["gateway"], "plant7")

    def test_the_startup_check_is_one_line(self) -> None:
        self.start()
        self.client.report_gateway()
        self.endpoint.settle()
        self.assertEqual(self.reports, ["gateway 'plant7' is online; open http://127.0.0.1:18080/"])

    def test_an_offline_gateway_is_waited_for(self) -> None:
        self.relay.info = {"gateway": "plant7", "online": False}
        self.start()
        self.client.report_gateway()
        self.endpoint.settle()
        self.assertEqual(
            self.reports,
            ["gateway 'plant7' is offline (waiting for it); open http://127.0.0.1:18080/"],
        )

    def test_a_refused_check_tells_the_reason(self) -> None:
        self.relay.info_refusal = (Refusal.BAD_TOKEN, "the engineer token was not accepted")
        self.start()
        d = self.client.report_gateway()
        self.endpoint.settle()
        self.successResultOf(d)
        self.assertEqual(self.reports, ["the engineer token was not accepted"])

    def test_an_answer_that_is_not_an_object_is_told(self) -> None:
        self.relay.info = ["plant7"]
        self.start()
        self.client.report_gateway()
        self.endpoint.settle()
        self.assertEqual(self.reports, ["the relay's answer on /v1/gateway is not a JSON object"])

    def test_gateway_info_parses_the_body(self) -> None:
        self.assertEqual(
            gateway_info(b'{"gateway": "gw-1", "online": true}'), GatewayInfo("gw-1", True)
        )
        self.assertEqual(gateway_info(b""), GatewayInfo("", False))
        self.assertRaises(ValueError, gateway_info, b"not json")
