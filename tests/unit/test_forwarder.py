"""The gateway decides each stream: allowlist, access mode, processor connection."""

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
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import AccessMode, Address, Target
from gateway.edge.access import AccessPolicy
from gateway.edge.forwarder import StreamEvents, StreamForwarder, connect_error_text
from gateway.splice import SpliceEnd
from gateway.wire import StreamRefused
from tests.helpers.tunnel import Recorder, linked_tunnels

WEB = Target("web", Address("192.168.10.2", 80))


class CountingEvents(StreamEvents):
    def __init__(self) -> None:
        self.refused: list[tuple[str, str]] = []
        self.opened: list[str] = []
        self.closed: list[str] = []

    def stream_refused(self, target: str, token: str) -> None:
        self.refused.append((target, token))

    def stream_opened(self, target: str) -> None:
        self.opened.append(target)

    def stream_closed(self, target: str) -> None:
        self.closed.append(target)


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
        self.events = CountingEvents()
        self.connector = FakeConnector()
        self.policy = AccessPolicy((WEB,), AccessMode.UNATTENDED)
        self.forwarder = StreamForwarder(
            policy=self.policy,
            connect=self.connector,
            clock=self.clock,
            events=self.events,
        )
        self.t = linked_tunnels(self.forwarder, self.clock)
        self.addCleanup(self.t.close)

    def _open(self, target: str = "web") -> tuple[Deferred[object], Recorder]:
        stream = self.t.client.open_stream(target, headers=[(b"engineer", b"alice")])
        rec = Recorder()
        stream.attach(rec)
        stream.write(b"GET / HTTP/1.1\r\n\r\n")
        self.t.settle()
        return stream.response, rec  # type: ignore[return-value]

    def test_allowlisted_target_is_connected_and_spliced(self) -> None:
        response, rec = self._open()
        target, end, d = self.connector.calls[0]
        self.assertEqual(target.address, Address("192.168.10.2", 80))
        processor = StringTransport()
        end.makeConnection(processor)
        d.callback(end)
        self.t.settle()
        self.assertEqual(self.successResultOf(response).status, 200)  # type: ignore[attr-defined]
        self.assertEqual(processor.value(), b"GET / HTTP/1.1\r\n\r\n")
        end.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self.t.settle()
        self.assertEqual(rec.received, b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(self.events.opened, ["web"])
        [conn] = self.forwarder.active.values()
        self.assertEqual((conn.engineer, conn.target), ("alice", "web"))
        self.assertEqual(conn.bytes_to_target, len(b"GET / HTTP/1.1\r\n\r\n"))

    def test_unknown_target_is_refused_without_dialling(self) -> None:
        response, _ = self._open("plc")
        refused = self.failureResultOf(response, StreamRefused).value
        self.assertEqual(refused.token, "target-not-allowed")
        self.assertIn("'plc'", str(refused))
        self.assertEqual(self.connector.calls, [])
        self.assertEqual(self.events.refused, [("plc", "target-not-allowed")])

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
