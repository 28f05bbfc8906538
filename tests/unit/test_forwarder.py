"""The gateway decides each stream: allowlist, access mode, processor connection, connection id."""

from __future__ import annotations

import errno

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import (
    ConnectError,
    ConnectionRefusedError,
    NoRouteError,
    TCPTimedOutError,
    TimeoutError,
    UnknownHostError,
    getConnectError,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.config import AccessMode, Address, Target
from gateway.edge.access import AccessPolicy, AccessRequest
from gateway.edge.events import ConnectionRecord, IByteCounter, IStreamEvents
from gateway.edge.forwarder import StreamForwarder, connect_error_text, connection_id_from
from gateway.edge.testing import ByteTally, RecordingEvents
from gateway.splice import SpliceEnd
from gateway.tunnel.connection import IDLE_CREDIT_DELAY, IStreamHandler
from gateway.wire import CONNECTION_ID_HEADER, Refusal, StreamRefused
from tests.helpers.tunnel import Recorder, linked_tunnels

WEB = Target("web", Address("192.168.10.2", 80))
REQUEST = b"GET / HTTP/1.1\r\n\r\n"


class FakeConnector:
    def __init__(self) -> None:
        self.calls: list[tuple[Target, SpliceEnd, Deferred[object]]] = []

    def __call__(self, target: Target, end: SpliceEnd) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.calls.append((target, end, d))
        return d


class ForwarderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.events = RecordingEvents()
        self.tally = ByteTally()
        self.connector = FakeConnector()
        self.policy = AccessPolicy((WEB,), AccessMode.UNATTENDED)
        self.forwarder = StreamForwarder(
            policy=self.policy,
            connect=self.connector,
            clock=self.clock,
            events=self.events,
            counter=self.tally,
        )
        self.t = linked_tunnels(self.forwarder, self.clock)
        self.addCleanup(self.t.close)
        self.logged: list[str] = []

    def _open(
        self, target: str = "web", connection_id: bytes | None = None
    ) -> tuple[Deferred[object], Recorder]:
        headers = [(b"engineer", b"alice")]
        if connection_id is not None:
            headers.append((CONNECTION_ID_HEADER, connection_id))
        stream = self.t.client.open_stream(target, headers=headers)
        rec = Recorder()
        stream.attach(rec)
        stream.write(REQUEST)
        self.t.settle()
        return stream.response, rec  # type: ignore[return-value]

    def _answer(self, index: int = 0) -> tuple[SpliceEnd, StringTransport]:
        """The processor of the ``index``-th dial answers."""
        _target, end, d = self.connector.calls[index]
        processor = StringTransport()
        end.makeConnection(processor)
        d.callback(end)
        self.t.settle()
        return end, processor

    def test_fakes_provide_the_interfaces(self) -> None:
        self.assertTrue(verifyObject(IStreamEvents, self.events))
        self.assertTrue(verifyObject(IByteCounter, self.tally))
        self.assertTrue(verifyObject(IStreamHandler, self.forwarder))

    def test_allowlisted_target_is_connected_and_spliced(self) -> None:
        response, rec = self._open()
        self.assertEqual(self.connector.calls[0][0].address, Address("192.168.10.2", 80))
        end, processor = self._answer()
        self.assertEqual(self.successResultOf(response).status, 200)  # type: ignore[attr-defined]
        self.assertEqual(processor.value(), REQUEST)
        end.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self._acknowledged()
        self.assertEqual(rec.received, b"HTTP/1.1 200 OK\r\n\r\n")
        [(opened,)] = self.events.named("stream_opened")
        assert isinstance(opened, ConnectionRecord)
        self.assertEqual((opened.engineer, opened.target, opened.session), ("alice", "web", None))
        self.assertEqual(opened.address, "192.168.10.2:80")
        self.assertEqual(opened.started, 1000)
        [conn] = self.forwarder.active.values()
        self.assertIs(conn, opened)
        self.assertEqual(conn.bytes_to_target, len(REQUEST))
        self.assertEqual(conn.bytes_from_target, len(b"HTTP/1.1 200 OK\r\n\r\n"))

    def test_bytes_are_counted_each_way_by_the_counter(self) -> None:
        self._open()
        end, _ = self._answer()
        end.dataReceived(b"x" * 10)
        self.t.settle()
        self.assertEqual((self.tally.to_target, self.tally.from_target), (len(REQUEST), 10))

    def _acknowledged(self) -> None:
        """The relay's side has sent its idle credit for what it took."""
        self.t.settle()
        self.clock.advance(IDLE_CREDIT_DELAY)
        self.t.settle()

    def test_a_closed_stream_reports_its_bytes_and_leaves_the_active_list(self) -> None:
        self._open()
        end, _ = self._answer()
        end.dataReceived(b"abc")
        self._acknowledged()
        end.connectionLost(Failure(ConnectionRefusedError()))  # the processor went away
        self.t.settle()
        [(conn, down, up, why)] = self.events.named("stream_closed")
        self.assertEqual(self.events.named("stream_opened"), [(conn,)])
        self.assertEqual((down, up), (len(REQUEST), 3))
        self.assertEqual(why, "stream reset by this side (CANCEL)")
        self.assertEqual(self.forwarder.active, {})

    def test_bytes_from_the_processor_count_once_the_engineers_side_took_them(self) -> None:
        self._open()
        end, _ = self._answer()
        end.dataReceived(b"x" * 1000)
        self.t.settle()
        [conn] = self.forwarder.active.values()
        # Read from the processor and sent, but not acknowledged yet: not delivered.
        self.assertEqual((conn.bytes_read_from_target, conn.bytes_from_target), (1000, 0))
        self._acknowledged()
        self.assertEqual(conn.bytes_from_target, 1000)

    def test_the_idle_credit_timer_goes_with_the_tunnel(self) -> None:
        self._open()
        end, _ = self._answer()
        end.dataReceived(b"x" * 10)
        self.t.settle()
        owing = [c for c in self.clock.getDelayedCalls() if c.getTime() > self.clock.seconds()]
        self.assertTrue(owing)
        self.t.close()
        self.assertFalse([c for c in owing if c.active()])

    def test_a_stream_cut_before_acknowledgement_reports_what_was_delivered(self) -> None:
        self._open()
        end, _ = self._answer()
        end.dataReceived(b"abc")
        self._acknowledged()
        end.dataReceived(b"defg")  # in flight when the processor goes away
        self.t.settle()
        end.connectionLost(Failure(ConnectionRefusedError()))
        self.t.settle()
        [(_conn, _down, up, _why)] = self.events.named("stream_closed")
        self.assertEqual(up, 3)

    def test_the_relays_connection_id_names_the_connection(self) -> None:
        self._open(connection_id=b"r-42")
        self._answer()
        [conn] = self.forwarder.active.values()
        self.assertEqual(conn.id, "r-42")
        self.assertEqual(list(self.forwarder.active), ["r-42"])

    def test_without_a_connection_id_the_gateway_numbers_its_own(self) -> None:
        self._open()
        self._open()
        self._answer(0)
        self._answer(1)
        self.assertEqual(sorted(self.forwarder.active), ["g-1", "g-2"])

    def test_a_malformed_connection_id_is_ignored(self) -> None:
        for bad in (b"", b"has space", b"x" * 65, b"new\\nline", b"\xc3\xa9t\xc3\xa9", b"-lead"):
            self.assertIsNone(connection_id_from({"connection-id": bad.decode("utf-8")}), bad)
        self._open(connection_id=b"evil\x7fid")
        self._answer()
        [conn] = self.forwarder.active.values()
        self.assertEqual(conn.id, "g-1")

    def test_a_connection_id_already_in_use_is_not_reused(self) -> None:
        self._open(connection_id=b"r-1")
        self._answer(0)
        self._open(connection_id=b"r-1")
        self._answer(1)
        self.assertEqual(sorted(self.forwarder.active), ["g-1", "r-1"])

    def test_one_id_for_two_streams_at_once_still_keeps_them_apart(self) -> None:
        self._open(connection_id=b"r-1")
        self._open(connection_id=b"r-1")  # both still connecting: the id is not in use yet
        first, _ = self._answer(0)
        second, _ = self._answer(1)
        self.assertEqual(sorted(self.forwarder.active), ["g-1", "r-1"])
        for end in (first, second):
            end.connectionLost(Failure(ConnectionRefusedError()))
        self.t.settle()
        self.assertEqual(self.forwarder.active, {})
        self.assertEqual(len(self.events.named("stream_closed")), 2)

    def test_connection_lines_in_the_log_carry_the_connection_id(self) -> None:
        with capturedLogs() as events:
            self._open(connection_id=b"r-9")
            end, _ = self._answer()
            end.connectionLost(Failure(ConnectionRefusedError()))
            self.t.settle()
            refused, _ = self._open("plc", connection_id=b"r-10")
            self.failureResultOf(refused, StreamRefused)
        lines = [formatEvent(e) for e in events]
        self.assertIn("stream r-9: alice connected to web (192.168.10.2:80)", lines)
        self.assertIn("stream r-9 to web by alice ended: 18 bytes to it, 0 back", lines)
        self.assertIn("stream r-10: alice was refused 'plc' (target-not-allowed)", lines)

    def test_unknown_target_is_refused_without_dialling(self) -> None:
        response, _ = self._open("plc", connection_id=b"r-3")
        refused = self.failureResultOf(response, StreamRefused).value
        self.assertEqual(refused.token, "target-not-allowed")
        self.assertIn("'plc'", str(refused))
        self.assertEqual(self.connector.calls, [])
        [(request, refusal, reason)] = self.events.named("stream_refused")
        self.assertEqual(
            request, AccessRequest(target="plc", engineer="alice", connection_id="r-3", at=1000)
        )
        self.assertEqual(refusal, Refusal.TARGET_NOT_ALLOWED)
        self.assertEqual(reason, refused.reason)

    def test_disabled_mode_refuses_allowlisted_targets(self) -> None:
        self.policy.set_mode(AccessMode.DISABLED)
        response, _ = self._open()
        refused = self.failureResultOf(response, StreamRefused).value
        self.assertEqual(refused.token, "access-disabled")
        self.assertEqual(self.connector.calls, [])

    def test_attended_mode_refuses_with_a_reason(self) -> None:
        self.policy.set_mode(AccessMode.ATTENDED)
        response, _ = self._open()
        refused = self.failureResultOf(response, StreamRefused).value
        self.assertEqual(refused.token, "session-required")
        self.assertIn("attended", str(refused))

    def test_dead_processor_refuses_that_stream_only(self) -> None:
        response, _ = self._open()
        self.connector.calls[0][2].errback(ConnectionRefusedError())
        self.t.settle()
        refused = self.failureResultOf(response, StreamRefused).value
        self.assertEqual((refused.status, refused.token), (502, "target-unreachable"))
        self.assertIn("connection refused", str(refused))
        [(_request, refusal, _reason)] = self.events.named("stream_refused")
        self.assertEqual(refusal, Refusal.TARGET_UNREACHABLE)
        # The tunnel carries on.
        again, _ = self._open()
        self.assertNoResult(again)
        self.assertFalse(self.t.server.closed)
        again.addErrback(lambda _: None)  # still waiting for its processor when the test ends

    def test_a_refused_processor_is_explained_in_words_not_an_errno(self) -> None:
        response, _ = self._open()
        # What Twisted's TCP client really fails with: the errno and the OS's text.
        self.connector.calls[0][2].errback(
            getConnectError((errno.ECONNREFUSED, "Connection refused"))
        )
        self.t.settle()
        refused = self.failureResultOf(response, StreamRefused).value
        self.assertEqual(
            refused.reason,
            "processor 'web' at 192.168.10.2:80 is unreachable: connection refused "
            "(is the processor switched on and its web server running?)",
        )

    def test_processor_timeout_is_a_504(self) -> None:
        response, _ = self._open()
        self.connector.calls[0][2].errback(TimeoutError())
        self.t.settle()
        refused = self.failureResultOf(response, StreamRefused).value
        self.assertEqual((refused.status, refused.token), (504, "target-timeout"))

    def test_engineer_giving_up_while_connecting_closes_the_processor_connection(self) -> None:
        stream = self.t.client.open_stream("web")
        stream.attach(Recorder())
        stream.response.addErrback(lambda _: None)  # the engineer gave up: no answer expected
        self.t.settle()
        stream.abortConnection()
        self.t.settle()
        _target, end, d = self.connector.calls[0]
        processor = StringTransport()
        end.makeConnection(processor)
        d.callback(end)
        self.assertTrue(processor.disconnecting)
        self.assertEqual(self.forwarder.active, {})
        self.assertEqual(self.events.named("stream_opened"), [])

    def test_control_requests_are_not_streams(self) -> None:
        stream = self.t.client.open_stream("gw", method="GET", path="/v1/info", end_stream=True)
        stream.attach(Recorder())
        self.t.settle()
        refused = self.failureResultOf(stream.response, StreamRefused).value
        self.assertEqual(refused.token, "bad-request")
        self.assertEqual(refused.reason, "method GET is not supported")

    def test_connector_failure_is_never_unhandled(self) -> None:
        forwarder = StreamForwarder(
            policy=self.policy,
            connect=lambda t, e: fail(RuntimeError("boom")),
            clock=self.clock,
        )
        t = linked_tunnels(forwarder, self.clock)
        self.addCleanup(t.close)
        stream = t.client.open_stream("web")
        stream.attach(Recorder())
        t.settle()
        refused = self.failureResultOf(stream.response, StreamRefused).value
        self.assertIn("boom", str(refused))


class ConnectErrorTextTests(SynchronousTestCase):
    """Each way a processor can be unreachable reads as words after "is unreachable: "."""

    def text(self, error: ConnectError) -> str:
        failure = Failure(error)
        self.assertTrue(failure.check(ConnectError))
        return connect_error_text(failure.value)  # type: ignore[arg-type]

    def test_refused(self) -> None:
        expected = "connection refused (is the processor switched on and its web server running?)"
        self.assertEqual(self.text(getConnectError((111, "Connection refused"))), expected)
        self.assertEqual(self.text(ConnectionRefusedError()), expected)
        self.assertEqual(self.text(ConnectError(string="Connection refused")), expected)

    def test_no_route_to_host(self) -> None:
        error = getConnectError((errno.EHOSTUNREACH, "No route to host"))
        self.assertTrue(self.text(error).startswith("no route to host ("))

    def test_network_unreachable(self) -> None:
        error = getConnectError((errno.ENETUNREACH, "Network is unreachable"))
        self.assertIsInstance(error, NoRouteError)
        self.assertTrue(self.text(error).startswith("network is unreachable ("))

    def test_kernel_timeout(self) -> None:
        error = getConnectError((errno.ETIMEDOUT, "Connection timed out"))
        self.assertIsInstance(error, TCPTimedOutError)
        self.assertTrue(self.text(error).startswith("connection timed out ("))

    def test_any_other_errno_reads_as_the_systems_words(self) -> None:
        error = getConnectError((errno.EACCES, "Permission denied"))
        self.assertEqual(self.text(error), "permission denied")
        self.assertNotIn("13", self.text(error))

    def test_an_unknown_host(self) -> None:
        error = UnknownHostError(-2, "Name or service not known")
        self.assertEqual(self.text(error), "name or service not known")

    def test_a_bare_connect_error_still_says_something(self) -> None:
        self.assertEqual(self.text(ConnectError()), "an error occurred while connecting")
        self.assertEqual(self.text(ConnectError(string="Proxy said no.")), "proxy said no")
