"""The engineers' portal (issue 20): its config section, passwords, logins and tickets, and what
the proxy does to a browser's request on a target's origin before the processor sees it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.audit import MemoryAuditTrail
from gateway.config import LoginLimits
from gateway.relay.authorisation import PatternAuthorisation
from gateway.relay.credentials import (
    CredentialFileError,
    EngineerNotFound,
    TokenFile,
    add_engineer,
    read_entries,
)
from gateway.relay.gateways import GatewayTunnels
from gateway.relay.logins import LoginGuard
from gateway.relay.metrics import RelayMetrics
from gateway.relay.portal.core import Portal
from gateway.relay.portal.logins import TICKET_SECONDS, Login, PortalLogins
from gateway.relay.portal.passwords import hash_password, set_password, verify_password
from gateway.relay.portal.proxy import (
    PASS_COOKIE,
    OriginProxy,
    split_host,
    without_portal_cookies,
)
from gateway.relay.refusals import Refused
from gateway.relay.revocation import LiveStreams
from tests.unit.test_config import GATEWAYS_SECTION, ConfigTestCase, relay_toml


def _scratch(case: SynchronousTestCase) -> Path:
    tmp = tempfile.TemporaryDirectory(prefix="test-portal-")
    case.addCleanup(tmp.cleanup)
    return Path(tmp.name)


FAST = 2**4  # scrypt's cost in these tests: the format is what is tested, not the cost


class PortalConfigTests(ConfigTestCase):
    def test_the_portal_section_is_read_with_the_relays_certificate_by_default(self) -> None:
        config = self.load_relay(
            relay_toml(rest='[portal]\nlisten = "0.0.0.0:8443"\ndomain = "Relay.Example.com"\n')
        )
        assert config.portal is not None
        self.assertEqual(config.portal.listen.port, 8443)
        self.assertEqual(config.portal.domain, "relay.example.com")
        self.assertEqual(config.portal.cert, config.gateways.cert)
        self.assertEqual(config.portal.key, config.gateways.key)
        self.assertEqual(config.portal.login_minutes, 480)

    def test_without_the_section_there_is_no_portal(self) -> None:
        self.assertIsNone(self.load_relay(relay_toml()).portal)

    def test_a_domain_that_is_no_host_name_is_refused(self) -> None:
        error = self.relay_refused(
            relay_toml(rest='[portal]\nlisten = "0.0.0.0:8443"\ndomain = "a b"\n')
        )
        self.assertProblem(error, "portal.domain", "is not a host name")

    def test_a_cert_without_its_key_is_refused(self) -> None:
        error = self.relay_refused(
            relay_toml(
                rest='[portal]\nlisten = "0.0.0.0:8443"\ndomain = "r.example"\ncert = "relay.pem"\n'
            )
        )
        self.assertProblem(error, "portal.key", "is required")

    def test_an_unknown_key_is_refused(self) -> None:
        error = self.relay_refused(
            relay_toml(rest='[portal]\nlisten = "0.0.0.0:8443"\ndomain = "r.example"\nport = 1\n')
        )
        self.assertProblem(error, "portal.port", "unknown key")
        self.assertIn("[gateways]", GATEWAYS_SECTION)


class PasswordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = _scratch(self) / "engineers.toml"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        add_engineer(self.path, "Alice", gateways=["plant-*"])
        add_engineer(self.path, "bob", gateways=["lab"])

    def test_a_password_is_stored_as_a_salted_hash_that_checks_it(self) -> None:
        set_password(self.path, "alice", "a long enough secret", n=FAST)
        text = self.path.read_text()
        self.assertNotIn("a long enough secret", text)
        alice, bob = read_entries(self.path)
        self.assertTrue(verify_password("a long enough secret", alice.password))
        self.assertFalse(verify_password("a long enough secreT", alice.password))
        self.assertIsNone(bob.password)
        self.assertEqual(alice.gateways, ("plant-*",))

    def test_the_same_password_hashes_differently_each_time(self) -> None:
        self.assertNotEqual(
            hash_password("same password", n=FAST), hash_password("same password", n=FAST)
        )

    def test_setting_it_again_replaces_it(self) -> None:
        set_password(self.path, "alice", "the first password", n=FAST)
        set_password(self.path, "alice", "the second password", n=FAST)
        self.assertEqual(self.path.read_text().count("password ="), 1)
        alice = read_entries(self.path)[0]
        self.assertFalse(verify_password("the first password", alice.password))
        self.assertTrue(verify_password("the second password", alice.password))
        # the relay reads the file with the key in it
        self.assertIsNotNone(TokenFile(self.path).entry("alice"))

    def test_an_unknown_engineer_or_a_short_password_is_refused(self) -> None:
        self.assertRaises(EngineerNotFound, set_password, self.path, "carol", "long enough pw")
        self.assertRaises(CredentialFileError, set_password, self.path, "alice", "short")

    def test_garbage_never_verifies(self) -> None:
        for stored in (None, "", "scrypt$x", "bcrypt$1$2$3$4$5", "scrypt$16$8$1$!!$!!"):
            self.assertFalse(verify_password("anything", stored))


class LoginTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.logins = PortalLogins(self.clock, lifetime=3600)
        self.login = self.logins.create("alice")

    def test_a_ticket_works_once_and_only_for_its_own_origin(self) -> None:
        ticket = self.logins.ticket(self.login, "plant-1", "web")
        self.assertIsNone(self.logins.redeem(ticket, "plant-1", "hmi"))
        ticket = self.logins.ticket(self.login, "plant-1", "web")
        token = self.logins.redeem(ticket, "plant-1", "web")
        self.assertIsNotNone(token)
        self.assertIsNone(self.logins.redeem(ticket, "plant-1", "web"))
        self.assertIs(self.logins.by_pass(token, "plant-1", "web"), self.login)
        self.assertIsNone(self.logins.by_pass(token, "plant-2", "web"))

    def test_a_ticket_expires(self) -> None:
        ticket = self.logins.ticket(self.login, "plant-1", "web")
        self.clock.advance(TICKET_SECONDS + 1)
        self.assertIsNone(self.logins.redeem(ticket, "plant-1", "web"))

    def test_logging_out_or_expiring_ends_the_origin_passes(self) -> None:
        token = self.logins.redeem(self.logins.ticket(self.login, "p", "web"), "p", "web")
        self.logins.end(self.login.id)
        self.assertIsNone(self.logins.by_pass(token, "p", "web"))
        other = self.logins.create("alice")
        token = self.logins.redeem(self.logins.ticket(other, "p", "web"), "p", "web")
        self.clock.advance(3600)
        self.assertIsNone(self.logins.by_pass(token, "p", "web"))
        self.assertIsNone(self.logins.get(other.id))

    def test_csrf_tokens_are_compared(self) -> None:
        self.assertTrue(self.login.csrf_ok(self.login.csrf))
        self.assertFalse(self.login.csrf_ok("x"))
        self.assertFalse(self.login.csrf_ok(None))


class HostTests(SynchronousTestCase):
    def test_hosts_name_the_portal_or_one_target_of_one_gateway(self) -> None:
        self.assertIs(split_host("relay.example.com", "relay.example.com"), True)
        self.assertIs(split_host("Relay.Example.com:8443", "relay.example.com"), True)
        self.assertEqual(
            split_host("web--plant17.relay.example.com", "relay.example.com"), ("web", "plant17")
        )
        self.assertIsNone(split_host("web.relay.example.com", "relay.example.com"))
        self.assertIsNone(split_host("a.web--p.relay.example.com", "relay.example.com"))
        self.assertIsNone(split_host("evil.com", "relay.example.com"))
        self.assertIsNone(split_host("xrelay.example.com", "relay.example.com"))

    def test_only_the_portals_cookies_are_taken_out(self) -> None:
        self.assertEqual(
            without_portal_cookies(b"a=1; __Host-portal=x; __Host-portal-pass=y; b=2"), b"a=1; b=2"
        )


class _FakeStream:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.finished = False
        self.response: Deferred[Any] = Deferred()

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def attach(self, protocol: Any) -> None:
        self.protocol = protocol

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def loseConnection(self) -> None:
        self.finished = True

    def abortConnection(self) -> None:
        self.finished = True


class _FakePortal:
    domain = "portal.example"

    def __init__(self) -> None:
        self.login = Login("L", "alice", "c", 0, 100)
        self.streams: list[_FakeStream] = []
        self.refuse: Refused | None = None

    def portal_origin(self) -> str:
        return "https://portal.example/"

    def login_for_pass(self, token: str | None, gateway: str, target: str) -> Login | None:
        return self.login if token == "good" and (gateway, target) == ("p1", "web") else None

    def redeem(self, ticket: str, gateway: str, target: str) -> str | None:
        return "good" if ticket == "t1" else None

    def open_stream(self, login: Login, gateway: str, target: str, peer: str, port: int = 0) -> Any:
        if self.refuse is not None:
            raise self.refuse
        stream = _FakeStream()
        self.streams.append(stream)
        return stream

    def page_opened(self, engineer: str, gateway: str, page: Any) -> None:
        pass

    def page_closed(self, engineer: str, gateway: str, page: Any) -> None:
        pass


class ProxyTests(SynchronousTestCase):
    HOST = b"web--p1.portal.example"

    def proxy(self) -> tuple[_FakePortal, OriginProxy, StringTransport]:
        portal, transport = _FakePortal(), StringTransport()
        proxy = OriginProxy(portal, "web", "p1", self.HOST.decode(), "192.0.2.7")
        proxy.makeConnection(transport)
        return portal, proxy, transport

    def test_the_processor_gets_no_portal_credential_and_the_forwarded_headers(self) -> None:
        portal, proxy, _ = self.proxy()
        proxy.dataReceived(
            b"POST /form HTTP/1.1\r\nHost: " + self.HOST + b"\r\n"
            b"Cookie: own=1; " + PASS_COOKIE.encode() + b"=good\r\n"
            b"Authorization: Basic eDp5\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n"
            b"X-Forwarded-For: 6.6.6.6\r\nContent-Length: 5\r\n\r\nhel"
        )
        proxy.dataReceived(b"lo")
        (stream,) = portal.streams
        head, *body = stream.written
        self.assertEqual(b"".join(body), b"hello")  # passed on as it came, not gathered
        self.assertEqual(len(body), 2)
        lower = head.lower()
        self.assertTrue(head.startswith(b"POST /form HTTP/1.1\r\n"))
        for gone in (b"authorization", b"__host-portal", b"keep-alive", b"6.6.6.6", b"connection:"):
            self.assertNotIn(gone, lower)
        self.assertIn(b"cookie: own=1\r\n", lower)
        self.assertIn(b"x-forwarded-for: 192.0.2.7\r\n", lower)
        self.assertIn(b"x-forwarded-proto: https\r\n", lower)
        self.assertIn(b"x-forwarded-host: " + self.HOST + b"\r\n", lower)
        self.assertIn(b"content-length: 5\r\n", lower)

    def test_a_websocket_upgrade_keeps_its_upgrade_headers_then_bytes_pass_unread(self) -> None:
        portal, proxy, transport = self.proxy()
        proxy.dataReceived(
            b"GET /ws HTTP/1.1\r\nHost: " + self.HOST + b"\r\nCookie: __Host-portal-pass=good\r\n"
            b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: abc\r\n\r\n"
        )
        (stream,) = portal.streams
        self.assertIn(b"Connection: Upgrade\r\nUpgrade: websocket\r\n", stream.written[0])
        proxy.dataReceived(b"\x81\x02hi")  # held until the processor answers
        self.assertEqual(len(stream.written), 1)
        stream.protocol.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        self.assertEqual(stream.written[1], b"\x81\x02hi")
        proxy.dataReceived(b"\x81\x01!")
        self.assertEqual(stream.written[2], b"\x81\x01!")
        self.assertIn(b"101 Switching", transport.value())

    def test_without_an_origin_pass_the_browser_is_sent_to_the_portal(self) -> None:
        portal, proxy, transport = self.proxy()
        proxy.dataReceived(b"GET /page?x=1 HTTP/1.1\r\nHost: " + self.HOST + b"\r\n\r\n")
        self.assertEqual(portal.streams, [])
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 302 "))
        self.assertIn(
            b"Location: https://portal.example/open?gateway=p1&target=web&next=%2Fpage%3Fx%3D1",
            answer,
        )
        self.assertTrue(transport.disconnecting)

    def test_a_ticket_becomes_a_host_only_http_only_cookie_for_this_origin(self) -> None:
        _, proxy, transport = self.proxy()
        proxy.dataReceived(
            b"GET /.portal/ticket?t=t1&next=/x HTTP/1.1\r\nHost: " + self.HOST + b"\r\n\r\n"
        )
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 303 "))
        self.assertIn(b"Location: /x\r\n", answer)
        self.assertIn(
            b"Set-Cookie: __Host-portal-pass=good; Path=/; Secure; HttpOnly; SameSite=Strict\r\n",
            answer,
        )
        self.assertNotIn(b"Domain", answer)

    def test_a_used_ticket_or_another_hosts_request_is_refused(self) -> None:
        _, proxy, transport = self.proxy()
        proxy.dataReceived(
            b"GET /.portal/ticket?t=old HTTP/1.1\r\nHost: " + self.HOST + b"\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403 "))
        _, proxy, transport = self.proxy()
        proxy.dataReceived(b"GET / HTTP/1.1\r\nHost: hmi--p1.portal.example\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 421 "))

    def test_a_refusal_before_the_dial_is_a_page_not_a_cut(self) -> None:
        from gateway.wire import Refusal

        portal, proxy, transport = self.proxy()
        portal.refuse = Refused(Refusal.NOT_AUTHORISED, "not for you")
        proxy.dataReceived(
            b"GET / HTTP/1.1\r\nHost: " + self.HOST + b"\r\nCookie: __Host-portal-pass=good\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403 "))
        self.assertIn(b"not for you", transport.value())


class PortalLoginTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        path = _scratch(self) / "engineers.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        add_engineer(path, "alice", gateways=["plant-*"])
        set_password(path, "alice", "the right password", n=FAST)
        credentials = TokenFile(path)
        self.metrics = RelayMetrics(CollectorRegistry())
        self.audit = MemoryAuditTrail()
        self.portal = Portal(
            domain="portal.example",
            port=443,
            clock=self.clock,
            credentials=credentials,
            authorisation=PatternAuthorisation(credentials, self.clock),
            tunnels=GatewayTunnels(),
            dialer=None,  # type: ignore[arg-type]
            metrics=self.metrics,
            logins=LoginGuard(LoginLimits(failures=3), self.clock, self.metrics, self.audit),
            audit=self.audit,
            live=LiveStreams(),
            admission=None,
            login_seconds=600,
            check_password=lambda pw, stored: succeed(verify_password(pw, stored)),
        )

    def failures(self) -> float:
        value = self.metrics.registry.get_sample_value(
            "relay_auth_failures_total", {"kind": "portal_password"}
        )
        return value or 0.0

    def test_the_right_password_logs_in_and_is_audited(self) -> None:
        login = self.successResultOf(self.portal.log_in("ALICE", "the right password", "192.0.2.1"))
        self.assertEqual(login.engineer, "alice")
        self.assertIs(self.portal.logins.get(login.id), login)
        self.assertEqual(self.audit.records[-1]["event"], "engineer.portal_login")
        self.assertEqual(
            self.portal.target_url("web", "plant-1"), "https://web--plant-1.portal.example/"
        )

    def test_a_wrong_password_or_name_is_refused_counted_and_locks_the_source_out(self) -> None:
        for name in ("alice", "nobody", "alice"):
            self.failureResultOf(self.portal.log_in(name, "wrong", "192.0.2.1"), Refused)
        self.assertEqual(self.failures(), 3)
        self.assertIn("engineer.login_failed", [r["event"] for r in self.audit.records])
        locked = self.failureResultOf(
            self.portal.log_in("alice", "the right password", "192.0.2.1"), Refused
        )
        self.assertIn("too many failed logins", str(locked.value))
        self.successResultOf(self.portal.log_in("alice", "the right password", "192.0.2.2"))


class ProxyEndingTests(ProxyTests):
    def open(self) -> tuple[_FakeStream, OriginProxy, StringTransport]:
        portal, proxy, transport = self.proxy()
        proxy.dataReceived(
            b"GET / HTTP/1.1\r\nHost: " + self.HOST + b"\r\nCookie: __Host-portal-pass=good\r\n\r\n"
        )
        (stream,) = portal.streams
        return stream, proxy, transport

    def test_the_stream_and_the_browser_are_each_others_producers(self) -> None:
        stream, _, transport = self.open()
        self.assertIs(transport.producer, stream)
        self.assertIs(stream.producer, transport)

    def test_the_processor_closing_closes_the_browsers_connection(self) -> None:
        stream, _, transport = self.open()
        stream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        stream.protocol.readConnectionLost()
        self.assertIsNone(transport.producer)  # else TLS would wait for ever to shut down
        self.assertTrue(transport.disconnecting)

    def test_ending_a_page_cuts_its_stream(self) -> None:
        stream, proxy, transport = self.open()
        proxy.end("the session ended")
        self.assertTrue(stream.finished)
        self.assertTrue(transport.disconnecting)


class PortalSessionTests(PortalLoginTests):
    def test_a_session_ended_by_the_plant_cuts_the_open_pages_and_refuses_new_ones(self) -> None:
        from gateway.relay.portal.core import PortalAsk
        from gateway.wire import SessionEvent, SessionEventKind

        login = self.successResultOf(self.portal.log_in("alice", "the right password", "x"))
        ask = PortalAsk("alice", "plant-1", "reason", state="approved", session="s-1")
        self.portal.asks[("alice", "plant-1")] = ask
        ended: list[str] = []

        class Page:
            def end(self, why: str) -> None:
                ended.append(why)

        self.portal.page_opened("alice", "plant-1", Page())
        self.portal._event(ask, SessionEvent(SessionEventKind.ENDED, why="ended by the plant"))
        self.assertEqual(ended, ["ended by the plant"])
        refused = self.assertRaises(
            Refused, self.portal.open_stream, login, "plant-1", "web", "192.0.2.1"
        )
        self.assertIn("ended by the plant", refused.reason)
        self.portal.forget_finished(login, "plant-1")
        self.assertIsNone(self.portal.ask_of(login, "plant-1"))

    def test_an_engineer_not_authorised_for_a_gateway_opens_nothing_there(self) -> None:
        login = self.successResultOf(self.portal.log_in("alice", "the right password", "x"))
        refused = self.assertRaises(Refused, self.portal.open_stream, login, "lab", "web", "x")
        self.assertIn("not authorised", refused.reason)


class SecondFactorTests(PortalLoginTests):
    def enrol(self) -> str:
        from gateway.relay.portal.totp import enrol

        _, secret = enrol(self.portal.credentials.path, "alice")
        self.portal.credentials.reload()
        return secret

    def code(self, secret: str, at: float | None = None) -> str:
        import pyotp

        return pyotp.TOTP(secret).at(self.clock.seconds() if at is None else at)

    def totp_failures(self) -> float:
        value = self.metrics.registry.get_sample_value(
            "relay_auth_failures_total", {"kind": "portal_totp"}
        )
        return value or 0.0

    def test_with_a_second_factor_the_password_alone_is_refused_and_counted(self) -> None:
        self.clock.advance(1_000_000)
        self.enrol()
        refused = self.failureResultOf(
            self.portal.log_in("alice", "the right password", "192.0.2.1"), Refused
        )
        self.assertIn("second-factor code", str(refused.value))
        self.assertEqual(self.totp_failures(), 1)
        self.assertEqual(self.failures(), 0)

    def test_the_current_code_logs_in_once(self) -> None:
        self.clock.advance(1_000_000)
        secret = self.enrol()
        code = self.code(secret)
        self.successResultOf(self.portal.log_in("alice", "the right password", "x", code))
        self.failureResultOf(self.portal.log_in("alice", "the right password", "x", code), Refused)

    def test_a_code_a_step_old_works_and_two_steps_old_does_not(self) -> None:
        self.clock.advance(1_000_000)
        secret = self.enrol()
        now = self.clock.seconds()
        old = self.code(secret, now - 60)
        self.failureResultOf(self.portal.log_in("alice", "the right password", "x", old), Refused)
        recent = self.code(secret, now - 30)
        self.successResultOf(self.portal.log_in("alice", "the right password", "x", recent))

    def test_removing_it_leaves_the_password(self) -> None:
        from gateway.relay.portal.totp import remove

        self.enrol()
        remove(self.portal.credentials.path, "alice")
        self.portal.credentials.reload()
        self.assertIsNone(self.portal.credentials.entry("alice").totp)  # type: ignore[union-attr]
        self.successResultOf(self.portal.log_in("alice", "the right password", "x"))


class PortalServiceTests(SynchronousTestCase):
    def config(self) -> Any:
        import attrs

        from gateway.config import Address, PortalConfig
        from tests.unit.test_relay_service import relay_config

        base = relay_config(self)
        portal = PortalConfig(
            listen=Address("0.0.0.0", 8444),
            domain="portal.example",
            cert=base.gateways.cert,
            key=base.gateways.key,
        )
        return attrs.evolve(base, portal=portal)

    def test_the_relay_listens_for_browsers_with_http_1_1_only(self) -> None:
        from typing import cast

        from twisted.internet.testing import MemoryReactorClock

        from gateway.reactor import IGatewayReactor
        from gateway.relay.portal.service import PortalFactory
        from gateway.relay.service import makeService

        reactor = MemoryReactorClock()
        relay = makeService(self.config(), cast(IGatewayReactor, reactor))
        relay.startService()
        self.addCleanup(relay.stopService)
        ((tls, interface),) = [(f, i) for port, f, _, i in reactor.tcpServers if port == 8444]
        self.assertEqual(interface, "0.0.0.0")
        self.assertIsInstance(getattr(tls, "wrappedFactory", None), PortalFactory)
        from gateway.relay.portal.service import portal_tls

        # browsers must not be offered HTTP/2: the proxy speaks HTTP/1.1
        self.assertEqual(portal_tls(self.config().portal)._acceptableProtocols, [b"http/1.1"])
        self.assertEqual(relay.portal.logins.lifetime, 480 * 60)
        self.assertEqual(relay.portal.portal_origin(), "https://portal.example:8444/")

    def test_connections_over_a_sources_limit_are_refused_before_tls(self) -> None:
        from twisted.internet.address import IPv4Address

        from gateway.relay.portal.service import PortalFactory, _LimitedTLS, portal_tls

        clock = Clock()
        factory = PortalFactory(None, None, clock, max_per_source=2)  # type: ignore[arg-type]
        tls = _LimitedTLS(portal_tls(self.config().portal), False, factory, clock=clock)
        addr = IPv4Address("TCP", "192.0.2.9", 5000)
        first = tls.buildProtocol(addr)
        second = tls.buildProtocol(addr)
        self.assertIsNotNone(first)
        self.assertIsNotNone(second)
        self.assertIsNone(tls.buildProtocol(addr))
        self.assertIsNotNone(tls.buildProtocol(IPv4Address("TCP", "192.0.2.10", 5000)))
        second.wrappedProtocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(tls.buildProtocol(addr))

    def test_a_connection_that_sends_no_request_is_closed(self) -> None:
        from gateway.relay.portal.proxy import HEAD_TIMEOUT, PortalConnection

        clock, transport = Clock(), StringTransport()
        connection = PortalConnection(_FakePortal(), None, "192.0.2.9", clock)
        connection.makeConnection(transport)
        connection.dataReceived(b"GET / HT")
        clock.advance(HEAD_TIMEOUT)
        self.assertTrue(transport.disconnecting)  # StringTransport.abortConnection
        self.assertEqual(clock.getDelayedCalls(), [])


class PortalAuditTests(PortalLoginTests):
    def test_a_session_the_gateway_started_and_ended_is_audited_and_counted(self) -> None:
        from gateway.relay.portal.core import PortalAsk
        from gateway.wire import SessionEvent, SessionEventKind

        ask = PortalAsk("alice", "plant-1", "reason")
        self.portal.asks[("alice", "plant-1")] = ask
        active = self.metrics.registry.get_sample_value
        self.portal._event(
            ask,
            SessionEvent(
                SessionEventKind.APPROVED, session="s-1", approved_by="bob", targets=["web"]
            ),
        )
        self.assertEqual(active("relay_sessions_active"), 1)
        self.portal._event(ask, SessionEvent(SessionEventKind.ENDED, why="expired"))
        self.portal._gone(ask)  # the stream's end after the event changes nothing more
        self.assertEqual(active("relay_sessions_active"), 0)
        events = [(r["event"], r.get("session")) for r in self.audit.records]
        self.assertIn(("session.started", "s-1"), events)
        self.assertIn(("session.ended", "s-1"), events)
        ended = next(r for r in self.audit.records if r["event"] == "session.ended")
        self.assertEqual(
            (ended["why"], ended["gateway"], ended["via"]), ("expired", "plant-1", "portal")
        )


class TargetGroupConfigTests(ConfigTestCase):
    TARGETS = """
[[target]]
name = "ui"
address = "192.168.10.2:80"

[[target]]
name = "ws"
address = "192.168.10.2:9999"
"""

    def gateway(self, groups: str) -> str:
        from tests.unit.test_config import gateway_toml

        return gateway_toml(rest=self.TARGETS + groups)

    def test_a_group_names_its_members_by_port(self) -> None:
        config = self.load_gateway(
            self.gateway('[[target_group]]\nname = "pickit"\nmembers = ["ui", "ws"]\n')
        )
        (group,) = config.target_groups
        self.assertEqual(group.by_port(config.targets), {80: "ui", 9999: "ws"})

    def test_a_member_that_is_no_target_or_two_on_one_port_are_refused(self) -> None:
        error = self.gateway_refused(
            self.gateway('[[target_group]]\nname = "g"\nmembers = ["ui", "nope"]\n')
        )
        self.assertProblem(error, "target_group[0].members", "'nope' is not a [[target]]")
        same_port = self.TARGETS.replace("9999", "80")
        from tests.unit.test_config import gateway_toml

        error = self.gateway_refused(
            gateway_toml(rest=same_port + '[[target_group]]\nname = "g"\nmembers = ["ui", "ws"]\n')
        )
        self.assertProblem(error, "target_group[0].members", "both use port 80")

    def test_a_group_cannot_take_a_targets_name(self) -> None:
        error = self.gateway_refused(
            self.gateway('[[target_group]]\nname = "ui"\nmembers = ["ws"]\n')
        )
        self.assertProblem(error, "target_group[0].name", "already a target")

    def test_the_portals_extra_ports_are_read_and_checked(self) -> None:
        base = '[portal]\nlisten = "0.0.0.0:8443"\ndomain = "r.example"\n'
        config = self.load_relay(relay_toml(rest=base + "extra_ports = [80, 9999]\n"))
        assert config.portal is not None
        self.assertEqual(config.portal.extra_ports, (80, 9999))
        for bad, problem in (
            ("[8443]", "listen port"),
            ("[80, 80]", "twice"),
            ("[0]", "not a port number"),
        ):
            error = self.relay_refused(relay_toml(rest=base + f"extra_ports = {bad}\n"))
            self.assertProblem(error, "portal.extra_ports", problem)


class GroupResolveTests(PortalLoginTests):
    def test_a_groups_ports_name_its_members_and_its_page_is_the_first(self) -> None:
        self.portal.groups["plant-1"] = {"pickit": {"80": "ui", "9999": "ws"}}
        resolve = self.portal.resolve
        self.assertEqual(resolve("plant-1", "pickit", 443), "ui")  # the portal's own port
        self.assertEqual(resolve("plant-1", "pickit", 9999), "ws")
        self.assertEqual(resolve("plant-1", "pickit", 80), "ui")
        self.assertRaises(Refused, resolve, "plant-1", "pickit", 8080)
        self.assertEqual(resolve("plant-1", "web", 443), "web")
        self.assertRaises(Refused, resolve, "plant-1", "web", 9999)  # a plain target: one port


class GatewayInfoTests(SynchronousTestCase):
    def test_the_gateway_names_its_groups_members_by_port_and_only_when_it_has_groups(
        self,
    ) -> None:
        import attrs

        from gateway.config import AccessMode, Address, Target
        from gateway.edge.access import AccessPolicy
        from gateway.edge.control import info_route

        policy = AccessPolicy(
            (Target("ui", Address("10.0.0.2", 80)), Target("ws", Address("10.0.0.2", 9999))),
            AccessMode.UNATTENDED,
        )
        grouped = info_route("gw", policy, lambda: 0, groups={"pickit": {"80": "ui", "9999": "ws"}})
        plain = info_route("gw", policy, lambda: 0)
        answer = attrs.asdict(grouped.handler(None))  # type: ignore[arg-type]
        self.assertEqual(answer["groups"], {"pickit": {"80": "ui", "9999": "ws"}})
        self.assertNotIn("groups", attrs.asdict(plain.handler(None)))  # type: ignore[arg-type]


class RedirectTests(SynchronousTestCase):
    def test_only_paths_on_this_origin_are_followed(self) -> None:
        from gateway.relay.portal.proxy import local_path

        for good in ("/", "/page?x=1", "/a/b#c"):
            self.assertTrue(local_path(good), good)
        for bad in (
            "//evil.example/",
            "/\\evil.example",
            "/a\\b",
            "https://evil.example/",
            "",
            "/a\nb",
            "/ a",
        ):
            self.assertFalse(local_path(bad), bad)


class RefusedUpgradeTests(ProxyTests):
    def test_after_a_refused_upgrade_the_next_request_is_rewritten_again(self) -> None:
        portal, proxy, _ = self.proxy()
        pass_cookie = b"Cookie: __Host-portal-pass=good\r\n"
        proxy.dataReceived(
            b"GET /ws HTTP/1.1\r\nHost: "
            + self.HOST
            + b"\r\n"
            + pass_cookie
            + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        (stream,) = portal.streams
        stream.protocol.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        proxy.dataReceived(
            b"GET /next HTTP/1.1\r\nHost: " + self.HOST + b"\r\n" + pass_cookie + b"\r\n"
        )
        self.assertTrue(stream.written[-1].startswith(b"GET /next HTTP/1.1\r\n"))
        self.assertNotIn(b"__Host-portal", stream.written[-1])

    def test_connect_is_not_tunnelled(self) -> None:
        _, proxy, transport = self.proxy()
        proxy.dataReceived(
            b"CONNECT x:1 HTTP/1.1\r\nHost: "
            + self.HOST
            + b"\r\nCookie: __Host-portal-pass=good\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 405 "))


class EngineerListTests(SynchronousTestCase):
    def test_the_engineer_list_says_how_each_logs_in_to_the_portal(self) -> None:
        from gateway.relay.credentials import describe_entry
        from gateway.relay.portal.totp import enrol

        path = _scratch(self) / "engineers.toml"
        for name in ("ann", "ben", "cat"):
            add_engineer(path, name, gateways=["p"])
        set_password(path, "ben", "a long enough secret", n=FAST)
        set_password(path, "cat", "a long enough secret", n=FAST)
        enrol(path, "cat")
        shown = {e.name: describe_entry(e, 0)["portal"] for e in read_entries(path)}
        self.assertEqual(shown, {"ann": None, "ben": "password", "cat": "password+totp"})
        text = path.read_text()
        self.assertNotIn("a long enough secret", text)


class LogoutTests(SynchronousTestCase):
    def test_logging_out_cuts_the_pages_that_login_opened_and_no_others(self) -> None:
        case = PortalLoginTests("test_the_right_password_logs_in_and_is_audited")
        case.setUp()
        portal = case.portal
        mine = case.successResultOf(portal.log_in("alice", "the right password", "x"))
        other = case.successResultOf(portal.log_in("alice", "the right password", "y"))
        ended: list[str] = []

        class Page:
            def __init__(self, login: Login, name: str) -> None:
                self.login, self.name = login, name

            def end(self, why: str) -> None:
                ended.append(self.name)

        portal.page_opened("alice", "plant-1", Page(mine, "mine"))
        portal.page_opened("alice", "plant-1", Page(other, "other"))
        portal.log_out(mine)
        self.assertEqual(ended, ["mine"])
        self.assertIsNone(portal.logins.get(mine.id))
        self.assertIsNotNone(portal.logins.get(other.id))


class MultiPortProcessorTests(SynchronousTestCase):
    def test_the_demo_processor_page_can_open_its_websocket_on_another_port(self) -> None:
        from gateway.demo.processor import _load_page

        self.assertIn(b'var wsPort = "9999";', _load_page("P", 9999))
        self.assertIn(b'var wsPort = "";', _load_page("P"))

    def test_the_demo_group_is_two_http_targets_and_a_group(self) -> None:
        import tomllib

        from gateway.demo.orchestrator import GROUP, GROUP_HOST, group_toml

        data = tomllib.loads(group_toml((8100, 8200)))
        self.assertEqual(
            [(t["name"], t["address"]) for t in data["target"]],
            [("pickit-ui", f"{GROUP_HOST}:8100"), ("pickit-ws", f"{GROUP_HOST}:8200")],
        )
        self.assertEqual(
            data["target_group"], [{"name": GROUP, "members": ["pickit-ui", "pickit-ws"]}]
        )


class LoginExpiryTests(SynchronousTestCase):
    def test_an_open_page_is_cut_when_its_login_expires_and_no_timer_outlives_it(self) -> None:
        case = PortalLoginTests("test_the_right_password_logs_in_and_is_audited")
        case.setUp()
        portal, clock = case.portal, case.clock
        login = case.successResultOf(portal.log_in("alice", "the right password", "x"))
        ended: list[str] = []

        class Page:
            def __init__(self) -> None:
                self.login = login

            def end(self, why: str) -> None:
                ended.append(why)

        lasting, closed = Page(), Page()
        portal.page_opened("alice", "plant-1", lasting)
        portal.page_opened("alice", "plant-1", closed)
        portal.page_closed("alice", "plant-1", closed)
        clock.advance(599)
        self.assertEqual(ended, [])
        clock.advance(1)
        self.assertEqual(ended, ["your portal login expired"])
        self.assertEqual(clock.getDelayedCalls(), [])
