"""HTTP CONNECT through a proxy, driven with an in-memory reactor."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Address
from gateway.net.endpoints import quiet_factory
from gateway.net.proxy import HTTPConnectEndpoint, ProxyError


class Inner(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class ConnectTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.made: list[Inner] = []

    def _start(self) -> Deferred[IProtocol]:
        endpoint = HTTPConnectEndpoint(
            self.reactor, Address("proxy.plant", 3128), Address("relay.example.com", 443)
        )

        def build() -> Inner:
            self.made.append(Inner())
            return self.made[-1]

        return endpoint.connect(quiet_factory(build))

    def _dial(self) -> tuple[Deferred[IProtocol], StringTransport, list[Inner], IProtocol]:
        d = self._start()
        _host, port, factory, _timeout, _bind = self.reactor.tcpClients[0]
        self.assertEqual(port, 3128)  # MemoryReactor resolves every name to 127.0.0.1
        proxy_side = factory.buildProtocol(None)
        assert proxy_side is not None
        transport = StringTransport()
        proxy_side.makeConnection(transport)
        return d, transport, self.made, proxy_side

    def test_connect_request_names_the_relay(self) -> None:
        _d, transport, _, _p = self._dial()
        self.assertTrue(
            transport.value().startswith(
                b"CONNECT relay.example.com:443 HTTP/1.1\r\nHost: relay.example.com:443\r\n"
            )
        )

    def test_200_hands_the_connection_and_early_bytes_to_the_tunnel(self) -> None:
        d, _transport, made, proxy = self._dial()
        proxy.dataReceived(b"HTTP/1.1 200 Connection established\r\n\r\nTLS")
        self.assertIs(self.successResultOf(d), made[0])
        self.assertEqual(made[0].received, b"TLS")

    def test_refusal_fails_with_the_proxys_status_line(self) -> None:
        d, transport, made, proxy = self._dial()
        proxy.dataReceived(b"HTTP/1.1 403 Forbidden\r\nX: y\r\n\r\n")
        error = self.failureResultOf(d, ProxyError).value
        self.assertIn("403 Forbidden", str(error))
        self.assertEqual(made, [])
        self.assertTrue(transport.disconnecting)

    def test_endless_answer_is_cut_off(self) -> None:
        d, _transport, _, proxy = self._dial()
        proxy.dataReceived(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 5000)
        self.failureResultOf(d, ProxyError)

    def test_200_leaves_no_timer_behind(self) -> None:
        d, transport, _, proxy = self._dial()
        proxy.dataReceived(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.successResultOf(d)
        self.reactor.advance(60)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_silent_proxy_times_out_and_is_hung_up_on(self) -> None:
        d, transport, made, _proxy = self._dial()
        self.reactor.advance(10)
        self.failureResultOf(d, TimeoutError)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(made, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_answer_after_the_timeout_starts_no_tunnel(self) -> None:
        d, transport, made, proxy = self._dial()
        self.reactor.advance(10)
        self.failureResultOf(d, TimeoutError)
        proxy.dataReceived(b"HTTP/1.1 200 Connection established\r\n\r\nTLS")
        self.assertEqual(made, [])
        self.assertTrue(transport.disconnecting)

    def test_cancel_while_connecting_stops_the_tcp_attempt(self) -> None:
        d = self._start()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_timeout_while_connecting_stops_the_tcp_attempt(self) -> None:
        d = self._start()
        self.reactor.advance(10)
        self.failureResultOf(d, TimeoutError)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_cancel_after_the_request_closes_the_proxy_connection(self) -> None:
        d, transport, made, proxy = self._dial()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(transport.disconnecting)
        proxy.dataReceived(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.assertEqual(made, [])

    def test_proxy_that_hangs_up_fails_the_dial(self) -> None:
        d, _transport, made, proxy = self._dial()
        proxy.connectionLost(Failure(ConnectionDone()))
        self.assertIn(
            "the proxy closed the connection", str(self.failureResultOf(d, ProxyError).value)
        )
        self.assertEqual(made, [])
