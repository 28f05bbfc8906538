"""View or full, request by request, on ``http`` targets (`gateway.edge.httpstreams`).

Through the real forwarder and tunnel streams, with a processor that is a ``StringTransport``:
a view-only session's writes are answered by the gateway and never reach the processor, the
connection carries on, and a switch of the live session applies to the next request.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.config import AccessMode, Address, Target, TargetKind
from gateway.edge.access import AccessPolicy, Grant, ISessionLookup, Permission, Refused
from gateway.edge.events import ConnectionRecord, IRequestEvents
from gateway.edge.forwarder import StreamForwarder
from gateway.edge.httpfollow import Exchange
from gateway.edge.testing import ByteTally, RecordingEvents
from gateway.splice import SpliceEnd
from gateway.wire import SESSION_HEADER, Refusal
from tests.helpers.tunnel import Recorder, linked_tunnels

HMI = Target("hmi", Address("192.168.10.2", 80), kind=TargetKind.HTTP)
LIVE_VIEW = Target("live", Address("192.168.10.3", 80), kind=TargetKind.HTTP, view_websocket=True)
PLC = Target("plc", Address("192.168.10.4", 502))

GET = b"GET /page?line=2 HTTP/1.1\r\nHost: hmi\r\n\r\n"
POST = b"POST /upload HTTP/1.1\r\nHost: hmi\r\nContent-Length: 6\r\n\r\nrecipe"
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: hmi\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@implementer(ISessionLookup)
class Sessions:
    def __init__(self) -> None:
        self.grants: dict[str, Grant] = {}

    def grant(self, session_id: str) -> Grant | None:
        return self.grants.get(session_id)

    def implicit_session(self, engineer: str) -> Grant | Refused:
        return Refused(Refusal.SESSION_REQUIRED, "no")


@implementer(IRequestEvents)
class Requests:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, str, int | None]] = []

    def request_seen(self, connection: ConnectionRecord, exchange: Exchange) -> None:
        result = "forwarded" if exchange.forwarded else "refused"
        self.seen.append(
            (
                connection.session or "",
                exchange.head.method,
                exchange.head.path,
                result,
                exchange.status,
            )
        )


class Connector:
    def __init__(self) -> None:
        self.calls: list[tuple[Target, SpliceEnd, Deferred[object]]] = []

    def __call__(self, target: Target, end: SpliceEnd) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.calls.append((target, end, d))
        return d


class ViewPermissionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sessions = Sessions()
        self.sessions.grants["s-1"] = Grant(
            "s-1", "alice", frozenset({"hmi", "live", "plc"}), Permission.VIEW
        )
        self.policy = AccessPolicy(
            (HMI, LIVE_VIEW, PLC), AccessMode.ATTENDED, sessions=self.sessions
        )
        self.connector = Connector()
        self.events = RecordingEvents()
        self.requests = Requests()
        self.forwarder = StreamForwarder(
            policy=self.policy,
            connect=self.connector,
            clock=self.clock,
            events=self.events,
            counter=ByteTally(),
            requests=self.requests,
        )
        self.t = linked_tunnels(self.forwarder, self.clock)
        self.addCleanup(self.t.close)

    def open(self, target: str = "hmi") -> tuple[list[object], Recorder, object]:
        """The stream's answer (a list that gets it), what it receives, and the stream."""
        headers = [(b"engineer", b"alice"), (SESSION_HEADER, b"s-1")]
        stream = self.t.client.open_stream(target, headers=headers)
        rec = Recorder()
        stream.attach(rec)
        outcome: list[object] = []
        stream.response.addBoth(outcome.append)
        self.t.settle()
        return outcome, rec, stream

    def answer(self) -> tuple[SpliceEnd, StringTransport]:
        _target, end, d = self.connector.calls[-1]
        processor = StringTransport()
        end.makeConnection(processor)
        d.callback(end)
        self.t.settle()
        return end, processor

    def send(self, stream: object, data: bytes) -> None:
        stream.write(data)  # type: ignore[attr-defined]
        self.t.settle()

    def set_permission(self, permission: Permission) -> None:
        self.sessions.grants["s-1"] = attrs.evolve(
            self.sessions.grants["s-1"], permission=permission
        )

    def test_view_lets_reads_through_and_answers_writes_itself(self) -> None:
        _, rec, stream = self.open()
        end, processor = self.answer()
        self.send(stream, GET)
        self.assertEqual(processor.value(), GET)
        end.dataReceived(OK)
        self.t.settle()
        self.send(stream, POST)
        self.assertEqual(processor.value(), GET)  # the POST and its body never reached it
        self.assertIn(b"HTTP/1.1 403 Forbidden", rec.received)
        self.assertIn(b"view-only access to &#x27;hmi&#x27;", rec.received)
        self.send(stream, GET)  # the same connection carries on
        self.assertEqual(processor.value(), GET + GET)
        self.assertEqual(
            self.requests.seen,
            [
                ("s-1", "GET", "/page?line=", "forwarded", 200),
                ("s-1", "POST", "/upload", "refused", 403),
            ],
        )

    def test_a_switch_to_full_applies_to_the_next_request_on_an_open_connection(self) -> None:
        _, _rec, stream = self.open()
        _end, processor = self.answer()
        self.send(stream, POST)
        self.assertEqual(processor.value(), b"")
        self.set_permission(Permission.FULL)
        self.send(stream, POST)
        self.assertEqual(processor.value(), POST)
        self.set_permission(Permission.VIEW)
        processor.clear()
        _end.dataReceived(OK)
        self.t.settle()
        self.send(stream, POST)
        self.assertEqual(processor.value(), b"")

    def test_a_websocket_under_view_is_refused_unless_the_target_allows_it(self) -> None:
        _, rec, stream = self.open("hmi")
        _end, processor = self.answer()
        self.send(stream, UPGRADE)
        self.assertEqual(processor.value(), b"")
        self.assertIn(b"view_websocket = false", rec.received)
        _, rec, stream = self.open("live")
        _end, processor = self.answer()
        self.send(stream, UPGRADE.replace(b"hmi", b"live"))
        self.assertEqual(processor.value(), UPGRADE.replace(b"hmi", b"live"))

    def test_a_tcp_target_under_view_is_refused_with_the_reason(self) -> None:
        outcome, _, _ = self.open("plc")
        self.assertEqual(self.connector.calls, [])
        [failure] = outcome
        self.assertEqual(failure.value.status, 403)  # type: ignore[attr-defined]
        [(_asked, refusal, reason)] = self.events.named("stream_refused")
        self.assertIs(refusal, Refusal.PERMISSION_DENIED)
        self.assertIn("'plc' is a tcp target: the gateway cannot tell reading from writing", reason)
        self.set_permission(Permission.FULL)
        self.open("plc")
        self.assertEqual(len(self.connector.calls), 1)

    def test_a_permission_set_for_one_target_is_the_one_its_streams_follow(self) -> None:
        """The session is view-only, but full on the PLC and the HMI is switched on its own."""
        grant = self.sessions.grants["s-1"]
        self.sessions.grants["s-1"] = attrs.evolve(grant, per_target=(("plc", Permission.FULL),))
        self.open("plc")
        self.assertEqual(len(self.connector.calls), 1)  # a tcp target, allowed: full there
        _, _rec, stream = self.open("hmi")
        _end, processor = self.answer()
        self.send(stream, POST)
        self.assertEqual(processor.value(), b"")  # hmi follows the session's view
        self.sessions.grants["s-1"] = attrs.evolve(
            grant, per_target=(("hmi", Permission.FULL), ("plc", Permission.FULL))
        )
        self.send(stream, POST)
        self.assertEqual(processor.value(), POST)  # the next request, under hmi's full

    def test_a_read_with_a_body_is_refused_under_view(self) -> None:
        # The body could be a second request to a processor that ignores a GET's body.
        _, rec, stream = self.open()
        _end, processor = self.answer()
        smuggled = b"POST /admin HTTP/1.1\r\nHost: hmi\r\n\r\n"
        self.send(
            stream,
            b"GET / HTTP/1.1\r\nHost: hmi\r\nContent-Length: %d\r\n\r\n%s"
            % (len(smuggled), smuggled),
        )
        self.assertEqual(processor.value(), b"")
        self.assertIn(b"a GET request with a body is refused", rec.received)
        self.send(stream, b"GET / HTTP/1.1\r\nHost: hmi\r\nContent-Length: 0\r\n\r\n")
        self.assertIn(b"Content-Length: 0", processor.value())

    def test_a_session_that_ended_answers_every_further_request(self) -> None:
        _, rec, stream = self.open()
        _end, processor = self.answer()
        del self.sessions.grants["s-1"]
        self.send(stream, GET)
        self.assertEqual(processor.value(), b"")
        self.assertIn(b"HTTP/1.1 410 Gone", rec.received)

    def test_a_switch_to_view_cuts_what_view_cannot_hold(self) -> None:
        self.set_permission(Permission.FULL)
        self.open("hmi")  # plain requests: carries on
        self.answer()
        self.open("plc")  # tcp: cut
        self.answer()
        for target in ("hmi", "live"):  # upgraded under full: cut where view_websocket is off
            _, _, stream = self.open(target)
            end, _ = self.answer()
            self.send(stream, UPGRADE)
            end.dataReceived(SWITCHED)
            self.t.settle()
        kinds = sorted((c.target, c.kind) for c in self.forwarder.active.values())
        self.assertEqual(
            kinds, [("hmi", "http"), ("hmi", "http"), ("live", "http"), ("plc", "tcp")]
        )
        self.set_permission(Permission.VIEW)
        cut = self.forwarder.narrow_to_view("s-1")
        self.t.settle()
        self.assertEqual(len(cut), 2)
        left = sorted(c.target for c in self.forwarder.active.values())
        self.assertEqual(left, ["hmi", "live"])
        self.assertEqual(self.forwarder.narrow_to_view("s-1"), [])
