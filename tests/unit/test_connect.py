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
import socket
from collections.abc import Callable
from pathlib import Path
from typing import cast

from h2.connection import ConnectionState
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.config import Address
from gateway.connect import ConnectOptions, EngineerClient, LocalConnection
from gateway.connect.client import HALF_CLOSE_TIMEOUT
from gateway.net.sockets import LOCAL_RECEIVE_BUFFER
from gateway.reactor import IGatewayReactor
from gateway.tunnel.connection import IStreamHandler, TunnelConnection
from gateway.tunnel.stream import TunnelStream
from gateway.wire import NDJSON, SESSION_PATH, Refusal, SessionEvent, SessionEventKind
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
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class SocketBrowserTransport(BrowserTransport):
    """A browser's connection with a real socket behind it, for the socket options set on it."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def getHandle(self) -> socket.socket:
        return self._sock


SessionAnswer = str | tuple[Refusal, str]
"""How `FakeRelay` answers a session ask: ``"implicit"`` (200 and an approved event, as an
unattended gateway does), ``"hold"`` (200, events sent by the test) or a refusal."""


@implementer(IHalfCloseableProtocol)
class AskReader(Protocol):
    """The relay's end of a session stream: the ask's body, then whether the stream went."""

    def __init__(self, done: Callable[[bytes], None]) -> None:
        self.parts: list[bytes] = []
        self.done = done
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def readConnectionLost(self) -> None:
        self.done(b"".join(self.parts))

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True


@implementer(IStreamHandler)
class FakeRelay:
    """The relay's engineer side (and the gateway behind it) as the wire describes them.

    ``answers`` are used up one per CONNECT stream: ``None`` accepts (the bytes go to a
    `Recorder`), a ``(Refusal, reason)`` refuses.  Session asks (``POST SESSION_PATH``) are
    answered by ``session_answers`` one per ask, then by ``session_default``.
    """

    def __init__(self) -> None:
        self.streams: list[TunnelStream] = []
        self.recorders: list[Recorder] = []
        self.answers: list[tuple[Refusal, str] | None] = []
        self.session_answers: list[SessionAnswer] = []
        self.session_default: SessionAnswer = "implicit"
        self.implicit = "s-1"
        """The id of the implicit session the fake gateway gives (``"implicit"``)."""
        self.http_targets: list[str] = []
        """What the fake gateway says of its targets' kinds in the approval."""
        self.asks: list[tuple[TunnelStream, dict[str, object], AskReader]] = []

    @property
    def connects(self) -> list[TunnelStream]:
        return [s for s in self.streams if s.request is not None and s.request.method == "CONNECT"]

    def stream_requested(self, stream: TunnelStream) -> None:
        self.streams.append(stream)
        assert stream.request is not None
        if stream.request.method == "POST" and stream.request.path == SESSION_PATH:
            reader = AskReader(lambda body: self._ask(stream, body, reader))
            stream.attach(reader)
            return
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            stream.refuse(*answer)
            return
        stream.accept()
        recorder = Recorder()
        self.recorders.append(recorder)
        stream.attach(recorder)

    def _ask(self, stream: TunnelStream, body: bytes, reader: AskReader) -> None:
        self.asks.append((stream, json.loads(body or b"{}"), reader))
        answer = self.session_answers.pop(0) if self.session_answers else self.session_default
        if isinstance(answer, tuple):
            stream.refuse(*answer)
            return
        stream.respond(200, [(b"content-type", NDJSON), (b"engineer", b"erin")])
        if answer == "implicit":
            self.send(
                SessionEvent(
                    SessionEventKind.APPROVED,
                    session=self.implicit,
                    targets=["web"],
                    http_targets=self.http_targets,
                )
            )

    def send(self, event: SessionEvent, *, end: bool = False) -> None:
        """The gateway's next event on the latest session stream (``end``: then it closes)."""
        stream = self.asks[-1][0]
        stream.write(event.to_line())
        if end:
            stream.loseConnection()


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


ONLINE = (
    "gateway 'plant7' is online; open http://127.0.0.1:18080/ (session s-1, unattended mode: "
    "the plant sees this connection and can end it)"
)
UNREACHABLE = f"cannot reach relay {RELAY}: Connection was refused by other side; trying again"


class EngineerClientTestCase(SynchronousTestCase):
    options = OPTIONS

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.relay = FakeRelay()
        self.endpoint = InMemoryRelay(self.reactor, self.relay)
        self.reports: list[str] = []
        self.client = self.engineer_client(self.endpoint)

    def engineer_client(
        self, endpoint: IStreamClientEndpoint, options: ConnectOptions | None = None
    ) -> EngineerClient:
        # MemoryReactorClock declares only the reactor interfaces it fakes (no processes).
        reactor = cast(IGatewayReactor, self.reactor)
        return EngineerClient(
            options or self.options, reactor, self.reports.append, endpoint=endpoint
        )

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
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def advance(self, seconds: float, step: float = 1.0) -> None:
        """Let ``seconds`` pass, the in-memory tunnel moving its bytes all along."""
        while seconds > 0:
            self.reactor.advance(min(step, seconds))
            self.endpoint.settle()
            seconds -= step

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

    def exit_code(self) -> int:
        return self.successResultOf(self.client.finished)


class StreamTests(EngineerClientTestCase):
    def test_the_fakes_provide_their_interfaces(self) -> None:
        verifyObject(IStreamHandler, self.relay)
        verifyObject(IStreamClientEndpoint, self.endpoint)

    def test_streams_carry_the_bearer_token_the_gateway_id_and_the_session(self) -> None:
        self.start()
        self.browser()
        [stream] = self.relay.connects
        assert stream.request is not None
        self.assertEqual((stream.request.method, stream.request.authority), ("CONNECT", "web"))
        self.assertEqual(stream.request.headers["authorization"], "Bearer rsg_secret")
        self.assertEqual(stream.request.headers["gateway"], "plant7")
        self.assertEqual(stream.request.headers["session"], "s-1")

    def test_without_reason_or_code_the_ask_is_empty_and_the_session_implicit(self) -> None:
        self.start()
        [(stream, body, _)] = self.relay.asks
        assert stream.request is not None
        self.assertEqual(stream.request.headers["authorization"], "Bearer rsg_secret")
        self.assertEqual(stream.request.headers["gateway"], "plant7")
        self.assertEqual(body, {})
        self.assertEqual(self.reports, [ONLINE])

    def test_a_local_connection_gets_a_short_receive_buffer(self) -> None:
        """An upload waits ahead of the plant, not in our kernel buffers (autotuned to MBs)."""
        self.start()
        [(_, factory, _, _)] = self.reactor.tcpServers
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        assert isinstance(protocol, LocalConnection)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        transport = SocketBrowserTransport(sock)
        protocol.makeConnection(transport)
        self.assertEqual(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), 2 * LOCAL_RECEIVE_BUFFER
        )

    def test_bytes_flow_both_ways_through_the_stream(self) -> None:
        self.start()
        browser, transport = self.browser()
        self.assertEqual(transport.producerState, "producing")
        browser.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.endpoint.settle()
        self.assertEqual(self.relay.recorders[0].received, b"GET / HTTP/1.1\r\n\r\n")
        self.relay.connects[0].write(b"HTTP/1.1 200 OK\r\n\r\n")
        self.endpoint.settle()
        self.assertEqual(transport.value(), b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(self.reports, [ONLINE])

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
        self.assertEqual(len(self.endpoint.ends), 1)  # one relay connection for both streams


class HalfCloseTests(EngineerClientTestCase):
    def test_a_half_closed_browser_connection_gone_quiet_is_ended_after_the_backstop(
        self,
    ) -> None:
        """The browser sent its FIN and the far end never answers nor closes: not for ever."""
        self.start()
        browser, transport = self.browser()
        browser.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        browser.readConnectionLost()
        self.endpoint.settle()
        recorder = self.relay.recorders[0]
        self.assertTrue(recorder.read_closed, "the FIN did not travel as a half-close")
        self.advance(HALF_CLOSE_TIMEOUT - 5, step=5.0)
        self.assertFalse(transport.disconnecting)
        self.assertIsNone(recorder.lost)
        self.advance(10, step=5.0)
        self.assertTrue(transport.disconnecting, "the quiet half-closed connection stayed")
        self.assertIsNotNone(recorder.lost, "its stream stayed open at the relay")

    def test_answers_after_the_half_close_keep_the_connection(self) -> None:
        self.start()
        browser, transport = self.browser()
        browser.readConnectionLost()
        self.endpoint.settle()
        for _ in range(3):
            self.advance(HALF_CLOSE_TIMEOUT - 10, step=10.0)
            self.relay.connects[0].write(b"still working")
            self.endpoint.settle()
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value(), b"still working" * 3)


class RefusalTests(EngineerClientTestCase):
    def test_a_refusal_is_one_line_and_ends_only_that_connection(self) -> None:
        reason = "target 'web' is not in this gateway's allowlist"
        self.relay.answers = [(Refusal.TARGET_NOT_ALLOWED, reason), None]
        self.start()
        _, refused = self.browser()
        other, kept = self.browser()
        self.assertEqual(self.reports, [ONLINE, reason])
        self.assertTrue(refused.disconnecting)
        self.assertFalse(kept.disconnecting)
        other.dataReceived(b"still here")
        self.endpoint.settle()
        self.assertEqual(self.relay.recorders[0].received, b"still here")
        self.assertIsNotNone(self.client.current)
        self.assertNoResult(self.client.finished)

    def test_the_gateways_own_words_reach_the_engineer(self) -> None:
        reason = "gateway 'plant7' is offline (its tunnel to the relay is down)"
        self.relay.answers = [(Refusal.GATEWAY_OFFLINE, reason)]
        self.start()
        self.browser()
        self.assertEqual(self.reports, [ONLINE, reason])

    def test_a_connect_refused_for_a_bad_token_ends_the_client(self) -> None:
        self.relay.answers = [(Refusal.BAD_TOKEN, "the engineer token was not accepted")]
        self.start()
        self.browser()
        self.assertEqual(self.reports, [ONLINE, "the engineer token was not accepted"])
        self.assertEqual(self.exit_code(), 1)


class BrowserPageTests(EngineerClientTestCase):
    """A refused stream reaches a browser as a small page with the engineer's one line."""

    def refused_page(self, first: bytes, *, http_target: bool = False) -> BrowserTransport:
        reason = "target 'web' is not in this gateway's allowlist"
        self.relay.http_targets = ["web"] if http_target else []
        self.relay.answers = [(Refusal.TARGET_NOT_ALLOWED, reason)]
        self.start()
        browser, transport = self.browser(settle=False)
        if first:
            browser.dataReceived(first)
        self.endpoint.settle()
        self.assertEqual(self.reports, [ONLINE, reason])
        return transport

    def test_a_browser_gets_the_reason_in_a_page_and_a_clean_close(self) -> None:
        transport = self.refused_page(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 403 Forbidden\r\n"), head)
        self.assertIn(b"x-gateway-refused: target-not-allowed", head)
        self.assertIn(b"connection: close", head)
        self.assertIn(b"target &#x27;web&#x27; is not in this gateway&#x27;s allowlist", body)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted, "the page was cut off by an abort")

    def test_a_client_that_asks_for_json_gets_json(self) -> None:
        transport = self.refused_page(b"GET /api HTTP/1.1\r\nAccept: application/json\r\n\r\n")
        _, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertEqual(
            json.loads(body),
            {
                "error": "target-not-allowed",
                "reason": "target 'web' is not in this gateway's allowlist",
            },
        )

    def test_an_http_target_gets_a_page_before_the_browser_said_anything(self) -> None:
        transport = self.refused_page(b"", http_target=True)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403 "))

    def test_bytes_that_are_not_http_on_a_tcp_target_are_cut_as_before(self) -> None:
        transport = self.refused_page(b"\x16\x03\x01 a TLS hello")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.aborted)

    def test_a_dead_processor_is_a_502_page(self) -> None:
        reason = "processor 'web' at 192.168.10.2:80 refused the connection"
        self.relay.answers = [(Refusal.TARGET_UNREACHABLE, reason)]
        self.start()
        browser, transport = self.browser(settle=False)
        browser.dataReceived(b"HEAD / HTTP/1.1\r\n\r\n")
        self.endpoint.settle()
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 502 Bad Gateway"), head)
        self.assertEqual(body, b"")  # a HEAD's answer has no body


class UnreachableRelayTests(EngineerClientTestCase):
    def test_an_unreachable_relay_is_one_line_however_many_connections_wait(self) -> None:
        self.endpoint.refuse = ConnectionRefusedError()
        self.start()
        browsers = [self.browser()[1] for _ in range(3)]
        self.advance(80, step=16)  # past the longest backoff, several times
        self.assertEqual(self.reports, [UNREACHABLE])
        self.assertTrue(all(transport.disconnecting for transport in browsers))
        self.assertNoResult(self.client.finished)

    def test_a_browser_waiting_for_an_unreachable_relay_is_told_in_a_page(self) -> None:
        self.endpoint.refuse = ConnectionRefusedError()
        self.start()
        browser, transport = self.browser(settle=False)
        browser.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.advance(80, step=16)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        if not head:
            self.fail(f"no page; transport closed: {transport.disconnecting}")
        self.assertTrue(head.startswith(b"HTTP/1.1 503 Service Unavailable"), head)
        self.assertIn(b"cannot reach relay", body)
        self.assertFalse(transport.aborted)

    def test_a_relay_reached_again_is_news_after_the_next_outage(self) -> None:
        self.endpoint.refuse = ConnectionRefusedError()
        self.start()
        self.advance(16)
        self.endpoint.refuse = None
        self.advance(16)
        self.assertIsNotNone(self.client.current)
        self.endpoint.refuse = ConnectionRefusedError()
        self.endpoint.ends[0].transport.loseConnection()  # the relay goes away
        self.endpoint.settle()
        self.advance(40, step=8)
        self.endpoint.refuse = None
        self.advance(16)
        self.assertEqual(
            self.reports,
            [
                UNREACHABLE,
                ONLINE,
                f"connection to relay {RELAY} lost; reconnecting",
                "session s-1 resumed",
            ],
        )
        self.assertEqual(self.relay.asks[-1][1], {"resume": "s-1"})

    def test_a_certificate_from_another_ca_is_fatal_in_one_line(self) -> None:
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
        self.browser()
        handshake = SSL.Error([("SSL routines", "", "certificate verify failed")])
        dialled[0].connectionLost(Failure(handshake))
        self.assertEqual(
            self.reports,
            [
                f"cannot use relay {RELAY}: the other side's certificate is not signed by the "
                "pinned CA (or has expired); check --ca (the CA that signed the relay's "
                "certificate)"
            ],
        )
        self.assertEqual(self.exit_code(), 1)
        self.assertEqual(len(dialled), 1)  # never dialled again

    def test_a_relay_certificate_for_another_name_is_fatal(self) -> None:
        class VerificationError(Exception):
            """Named like service_identity's."""

        self.endpoint.refuse = VerificationError("DNSMismatch(mismatched_id='relay.example.com')")
        self.start()
        [line] = self.reports
        self.assertIn("does not carry the host name 'relay.example.com'", line)
        self.assertIn("--server-name", line)
        self.assertEqual(self.exit_code(), 1)


class IdleTests(EngineerClientTestCase):
    def test_a_relay_that_closes_an_idle_connection_is_not_redialled_for_nothing(self) -> None:
        self.relay.session_default = (Refusal.BAD_REQUEST, "this relay passes no session asks")
        self.start()
        self.assertEqual(
            self.reports, ["gateway 'plant7' takes no sessions; open http://127.0.0.1:18080/"]
        )
        self.endpoint.ends[0].close(why="idle")
        self.endpoint.settle()
        self.advance(600, step=60)
        self.assertEqual(len(self.endpoint.ends), 1)
        self.assertEqual(len(self.reports), 1)
        self.browser()  # a connection dials again
        self.assertEqual(len(self.endpoint.ends), 2)
        self.assertEqual(len(self.relay.connects), 1)

    def test_the_held_session_stream_keeps_one_connection_for_hours(self) -> None:
        self.start()
        self.advance(4 * 3600, step=300)
        self.assertEqual(len(self.endpoint.ends), 1)
        self.assertEqual(len(self.relay.asks), 1)
        self.assertFalse(self.relay.asks[0][2].lost)

    def test_the_relays_reason_for_closing_is_told_and_a_removed_token_ends_the_client(
        self,
    ) -> None:
        self.start()
        self.relay.session_default = (Refusal.BAD_TOKEN, "the engineer token was not accepted")
        self.endpoint.ends[0].close(why="engineer 'erin' was removed")
        self.endpoint.settle()
        self.advance(2)
        self.assertEqual(
            self.reports,
            [
                ONLINE,
                f"connection to relay {RELAY} lost: engineer 'erin' was removed; reconnecting",
                "the engineer token was not accepted",
            ],
        )
        self.assertEqual(self.exit_code(), 1)


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
        self.assertEqual(self.reports, [ONLINE])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertNoResult(self.client.finished)  # a signal's stop: exit 0 from the program

    def test_stopping_while_the_relay_is_unreachable_reports_nothing(self) -> None:
        self.endpoint.refuse = ConnectionRefusedError()
        self.start()
        self.reports.clear()
        self.browser()
        self.successResultOf(self.client.stopService())
        self.assertEqual(self.reports, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_a_relay_that_goes_away_is_reported_as_lost(self) -> None:
        self.start()
        self.endpoint.refuse = ConnectionRefusedError()
        self.endpoint.ends[0].transport.loseConnection()
        self.endpoint.settle()
        self.assertEqual(self.reports, [ONLINE, f"connection to relay {RELAY} lost; reconnecting"])
