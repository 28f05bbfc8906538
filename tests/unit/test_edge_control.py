"""The tunnel's control requests: the dispatcher and the route table."""

from __future__ import annotations

import json
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway import __version__
from gateway.config import AccessMode, Address, Target
from gateway.edge.access import AccessPolicy
from gateway.edge.control import ControlRefused, ControlRequest, ControlRoutes, Route, info_route
from gateway.edge.dispatch import StreamDispatcher
from gateway.tunnel.connection import IStreamHandler
from gateway.tunnel.errors import StreamReset
from gateway.tunnel.stream import TunnelStream
from gateway.wire import Refusal, StreamRefused
from tests.helpers.tunnel import AcceptAll, Linked, Recorder, linked_tunnels

TARGETS = (Target("web", Address("192.168.10.2", 80)), Target("hmi", Address("192.168.10.3", 80)))


@frozen
class Echo:
    method: str
    path: str
    engineer: str | None
    body: str


def echo(request: ControlRequest) -> Echo:
    return Echo(request.method, request.path, request.engineer, request.body.decode())


class ControlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.policy = AccessPolicy(TARGETS, AccessMode.UNATTENDED)
        self.live = 0
        self.later: list[Deferred[Any]] = []
        self.routes = ControlRoutes(
            [
                info_route("gw-1", self.policy, lambda: self.live),
                Route("POST", "/v1/echo", echo, max_body=100),
                Route("GET", "/v1/refuse", self.refuse),
                Route("GET", "/v1/crash", self.crash),
                Route("GET", "/v1/later", self.answer_later),
            ]
        )
        self.connects = AcceptAll()
        self.dispatcher = StreamDispatcher(self.connects, self.routes)
        self.t: Linked = linked_tunnels(self.dispatcher, self.clock)
        self.addCleanup(self.t.close)

    def refuse(self, request: ControlRequest) -> Echo:
        raise ControlRefused(Refusal.SESSION_REQUIRED, "no session for you")

    def crash(self, request: ControlRequest) -> Echo:
        raise ZeroDivisionError("handler bug")

    def answer_later(self, request: ControlRequest) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.later.append(d)
        return d

    def ask(
        self, path: str, method: str = "GET", body: bytes | None = None
    ) -> tuple[TunnelStream, Recorder]:
        stream = self.t.client.open_stream(
            "gw",
            method=method,
            path=path,
            headers=[(b"engineer", b"alice")],
            end_stream=body is None,
        )
        rec = Recorder()
        stream.attach(rec)
        if body is not None:
            stream.write(body)
            stream.loseWriteConnection()
        self.t.settle()
        return stream, rec

    def refused(self, stream: TunnelStream) -> StreamRefused:
        refused = self.failureResultOf(stream.response, StreamRefused).value
        assert isinstance(refused, StreamRefused)
        return refused

    def test_the_dispatcher_is_the_tunnels_stream_handler(self) -> None:
        self.assertTrue(verifyObject(IStreamHandler, self.dispatcher))

    def test_info_describes_the_gateway_exactly_as_before(self) -> None:
        self.live = 2
        stream, rec = self.ask("/v1/info")
        response = self.successResultOf(stream.response)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "application/json")
        expected = {
            "id": "gw-1",
            "version": __version__,
            "access_mode": "unattended",
            "targets": ["hmi", "web"],
            "connections": 2,
        }
        self.assertEqual(rec.received, json.dumps(expected).encode())
        self.assertTrue(rec.read_closed)

    def test_info_follows_a_mode_change(self) -> None:
        self.policy.set_mode(AccessMode.DISABLED)
        _, rec = self.ask("/v1/info")
        self.assertEqual(json.loads(rec.received)["access_mode"], "disabled")

    def test_an_unknown_control_path_is_a_bad_request(self) -> None:
        stream, _ = self.ask("/v1/nope")
        refused = self.refused(stream)
        self.assertEqual((refused.status, refused.token), (400, "bad-request"))
        self.assertEqual(refused.reason, "unknown control path /v1/nope")

    def test_a_method_no_route_answers_is_not_supported(self) -> None:
        for method, path in (("DELETE", "/v1/info"), ("GET", "/elsewhere")):
            stream, _ = self.ask(path, method=method)
            self.assertEqual(self.refused(stream).reason, f"method {method} is not supported")
        self.assertEqual(self.connects.streams, [])

    def test_connect_streams_go_to_the_forwarder(self) -> None:
        stream = self.t.client.open_stream("web")
        self.t.settle()
        self.assertEqual(self.successResultOf(stream.response).status, 200)
        self.assertEqual([s.request.authority for s in self.connects.streams], ["web"])  # type: ignore[union-attr]

    def test_a_route_gets_the_request_body_once_it_has_all_arrived(self) -> None:
        _, rec = self.ask("/v1/echo", method="POST", body=b'{"reason": "pump 3"}')
        answer = json.loads(rec.received)
        self.assertEqual(
            answer,
            {
                "method": "POST",
                "path": "/v1/echo",
                "engineer": "alice",
                "body": '{"reason": "pump 3"}',
            },
        )

    def test_an_empty_body_is_an_empty_body(self) -> None:
        _, rec = self.ask("/v1/echo", method="POST")
        self.assertEqual(json.loads(rec.received)["body"], "")

    def test_a_body_over_the_routes_limit_is_refused(self) -> None:
        stream, rec = self.ask("/v1/echo", method="POST", body=b"x" * 101)
        refused = self.refused(stream)
        self.assertEqual(refused.token, "bad-request")
        self.assertEqual(refused.reason, "control request body over 100 bytes")
        self.assertEqual(rec.received, b"")

    def test_a_handler_can_refuse(self) -> None:
        stream, _ = self.ask("/v1/refuse")
        refused = self.refused(stream)
        self.assertEqual(
            (refused.token, refused.reason), ("session-required", "no session for you")
        )

    def test_a_crashing_handler_ends_that_request_only(self) -> None:
        stream, _ = self.ask("/v1/crash")
        self.failureResultOf(stream.response, StreamReset)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        _, rec = self.ask("/v1/info")
        self.assertEqual(json.loads(rec.received)["id"], "gw-1")

    def test_a_handler_may_answer_later(self) -> None:
        stream, rec = self.ask("/v1/later")
        self.assertNoResult(stream.response)
        self.later[0].callback(Echo("GET", "/v1/later", None, ""))
        self.t.settle()
        self.assertEqual(json.loads(rec.received)["path"], "/v1/later")

    def test_an_answer_after_the_relay_gave_up_is_dropped(self) -> None:
        stream, _ = self.ask("/v1/later")
        stream.response.addErrback(lambda _: None)
        stream.abortConnection()
        self.t.settle()
        self.later[0].callback(Echo("GET", "/v1/later", None, ""))
        self.t.settle()
        self.assertFalse(self.t.server.closed)

    def test_two_routes_for_one_request_are_a_mistake(self) -> None:
        self.assertRaises(ValueError, self.routes.add, Route("GET", "/v1/info", echo))
