# Twisted's trial and web APIs are only partly annotated; strict mode would flag every call.
# mypy: disable-error-code="no-untyped-call"
"""The local listeners' rules (`gateway.web.site`): deadlines, body limit, connection cap, Host
allowlist and security headers, driven byte by byte on a `StringTransport` with a `Clock`."""

from __future__ import annotations

import tempfile
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway.config import Address
from gateway.web.site import (
    SECURITY_HEADERS,
    GuardedChannel,
    GuardedSite,
    ListenerRules,
    exposure_warning,
    host_allowed,
    is_loopback,
    local_listener,
    rules_for,
)

RULES = ListenerRules(
    name="status listener",
    hosts_key="status.allowed_hosts",
    allowed_hosts=frozenset({"localhost", "edge7", "edge7.plant.local"}),
)


class Page(Resource):
    """``GET /`` answers ``ok``; ``POST /`` the size and type of what arrived; ``/slow`` never
    answers (a request being handled)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []
        self.bodies: list[Any] = []

    def render_GET(self, request: Request) -> Any:
        if request.path == b"/slow":
            self.held.append(request)
            return NOT_DONE_YET
        return b"ok"

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        self.bodies.append(request.content)
        return b"%d" % len(request.content.read())


class Connection:
    def __init__(self, site: GuardedSite, port: int = 40000) -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.channel = site.buildProtocol(self.transport.getPeer())
        if self.channel is not None:
            self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def answer(self) -> bytes:
        value: bytes = self.transport.value()
        return value

    def status(self) -> int:
        return int(self.answer().split(b" ", 2)[1])

    def lose(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


def get(path: str = "/", host: str = "localhost", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


class SiteTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.page = Page()
        self.site = GuardedSite(self.page, RULES, reactor=self.clock)

    def connect(self, port: int = 40000) -> Connection:
        conn = Connection(self.site, port)
        self.addCleanup(self.close, conn)
        return conn

    def close(self, conn: Connection) -> None:
        if conn.channel is not None and not conn.channel.counted_out:
            conn.lose()


class DeadlineTests(SiteTestCase):
    def test_a_head_sent_a_byte_at_a_time_is_cut_at_the_deadline(self) -> None:
        conn = self.connect()
        head = get(extra="User-Agent: slow\r\n")
        for byte in head[:-2]:  # never the final blank line
            conn.send(bytes([byte]))
            self.clock.advance(0.2)  # always well within the idle timeout
            if self.clock.seconds() >= 10:
                break
        self.clock.advance(10)
        self.assertEqual(conn.status(), 408)
        self.assertTrue(conn.transport.disconnecting)
        self.assertIn(b"within 10 seconds", conn.answer())

    def test_a_silent_new_connection_is_closed_after_the_request_timeout(self) -> None:
        conn = self.connect()
        self.clock.advance(9.9)
        self.assertFalse(conn.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(conn.status(), 408)

    def test_a_client_that_does_not_go_is_aborted(self) -> None:
        conn = self.connect()
        self.clock.advance(10)
        self.assertTrue(conn.transport.disconnecting)
        self.clock.advance(5)
        self.assertTrue(conn.transport.disconnected)

    def test_a_prompt_request_is_answered_and_its_deadline_cancelled(self) -> None:
        conn = self.connect()
        conn.send(get())
        self.assertEqual(conn.status(), 200)
        self.clock.advance(20)  # past the request deadline: nothing happens
        self.assertFalse(conn.transport.disconnecting)

    def test_an_idle_keep_alive_connection_is_closed_quietly_after_30s(self) -> None:
        conn = self.connect()
        conn.send(get())
        with capturedLogs() as events:
            self.clock.advance(29)
            self.assertFalse(conn.transport.disconnecting)
            self.clock.advance(1.5)
        self.assertTrue(conn.transport.disconnecting)
        self.assertEqual(events, [])

    def test_the_next_request_on_a_keep_alive_connection_has_its_own_deadline(self) -> None:
        conn = self.connect()
        conn.send(get())
        conn.transport.clear()
        self.clock.advance(25)
        conn.send(b"GET / HT")
        self.clock.advance(4)  # idle timer reset by the byte; the deadline not yet reached
        self.assertFalse(conn.transport.disconnecting)
        self.clock.advance(6.1)
        self.assertEqual(conn.status(), 408)

    def test_no_timer_is_left_once_a_connection_is_gone(self) -> None:
        conn = self.connect()
        conn.send(b"GET / HTTP/1.1\r\n")
        conn.lose()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BodyTests(SiteTestCase):
    def setUp(self) -> None:
        super().setUp()

        def no_temporary_files(*args: object, **kwargs: object) -> None:
            raise AssertionError("a request body was spooled to a temporary file")

        self.patch(tempfile, "TemporaryFile", no_temporary_files)

    def post(self, headers: str) -> bytes:
        return f"POST / HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n".encode()

    def test_a_declared_length_over_the_limit_is_refused_from_the_headers(self) -> None:
        conn = self.connect()
        conn.send(self.post("Content-Length: 300000000\r\nExpect: 100-continue\r\n"))
        self.assertEqual(conn.status(), 413)
        self.assertNotIn(b"100 Continue", conn.answer())
        self.assertTrue(conn.transport.disconnecting)
        self.assertIn(b"65536 bytes", conn.answer())
        before = conn.answer()
        conn.send(b"x" * 1_000_000)  # whatever still comes is dropped unread
        self.assertEqual(conn.answer(), before)
        self.assertEqual(self.page.bodies, [])

    def test_a_chunked_body_is_refused_once_it_grows_past_the_limit(self) -> None:
        conn = self.connect()
        conn.send(self.post("Transfer-Encoding: chunked\r\n"))
        chunk = b"8000\r\n" + b"x" * 0x8000 + b"\r\n"
        conn.send(chunk * 2)
        self.assertEqual(conn.answer(), b"")  # exactly 64 KiB so far: still fine
        conn.send(chunk)
        self.assertEqual(conn.status(), 413)
        conn.send(chunk * 10 + b"0\r\n\r\n")
        self.assertEqual(self.page.bodies, [])

    def test_a_body_within_the_limit_arrives_in_memory(self) -> None:
        conn = self.connect()
        conn.send(self.post("Content-Length: 60000\r\n") + b"y" * 60000)
        self.assertEqual(conn.status(), 200)
        self.assertTrue(conn.answer().endswith(b"60000"))
        self.assertEqual(type(self.page.bodies[0]).__name__, "BytesIO")

    def test_an_api_path_is_refused_in_json(self) -> None:
        conn = self.connect()
        conn.send(b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 70000\r\n\r\n")
        self.assertEqual(conn.status(), 413)
        self.assertIn(b'"error": "too-large"', conn.answer())


class HostTests(SiteTestCase):
    def test_names_and_addresses_of_this_listener_are_answered(self) -> None:
        for host in (
            "localhost",
            "LOCALHOST:8081",
            "edge7",
            "edge7.plant.local.",
            "127.0.0.1:8081",
            "[::1]:8081",
            "192.168.10.5",
        ):
            conn = self.connect()
            conn.send(get(host=host))
            self.assertEqual(conn.status(), 200, host)

    def test_a_request_without_a_host_is_answered(self) -> None:
        conn = self.connect()
        conn.send(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(conn.status(), 200)

    def test_a_foreign_host_is_refused_with_421_naming_the_setting(self) -> None:
        conn = self.connect()
        conn.send(get(host="attacker.example:8081"))
        self.assertEqual(conn.status(), 421)
        self.assertIn(b"status.allowed_hosts", conn.answer())
        self.assertNotIn(b"ok", conn.answer().partition(b"\r\n\r\n")[2])

    def test_two_host_headers_are_refused(self) -> None:
        conn = self.connect()
        conn.send(get(host="localhost", extra="Host: attacker.example\r\n"))
        self.assertEqual(conn.status(), 421)

    def test_the_api_is_refused_in_json(self) -> None:
        conn = self.connect()
        conn.send(get("/api/status", host="rebind.attacker.example"))
        self.assertEqual(conn.status(), 421)
        self.assertIn(b'"error": "wrong-host"', conn.answer())

    def test_a_foreign_host_is_logged_once_a_minute_escaped(self) -> None:
        with capturedLogs() as events:
            for _ in range(5):
                conn = self.connect()
                conn.send(get(host="evil\x1b[31m.example"))
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("\\x1b", lines[0])
        self.assertNotIn("\x1b", lines[0])
        self.assertIn("127.0.0.1:40000", lines[0])

    def test_host_values(self) -> None:
        allowed = frozenset({"edge7"})
        for value, expected in [
            (b"edge7", True),
            (b"edge7:80", True),
            (b"10.1.2.3:80", True),
            (b"[fe80::1]:80", True),
            (b"[edge7]:80", False),
            (b"edge7:http", False),
            (b"[::1]x", False),
            (b"other", False),
            (b"\xffedge7", False),
        ]:
            self.assertEqual(host_allowed(value, allowed), expected, value)

    def test_default_names_are_localhost_the_listen_host_and_this_machine(self) -> None:
        import socket

        self.patch(socket, "gethostname", lambda: "Edge7.plant.local")
        rules = rules_for("status listener", "status.allowed_hosts", Address("0.0.0.0", 8081))
        self.assertEqual(rules.allowed_hosts, {"localhost", "edge7", "edge7.plant.local"})
        named = rules_for("x", "x.allowed_hosts", Address("gw.plant.local", 1), ["Other."])
        self.assertIn("gw.plant.local", named.allowed_hosts)
        self.assertIn("other", named.allowed_hosts)


class HeaderTests(SiteTestCase):
    def assertSecurityHeaders(self, answer: bytes) -> None:
        head = answer.partition(b"\r\n\r\n")[0].lower()
        for name, value in SECURITY_HEADERS:
            self.assertIn(name.lower() + b": " + value.lower(), head)

    def test_every_answer_carries_the_security_headers(self) -> None:
        requests = [
            get(),
            get("/nowhere/at/all"),
            get(host="attacker.example"),
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 999999\r\n\r\n",
        ]
        for request in requests:
            conn = self.connect()
            conn.send(request)
            self.assertSecurityHeaders(conn.answer())
        slow = self.connect()
        self.clock.advance(10)
        self.assertSecurityHeaders(slow.answer())


class ConnectionCapTests(SiteTestCase):
    def test_a_full_listener_makes_room_by_closing_the_longest_waiting(self) -> None:
        waiting = [self.connect(40000 + i) for i in range(64)]
        self.clock.advance(1)
        newcomer = self.connect(50000)
        self.assertIsNotNone(newcomer.channel)
        self.assertTrue(waiting[0].transport.disconnected)  # aborted, not asked
        self.assertFalse(any(c.transport.disconnecting for c in waiting[1:]))
        self.assertEqual(self.site.open, 64)
        waiting[0].lose()  # the transport reports it later: not counted twice
        self.assertEqual(self.site.open, 64)
        newcomer.send(get())
        self.assertEqual(newcomer.status(), 200)

    def test_a_flood_of_slow_connections_cannot_keep_a_request_out(self) -> None:
        for i in range(500):
            conn = self.connect(40000 + i)
            conn.send(b"GET / HTTP/1.1\r\nX-Slow: ")
        self.assertEqual(self.site.open, 64)
        mine = self.connect(60000)
        mine.send(get())
        self.assertEqual(mine.status(), 200)

    def test_when_every_connection_is_busy_a_newcomer_is_closed_at_once(self) -> None:
        busy = [self.connect(40000 + i) for i in range(64)]
        for conn in busy:
            conn.send(get("/slow"))
        self.assertEqual(len(self.page.held), 64)
        self.assertIsNone(self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))
        busy[0].lose()
        self.assertIsNotNone(self.connect(50001).channel)

    def test_a_finished_request_makes_its_connection_waiting_again(self) -> None:
        first = self.connect(40000)
        first.send(get("/slow"))
        others = [self.connect(40001 + i) for i in range(63)]
        for conn in others:
            conn.send(get("/slow"))
        self.page.held[0].write(b"done")
        self.page.held[0].finish()
        newcomer = self.connect(50000)
        self.assertIsNotNone(newcomer.channel)
        self.assertTrue(first.transport.disconnected)
        self.assertIsInstance(newcomer.channel, GuardedChannel)


class ExposureTests(SynchronousTestCase):
    def test_loopback_addresses(self) -> None:
        for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"):
            self.assertTrue(is_loopback(Address(host, 8081)), host)
        for host in ("0.0.0.0", "::", "192.168.10.5", "edge7.plant.local"):
            self.assertFalse(is_loopback(Address(host, 8081)), host)

    def test_no_warning_on_loopback(self) -> None:
        self.assertIsNone(exposure_warning(Address("127.0.0.1", 8081), RULES, "see things"))

    def test_the_warning_says_who_can_reach_it_and_what_protects_it(self) -> None:
        text = exposure_warning(Address("0.0.0.0", 8081), RULES, "see who is connected")
        assert text is not None
        self.assertNotIn("\n", text)
        for part in (
            "0.0.0.0:8081",
            "every IPv4 network",
            "see who is connected",
            "no login",
            "status.allowed_hosts",
            "64 connections",
            "127.0.0.1",
        ):
            self.assertIn(part, text)

    def test_the_status_listeners_warning_names_the_operator_password(self) -> None:
        text = exposure_warning(Address("0.0.0.0", 8081), RULES, "see the page", login=True)
        assert text is not None
        self.assertIn("gateway operator-password", text)
        self.assertIn("read-only until one is set", text)
        self.assertNotIn("no login", text)

    def test_the_listener_warns_at_start_only_when_exposed(self) -> None:
        for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
            reactor = MemoryReactorClock()
            service = local_listener(reactor, "metrics", Address(host, 9108), Resource())
            with capturedLogs() as events:
                service.startService()
            self.addCleanup(service.stopService)
            lines = [formatEvent(e) for e in events if "can be reached" in formatEvent(e)]
            self.assertEqual(len(lines), int(warned), lines)
            (port, factory, _, interface) = reactor.tcpServers[0]
            self.assertEqual((port, interface), (9108, host))
            self.assertIsInstance(factory, GuardedSite)


class AllowedHostsConfigTests(SynchronousTestCase):
    def load(self, extra: str) -> Any:
        import tempfile
        from pathlib import Path

        from gateway.config import ConfigError, load_gateway_config

        tmp = tempfile.TemporaryDirectory(prefix="test-site-config-")
        self.addCleanup(tmp.cleanup)
        directory = Path(tmp.name)
        for name in ("ca.pem", "gw.pem", "gw.key"):
            (directory / name).write_text("x")
        path = directory / "gateway.toml"
        path.write_text(
            '[relay]\naddress = "relay.example.com:443"\nca = "ca.pem"\ncert = "gw.pem"\n'
            f'key = "gw.key"\n{extra}'
        )
        try:
            return load_gateway_config(path)
        except ConfigError as e:
            return e

    def test_allowed_hosts_for_each_listener(self) -> None:
        config = self.load(
            '[status]\nlisten = "0.0.0.0:8081"\nallowed_hosts = ["Edge7.Plant.Local."]\n'
            '[metrics]\nlisten = "127.0.0.1:9108"\nallowed_hosts = ["prom-target"]\n'
        )
        self.assertEqual(config.status_allowed_hosts, ("edge7.plant.local",))
        self.assertEqual(config.metrics_allowed_hosts, ("prom-target",))
        self.assertEqual(self.load("").status_allowed_hosts, ())

    def test_bad_allowed_hosts_name_the_key(self) -> None:
        for value in ('"edge7"', '["edge7:8081"]', '["10.0.0.1"]', '["bad name"]', "[1]"):
            error = self.load(f'[status]\nlisten = "127.0.0.1:1"\nallowed_hosts = {value}\n')
            self.assertEqual(error.key, "status.allowed_hosts", value)
