"""HTTP CONNECT through a proxy, driven with an in-memory reactor."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
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
    def _dial(self) -> tuple[Deferred[IProtocol], StringTransport, list[Inner], IProtocol]:
        reactor = MemoryReactorClock()
        endpoint = HTTPConnectEndpoint(
            reactor, Address("proxy.plant", 3128), Address("relay.example.com", 443)
        )
        made: list[Inner] = []

        def build() -> Inner:
            made.append(Inner())
            return made[-1]

        d = endpoint.connect(quiet_factory(build))
        _host, port, factory, _timeout, _bind = reactor.tcpClients[0]
        self.assertEqual(port, 3128)  # MemoryReactor resolves every name to 127.0.0.1
        proxy_side = factory.buildProtocol(None)
        assert proxy_side is not None
        transport = StringTransport()
        proxy_side.makeConnection(transport)
        return d, transport, made, proxy_side

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
