"""HTTP CONNECT through a proxy, driven with an in-memory reactor."""

from __future__ import annotations

from pathlib import Path

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Address, ProxyCredentials, RelayLink
from gateway.net.endpoints import quiet_factory
from gateway.net.proxy import (
    HTTPConnectEndpoint,
    ProxyAuthRequired,
    ProxyError,
    ProxyForbidden,
    ProxyNotHTTP,
    ProxyRefusedStatus,
    ProxyTimeout,
    ProxyUnreachable,
    bypasses_proxy,
    proxy_for,
    relay_tcp_endpoint,
)


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


class ProxyFailureTests(SynchronousTestCase):
    """Each way a proxy fails is its own error, with what plant IT needs to hear."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def dial(
        self, credentials: ProxyCredentials | None = None
    ) -> tuple[Deferred[IProtocol], StringTransport, IProtocol]:
        endpoint = HTTPConnectEndpoint(
            self.reactor,
            Address("proxy.plant", 3128),
            Address("relay.example.com", 443),
            credentials=credentials,
        )
        d = endpoint.connect(quiet_factory(Inner))
        factory = self.reactor.tcpClients[0][2]
        proxy_side = factory.buildProtocol(None)
        assert proxy_side is not None
        transport = StringTransport()
        proxy_side.makeConnection(transport)
        return d, transport, proxy_side

    def test_basic_credentials_go_with_the_connect(self) -> None:
        creds = ProxyCredentials(Path("/x"), "plant", "s3cret")
        _d, transport, _p = self.dial(creds)
        self.assertIn(b"Proxy-Authorization: Basic cGxhbnQ6czNjcmV0\r\n", transport.value())

    def test_the_password_is_not_in_the_credentials_repr(self) -> None:
        self.assertNotIn("s3cret", repr(ProxyCredentials(Path("/x"), "plant", "s3cret")))

    def test_407_names_the_schemes_the_proxy_asked_for(self) -> None:
        d, _t, proxy = self.dial()
        proxy.dataReceived(
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b"Proxy-Authenticate: NTLM\r\nProxy-Authenticate: Negotiate\r\n"
            b'proxy-authenticate: Basic realm="plant"\r\n\r\n'
        )
        error = self.failureResultOf(d, ProxyAuthRequired).value
        self.assertEqual(error.schemes, ("NTLM", "Negotiate", "Basic"))
        self.assertEqual(error.unsupported, ("NTLM", "Negotiate"))
        self.assertTrue(error.basic_offered)
        self.assertFalse(error.sent)
        self.assertIn("NTLM or Negotiate or Basic", str(error))

    def test_407_after_credentials_says_they_were_not_accepted(self) -> None:
        d, _t, proxy = self.dial(ProxyCredentials(Path("/x"), "plant", "wrong"))
        proxy.dataReceived(b"HTTP/1.1 407 No\r\nProxy-Authenticate: Basic realm=x\r\n\r\n")
        error = self.failureResultOf(d, ProxyAuthRequired).value
        self.assertTrue(error.sent)
        self.assertIn("not accepted", str(error))

    def test_403_is_forbidden(self) -> None:
        d, _t, proxy = self.dial()
        proxy.dataReceived(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        self.assertIn("403 Forbidden", str(self.failureResultOf(d, ProxyForbidden).value))

    def test_502_is_the_proxy_not_reaching_the_relay(self) -> None:
        d, _t, proxy = self.dial()
        proxy.dataReceived(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
        self.assertEqual(self.failureResultOf(d, ProxyRefusedStatus).value.status, 502)

    def test_an_answer_that_is_not_http_is_said_at_once(self) -> None:
        d, transport, proxy = self.dial()
        proxy.dataReceived(b"\x05\x00")  # a SOCKS5 server
        self.assertIn("does not answer like an HTTP proxy",
                      str(self.failureResultOf(d, ProxyNotHTTP).value))  # fmt: skip
        self.assertTrue(transport.disconnecting)

    def test_a_refused_proxy_connection_is_unreachable(self) -> None:
        endpoint = HTTPConnectEndpoint(
            self.reactor, Address("proxy.plant", 3128), Address("relay.example.com", 443)
        )
        d = endpoint.connect(quiet_factory(Inner))
        connector = self.reactor.connectors[0]
        self.reactor.tcpClients[0][2].clientConnectionFailed(
            connector, Failure(ConnectionRefusedError())
        )
        self.reactor.advance(1)
        error = self.failureResultOf(d, ProxyUnreachable).value
        self.assertIn("cannot reach the proxy proxy.plant:3128: connection refused", str(error))

    def test_a_silent_proxy_times_out_saying_it_did_not_answer_connect(self) -> None:
        d, _t, _p = self.dial()
        self.reactor.advance(10)
        error = self.failureResultOf(d, ProxyTimeout).value
        self.assertIn("did not answer CONNECT relay.example.com:443 in time", str(error))

    def test_no_timer_is_left_after_a_failure(self) -> None:
        d, _t, proxy = self.dial()
        proxy.dataReceived(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        self.failureResultOf(d, ProxyError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class NoProxyTests(SynchronousTestCase):
    def test_names_domains_addresses_networks_and_star(self) -> None:
        rules = ("relay.example.com", ".internal", "10.0.0.0/8", "192.0.2.7")
        self.assertTrue(bypasses_proxy("relay.example.com", rules))
        self.assertTrue(bypasses_proxy("eu.relay.example.com", rules))
        self.assertTrue(bypasses_proxy("a.internal", rules))
        self.assertTrue(bypasses_proxy("internal", rules))
        self.assertTrue(bypasses_proxy("10.1.2.3", rules))
        self.assertTrue(bypasses_proxy("192.0.2.7", rules))
        self.assertFalse(bypasses_proxy("example.com", rules))
        self.assertFalse(bypasses_proxy("notrelay.example.com.evil", rules))
        self.assertFalse(bypasses_proxy("11.0.0.1", rules))
        self.assertTrue(bypasses_proxy("anything", ("*",)))

    def test_the_tunnel_dials_directly_when_no_proxy_lists_the_relay(self) -> None:
        link = RelayLink(
            address=Address("relay.example.com", 443), ca=Path("ca"), cert=Path("c"),
            key=Path("k"), proxy=Address("proxy", 3128), no_proxy=(".example.com",),
        )  # fmt: skip
        self.assertIsNone(proxy_for(link))
        self.assertNotIsInstance(
            relay_tcp_endpoint(MemoryReactorClock(), link), HTTPConnectEndpoint
        )
        self.assertEqual(proxy_for(attrs.evolve(link, no_proxy=())), Address("proxy", 3128))
