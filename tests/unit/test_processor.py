# Twisted's test doubles are only partly annotated; strict mode would flag every call.
# mypy: disable-error-code="no-untyped-call"
"""The demo processor, driven through Twisted's real HTTP channel over in-memory transports.

Every test speaks raw HTTP (or WebSocket frames built by wsproto) into the site that
`processor_site` returns, so routing, headers and streaming are what a browser or curl gets.
"""

from __future__ import annotations

import hashlib
import json
import re

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyChannel
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    Event,
    Request,
    TextMessage,
)

from gateway.demo.processor import (
    CHUNK_SIZE,
    MAX_DOWNLOAD_SIZE,
    ListenAddressError,
    ProcessorRequest,
    parse_listen,
    pattern_bytes,
    processor_site,
    run_processor,
)

CLIENT = IPv4Address("TCP", "192.0.2.7", 50123)


def expected_body(size: int) -> bytes:
    """The download rule written out independently of the code under test."""
    return (bytes(range(251)) * (size // 251 + 1))[:size]


class SlowClientTransport(StringTransport):
    """A connection whose peer reads only when the test says so.

    Like a real socket, it pauses its producer once more than ``limit`` bytes wait unread and
    resumes it when the peer has read everything.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(peerAddress=CLIENT)
        self.limit = limit
        self.unread = 0
        self.most_unread = 0
        self.pushing_back = False
        self.pauses = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unread += len(data)
        self.most_unread = max(self.most_unread, self.unread)
        if self.unread > self.limit + 8 * CHUNK_SIZE:  # fail now rather than fill the memory
            raise AssertionError(f"{self.unread} bytes written to a client that is not reading")
        if self.unread > self.limit and self.producer is not None and not self.pushing_back:
            self.pushing_back = True
            self.pauses += 1
            self.producer.pauseProducing()

    def read_all(self) -> bytes:
        data: bytes = self.value()
        self.clear()
        self.unread = 0
        if self.pushing_back and self.producer is not None:
            self.pushing_back = False
            self.producer.resumeProducing()
        return data


class Response:
    """One parsed HTTP/1.1 response with a Content-Length body."""

    def __init__(self, raw: bytes) -> None:
        head, sep, self.body = raw.partition(b"\r\n\r\n")
        assert sep, f"no complete response head in {raw[:200]!r}"
        status, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status.split()[1])
        self.headers: dict[str, str] = {}
        for line in lines:
            name, value = line.split(": ", 1)
            self.headers[name.lower()] = value

    def json(self) -> object:
        return json.loads(self.body)


class Processor:
    """A processor site with a fake clock, and connections to it over in-memory transports."""

    def __init__(self, name: str = "Demo vision processor") -> None:
        self.clock = Clock()
        self.site: Site = processor_site(name=name, clock=self.clock)

    def connect(self, transport: StringTransport | None = None) -> tuple[Protocol, StringTransport]:
        transport = transport or StringTransport(peerAddress=CLIENT)
        protocol = self.site.buildProtocol(CLIENT)
        assert protocol is not None
        protocol.makeConnection(transport)
        return protocol, transport

    def request(self, raw: bytes) -> Response:
        """Send one request, let any streaming finish, return the response."""
        protocol, transport = self.connect()
        protocol.dataReceived(raw)
        self.run_until_idle()
        return Response(transport.value())

    def get(self, target: str, headers: str = "") -> Response:
        return self.request(f"GET {target} HTTP/1.1\r\nHost: processor\r\n{headers}\r\n".encode())

    def run_until_idle(self) -> None:
        """Run every write the processor scheduled for a later turn (not the channel timeout).

        `Clock.advance` also runs what the calls it runs schedule for "now", so one is enough.
        """
        self.clock.advance(0)


class DownloadTests(SynchronousTestCase):
    def test_download_bytes_follow_the_i_mod_251_pattern(self) -> None:
        size = 5 * CHUNK_SIZE + 12345  # several writes and reactor turns, and a short last chunk
        response = Processor().get(f"/download?size={size}")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "application/octet-stream")
        self.assertEqual(response.body, expected_body(size))

    def test_pattern_bytes_match_the_rule_at_any_offset(self) -> None:
        whole = expected_body(3 * CHUNK_SIZE)
        for start, length in [(0, 0), (0, 1), (250, 3), (251, CHUNK_SIZE), (777, 4096)]:
            self.assertEqual(pattern_bytes(start, length), whole[start : start + length])

    def test_download_has_exact_content_length(self) -> None:
        processor = Processor()
        for size in [0, 1, 250, 251, CHUNK_SIZE, CHUNK_SIZE + 1]:
            response = processor.get(f"/download?size={size}")
            self.assertEqual(response.headers["content-length"], str(size))
            self.assertEqual(len(response.body), size)

    def test_download_pauses_while_the_client_is_slow(self) -> None:
        processor = Processor()
        limit, size = 256 * 1024, 16 * CHUNK_SIZE
        transport = SlowClientTransport(limit)
        protocol, _ = processor.connect(transport)
        protocol.dataReceived(
            f"GET /download?size={size} HTTP/1.1\r\nHost: processor\r\n\r\n".encode()
        )
        received, body = b"", b""
        while len(body) < size:
            waiting = transport.unread
            processor.clock.advance(1)  # time passes, the client reads nothing
            self.assertEqual(transport.unread, waiting, "wrote while the client was not reading")
            received += transport.read_all()
            body = received.partition(b"\r\n\r\n")[2]
        self.assertGreaterEqual(transport.pauses, size // (limit + CHUNK_SIZE))
        self.assertLessEqual(transport.most_unread, limit + CHUNK_SIZE + 1024)
        self.assertEqual(Response(received).body, expected_body(size))

    def test_huge_download_streams_instead_of_building_the_body(self) -> None:
        processor = Processor()
        size = 64 * 2**30
        transport = SlowClientTransport(limit=256 * 1024)
        protocol, _ = processor.connect(transport)
        protocol.dataReceived(
            f"GET /download?size={size} HTTP/1.1\r\nHost: processor\r\n\r\n".encode()
        )
        received = b""
        for _ in range(8):
            processor.clock.advance(1)
            received += transport.read_all()
        response = Response(received)
        self.assertEqual(response.headers["content-length"], str(size))
        self.assertEqual(response.body, expected_body(len(response.body)))
        self.assertLessEqual(transport.most_unread, 256 * 1024 + CHUNK_SIZE + 1024)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(processor.clock.getDelayedCalls(), [])

    def test_download_yields_to_the_reactor_when_the_client_never_pushes_back(self) -> None:
        processor = Processor()
        protocol, transport = processor.connect()
        protocol.dataReceived(
            f"GET /download?size={MAX_DOWNLOAD_SIZE} HTTP/1.1\r\nHost: processor\r\n\r\n".encode()
        )
        self.assertLessEqual(len(transport.value()), 4 * CHUNK_SIZE + 1024)
        self.assertEqual(len(processor.clock.getDelayedCalls()), 1)
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_download_stops_when_the_client_goes_away(self) -> None:
        processor = Processor()
        protocol, transport = processor.connect()
        protocol.dataReceived(
            f"GET /download?size={MAX_DOWNLOAD_SIZE} HTTP/1.1\r\nHost: processor\r\n\r\n".encode()
        )
        self.assertTrue(processor.clock.getDelayedCalls())
        protocol.connectionLost(Failure(ConnectionDone()))
        written = len(transport.value())
        processor.clock.advance(10)
        self.assertEqual(len(transport.value()), written)
        self.assertEqual(processor.clock.getDelayedCalls(), [])

    def test_head_download_announces_the_length_without_a_body(self) -> None:
        processor = Processor()
        response = processor.request(
            b"HEAD /download?size=1073741824 HTTP/1.1\r\nHost: processor\r\n\r\n"
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-length"], "1073741824")
        self.assertEqual(response.body, b"")

    def test_bad_download_size_is_a_400_with_reason(self) -> None:
        processor = Processor()
        for query, reason in [
            ("", "missing size"),
            ("?size=", "whole number"),
            ("?size=-1", "whole number"),
            ("?size=abc", "whole number"),
            ("?size=1.5", "whole number"),
            ("?size=%205", "whole number"),
            ("?size=1&size=2", "more than once"),
            (f"?size={MAX_DOWNLOAD_SIZE + 1}", "at most 1099511627776"),
            ("?size=" + "9" * 5000, "at most"),
        ]:
            response = processor.get(f"/download{query}")
            self.assertEqual(response.status, 400, query)
            self.assertEqual(response.headers["content-type"], "text/plain; charset=utf-8")
            text = response.body.decode()
            self.assertIn(reason, text)
            self.assertEqual(text.count("\n"), 1, f"not one line: {text!r}")
            self.assertLess(len(text), 200)

    def test_largest_allowed_download_is_accepted(self) -> None:
        processor = Processor()
        protocol, transport = processor.connect()
        protocol.dataReceived(
            f"GET /download?size={MAX_DOWNLOAD_SIZE} HTTP/1.1\r\nHost: p\r\n\r\n".encode()
        )
        self.assertEqual(Response(transport.value()).status, 200)
        protocol.connectionLost(Failure(ConnectionDone()))


class UploadTests(SynchronousTestCase):
    def test_upload_reports_size_and_sha256(self) -> None:
        body = bytes(range(256)) * 5000 + b"tail"
        processor = Processor()
        protocol, transport = processor.connect()
        protocol.dataReceived(
            b"POST /upload HTTP/1.1\r\nHost: processor\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        for start in range(0, len(body), 65536):  # the body arrives in pieces
            protocol.dataReceived(body[start : start + 65536])
        response = Response(transport.value())
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertEqual(
            response.json(), {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        )

    def test_chunked_upload_is_measured_too(self) -> None:
        response = Processor().request(
            b"POST /upload HTTP/1.1\r\nHost: processor\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        self.assertEqual(
            response.json(),
            {"bytes": 11, "sha256": hashlib.sha256(b"hello world").hexdigest()},
        )

    def test_empty_upload_is_zero_bytes(self) -> None:
        response = Processor().request(
            b"POST /upload HTTP/1.1\r\nHost: processor\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(response.json(), {"bytes": 0, "sha256": hashlib.sha256().hexdigest()})

    def test_upload_body_is_hashed_not_kept(self) -> None:
        request = ProcessorRequest(DummyChannel())
        request.gotLength(2 * 2**30)
        for _ in range(16):
            request.handleContentChunk(b"\x5a" * 65536)
        self.assertEqual(request.body_size, 16 * 65536)
        assert request.content is not None
        self.assertEqual(request.content.read(), b"")

    def test_upload_only_accepts_post(self) -> None:
        self.assertEqual(Processor().get("/upload").status, 405)


class HeadersTests(SynchronousTestCase):
    def test_headers_echo_request_headers(self) -> None:
        response = Processor().get(
            "/headers?probe=1",
            "User-Agent: test-suite\r\nX-Probe: one\r\nX-Probe: two\r\n",
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertEqual(
            response.json(),
            {
                "method": "GET",
                "path": "/headers",
                "client": "192.0.2.7:50123",
                "Host": "processor",
                "User-Agent": "test-suite",
                "X-Probe": ["one", "two"],
            },
        )


class SiteTests(SynchronousTestCase):
    def test_unknown_path_is_404(self) -> None:
        processor = Processor()
        for path in ["/nope", "/download/extra", "/index.html", "/ws/deeper"]:
            self.assertEqual(processor.get(path).status, 404, path)

    def test_every_response_is_marked_no_store(self) -> None:
        processor = Processor()
        for path in ["/", "/headers", "/nope", "/download?size=1", "/download?size=x", "/upload"]:
            response = processor.get(path)
            self.assertEqual(response.headers.get("cache-control"), "no-store", path)

    def test_page_names_the_processor_and_opens_the_websocket(self) -> None:
        response = Processor(name="Cell 3 <vision>").get("/")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "text/html; charset=utf-8")
        page = response.body.decode()
        self.assertIn("<title>Cell 3 &lt;vision&gt;</title>", page)
        self.assertNotIn("<vision>", page)
        self.assertIn("/ws", page)
        self.assertIn("new WebSocket(", page)
        self.assertIn('"wss:"', page)  # follows the page's scheme behind TLS
        self.assertIn("/download?size=1048576", page)
        self.assertIn("/headers", page)

    def test_page_loads_nothing_from_other_hosts(self) -> None:
        page = Processor().get("/").body.decode()
        self.assertNotIn("http://", page)
        self.assertNotIn("https://", page)
        self.assertEqual(re.findall(r"""(?:src|href|action)\s*=\s*["']?(?://|\w+:)""", page), [])
        self.assertNotIn("@import", page)


def websocket_handshake(processor: Processor) -> tuple[Protocol, StringTransport, WSConnection]:
    protocol, transport = processor.connect()
    client = WSConnection(ConnectionType.CLIENT)
    protocol.dataReceived(client.send(Request(host="processor", target="/ws")))
    client.receive_data(transport.value())
    transport.clear()
    events: list[Event] = list(client.events())
    assert len(events) == 1 and isinstance(events[0], AcceptConnection), events
    return protocol, transport, client


class WebSocketTests(SynchronousTestCase):
    def exchange(
        self, protocol: Protocol, transport: StringTransport, client: WSConnection, message: Event
    ) -> list[Event]:
        protocol.dataReceived(client.send(message))
        client.receive_data(transport.value())
        transport.clear()
        return list(client.events())

    def test_websocket_echoes_text_and_binary(self) -> None:
        protocol, transport, client = websocket_handshake(Processor())
        [text] = self.exchange(protocol, transport, client, TextMessage("ping 1 \N{SNOWMAN}"))
        self.assertIsInstance(text, TextMessage)
        assert isinstance(text, TextMessage)
        self.assertEqual(text.data, "ping 1 \N{SNOWMAN}")
        blob = bytes(range(256)) * 300
        [binary] = self.exchange(protocol, transport, client, BytesMessage(blob))
        self.assertIsInstance(binary, BytesMessage)
        assert isinstance(binary, BytesMessage)
        self.assertEqual(bytes(binary.data), blob)

    def test_websocket_stops_reading_while_its_echoes_back_up(self) -> None:
        """The connection produces for itself: a full send buffer pauses reading from it."""
        _, transport, _ = websocket_handshake(Processor())
        self.assertIs(transport.producer, transport)
        self.assertTrue(transport.streaming)

    def test_plain_get_on_websocket_path_is_refused(self) -> None:
        self.assertEqual(Processor().get("/ws").status, 400)


class ListenTests(SynchronousTestCase):
    def test_listen_addresses_are_ip_and_port(self) -> None:
        self.assertEqual(parse_listen("127.0.0.1:8000"), ("127.0.0.1", 8000))
        self.assertEqual(parse_listen("[::1]:8000"), ("::1", 8000))
        self.assertEqual(parse_listen("0.0.0.0:0"), ("0.0.0.0", 0))
        self.assertEqual(parse_listen("localhost:8080"), ("127.0.0.1", 8080))

    def test_bad_listen_address_is_a_value_error_with_one_line(self) -> None:
        for bad in [
            "",
            "8000",
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:http",
            "::1:8000",
            "[127.0.0.1]:80",
            "processor.local:80",
            "127.0.0.1:65536",
            "1.2.3.4:5\n",
        ]:
            with self.assertRaises(ListenAddressError, msg=bad) as caught:
                parse_listen(bad)
            self.assertIsInstance(caught.exception, ValueError)
            self.assertNotIn("\n", str(caught.exception).replace("\\n", ""))

    def test_run_processor_listens_and_logs_its_url(self) -> None:
        for listen, interface, url in [
            ("127.0.0.1:8000", "127.0.0.1", "http://127.0.0.1:8000/"),
            ("[::1]:8000", "::1", "http://[::1]:8000/"),
        ]:
            reactor = MemoryReactorClock()
            with capturedLogs() as events:
                running = Deferred.fromCoroutine(run_processor(reactor, listen))
            self.assertNoResult(running)
            [(port, factory, _, bound)] = reactor.tcpServers
            self.assertEqual((port, bound), (8000, interface))
            self.assertIsInstance(factory, Site)
            messages = [event.get("log_format", "").format(**event) for event in events]
            self.assertIn(f"demo processor listening on {url}", messages)
            running.cancel()
            self.failureResultOf(running, CancelledError)

    def test_run_processor_refuses_a_bad_address_before_listening(self) -> None:
        reactor = MemoryReactorClock()
        running = Deferred.fromCoroutine(run_processor(reactor, "nowhere"))
        self.failureResultOf(running, ListenAddressError)
        self.assertEqual(reactor.tcpServers, [])
