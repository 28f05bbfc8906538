"""The support desk's view (`gateway.relay.desk`, `gateway.relay.control`): every connected
gateway asked at once over its real in-memory tunnel, each answer bounded in time and size.

The gateways here are stream handlers that answer ``GET /v1/sessions`` the way a gateway would,
refuse it the way an older gateway would, or never answer; one `task.Clock` drives tunnels and
timeouts alike.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, cast

import attrs
from attrs import define, field
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from gateway.cli.desk import render
from gateway.relay.control import ControlAPI
from gateway.relay.desk import GatewayReport, SupportDesk, read_summary
from gateway.relay.directory import MemoryGatewayDirectory
from gateway.relay.gateways import GatewayTunnels
from gateway.tunnel.connection import IStreamHandler
from gateway.tunnel.stream import TunnelStream
from gateway.wire import SESSIONS_PATH, Refusal
from tests.helpers.tunnel import Linked, linked_tunnels, settle_all

ASKED = "2030-01-02T10:00:00+00:00"
EXPIRES = "2030-01-02T10:05:00+00:00"


def dummy_request(path: bytes, method: bytes = b"GET") -> DummyRequest:
    """A request for `ControlAPI` (``DummyRequest`` has no ``path`` of its own)."""
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.path = path  # type: ignore[attr-defined]
    request.method = method
    return request


def summary(gateway_id: str, mode: str = "attended", **extra: Any) -> dict[str, Any]:
    """A `wire.SessionsSummary` as a gateway sends it: one request waiting, one session live."""
    return {
        "id": gateway_id,
        "access_mode": mode,
        "requests": [
            {
                "id": "r-4f2a9c",
                "engineer": "alice",
                "reason": "ticket 4711: recalibrate camera",
                "targets": [],
                "asked": ASKED,
                "expires": EXPIRES,
            }
        ],
        "sessions": [
            {
                "id": "s-81be07",
                "engineer": "bob",
                "reason": "firmware update",
                "targets": ["web"],
                "permission": "view",
                "started": ASKED,
                "expires": "2030-01-02T11:00:00+00:00",
                "approved_by": "operator (uid 1000)",
                "connections": ["c-0000000a", "c-0000000b"],
                "implicit": False,
            }
        ],
        **extra,
    }


@implementer(IStreamHandler)
@define
class FakeGateway:
    """Answers the desk's question with ``body``, refuses it, or (``body`` None) stays silent."""

    body: bytes | None = None
    refuse: bool = False
    asked: list[TunnelStream] = field(factory=list)

    def stream_requested(self, stream: TunnelStream) -> None:
        self.asked.append(stream)
        if self.refuse:
            stream.refuse(Refusal.BAD_REQUEST, f"unknown control path {SESSIONS_PATH}")
        elif self.body is not None:
            stream.respond(200, [(b"content-type", b"application/json")])
            stream.write(self.body)
            stream.loseWriteConnection()


class DeskTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_900_000_000)
        self.tunnels = GatewayTunnels()
        self.directory = MemoryGatewayDirectory(self.clock)
        self.desk = SupportDesk(self.tunnels, self.directory, self.clock)
        self.links: list[Linked] = []

    def connect(self, gateway_id: str, gateway: FakeGateway, peer: str) -> Linked:
        link = linked_tunnels(gateway, self.clock)
        self.addCleanup(link.close)
        self.tunnels.add(gateway_id, link.client, peer=peer, now=self.clock.seconds())
        self.successResultOf(self.directory.gateway_connected(gateway_id))
        self.links.append(link)
        return link

    def desk_timers(self) -> list[object]:
        """The desk's own delayed calls (the tunnels' heartbeats have theirs)."""
        calls: list[Any] = list(self.clock.getDelayedCalls())
        return [c for c in calls if c.func.__qualname__ == "_Question.finish"]

    def answers(self, gateway_id: str, **extra: Any) -> FakeGateway:
        return FakeGateway(json.dumps(summary(gateway_id, **extra)).encode())

    def ask(self) -> list[GatewayReport]:
        asked = self.desk.gateways()
        settle_all(*self.links)
        return self.successResultOf(asked)

    def test_two_gateways_are_each_listed_with_mode_requests_and_sessions(self) -> None:
        self.connect("plant7-line2", self.answers("plant7-line2"), "198.51.100.7:40000")
        self.clock.advance(60)
        self.connect("plant3", self.answers("plant3", mode="unattended"), "203.0.113.9:5555")
        first, second = self.ask()
        self.assertEqual((first.id, second.id), ("plant3", "plant7-line2"))  # by id
        self.assertEqual((first.mode, second.mode), ("unattended", "attended"))
        self.assertEqual(second.address, "198.51.100.7:40000")
        self.assertEqual(second.connected_since, "2030-03-17T17:46:40+00:00")
        self.assertEqual(first.connected_since, "2030-03-17T17:47:40+00:00")
        self.assertIsNone(second.sessions_unknown)
        assert second.requests is not None and second.sessions is not None
        [request] = second.requests
        self.assertEqual(
            (request.id, request.engineer, request.reason, request.asked, request.expires),
            ("r-4f2a9c", "alice", "ticket 4711: recalibrate camera", ASKED, EXPIRES),
        )
        [session] = second.sessions
        self.assertEqual(
            (session.engineer, session.targets, session.permission, session.connections),
            ("bob", ["web"], "view", ["c-0000000a", "c-0000000b"]),
        )
        self.assertEqual(session.expires, "2030-01-02T11:00:00+00:00")
        self.assertEqual(self.desk_timers(), [])  # the timeouts were cancelled

    def test_the_question_is_a_get_of_the_sessions_path_with_no_body(self) -> None:
        gateway = self.answers("gw-1")
        self.connect("gw-1", gateway, "127.0.0.1:1")
        self.ask()
        [stream] = gateway.asked
        assert stream.request is not None
        self.assertEqual(
            (stream.request.method, stream.request.path, stream.request.authority),
            ("GET", SESSIONS_PATH, "gw-1"),
        )
        self.assertTrue(stream.remote_closed)  # END_STREAM with the headers

    def test_a_silent_gateway_is_unknown_after_the_timeout_and_holds_no_one_else_up(
        self,
    ) -> None:
        silent = FakeGateway(body=None)
        self.connect("slow", silent, "127.0.0.1:1")
        self.connect("quick", self.answers("quick"), "127.0.0.1:2")
        asked = self.desk.gateways()
        settle_all(*self.links)
        self.assertNoResult(asked)
        self.clock.advance(1.9)
        settle_all(*self.links)
        self.assertNoResult(asked)
        self.clock.advance(0.1)
        settle_all(*self.links)
        quick, slow = self.successResultOf(asked)
        self.assertEqual(quick.mode, "attended")
        self.assertEqual(slow.sessions_unknown, "no answer within 2 s")
        self.assertEqual((slow.mode, slow.requests, slow.sessions), (None, None, None))
        self.assertEqual(slow.address, "127.0.0.1:1")
        self.assertIsNotNone(slow.connected_since)
        self.assertTrue(silent.asked[0].finished)  # the question was withdrawn (reset)
        self.assertEqual(self.desk_timers(), [])

    def test_a_gateway_that_refuses_is_listed_with_its_reason(self) -> None:
        self.connect("old", FakeGateway(refuse=True), "127.0.0.1:1")
        [report] = self.ask()
        self.assertEqual(
            report.sessions_unknown,
            "the gateway refused the question (unknown control path /v1/sessions)",
        )
        self.assertEqual(self.desk_timers(), [])

    def test_an_answer_that_is_no_summary_is_unknown(self) -> None:
        cases = {
            b"<html>": "its answer is not JSON",
            b"[1, 2]": "its answer is not a sessions summary",
            json.dumps(summary("someone-else")).encode(): "it answered as gateway 'someone-else'",
            json.dumps({"id": "gw", "access_mode": 3}).encode(): (
                "its answer is not a sessions summary (access_mode, requests, sessions)"
            ),
        }
        for body, why in cases.items():
            self.assertEqual(read_summary(body, "gw"), why, body)

    def test_an_answer_over_the_limit_is_cut_off(self) -> None:
        desk = SupportDesk(self.tunnels, self.directory, self.clock, max_answer=1000)
        big = json.dumps(summary("big", padding="x" * 5000)).encode()
        gateway = FakeGateway(big)
        self.connect("big", gateway, "127.0.0.1:1")
        asked = desk.gateways()
        settle_all(*self.links)
        [report] = self.successResultOf(asked)
        self.assertEqual(report.sessions_unknown, "its answer is over 1000 bytes")
        self.assertEqual(self.desk_timers(), [])

    def test_reported_fields_are_checked_and_bounded(self) -> None:
        data = summary("gw")
        data["requests"][0].update(
            {"reason": "r" * 5000, "targets": ["web", 7, None], "asked": "yesterday", "extra": 1}
        )
        data["sessions"][0]["expires"] = None
        data["sessions"].append("not a session")
        answer = read_summary(json.dumps(data).encode(), "gw")
        assert not isinstance(answer, str)
        [request] = answer.requests
        self.assertEqual(len(request.reason), 1000)
        self.assertEqual((request.targets, request.asked), (["web"], None))
        [session] = answer.sessions  # the string was dropped
        self.assertIsNone(session.expires)

    def test_a_closing_tunnel_is_unknown_at_once(self) -> None:
        link = self.connect("leaving", self.answers("leaving"), "127.0.0.1:1")
        link.client.draining = True
        [report] = self.ask()
        assert report.sessions_unknown is not None
        self.assertIn("its tunnel is closing", report.sessions_unknown)

    def test_no_gateway_no_reports(self) -> None:
        self.assertEqual(self.ask(), [])

    def test_stopping_answers_every_open_question_and_leaves_no_timer(self) -> None:
        self.connect("slow", FakeGateway(body=None), "127.0.0.1:1")
        asked = self.desk.gateways()
        settle_all(*self.links)
        self.desk.stop()
        [report] = self.successResultOf(asked)
        self.assertEqual(report.sessions_unknown, "the relay is stopping")
        self.assertEqual(self.desk_timers(), [])


class ControlAPITests(SynchronousTestCase):
    """``GET /api/gateways`` on the relay's control socket."""

    def setUp(self) -> None:
        self.clock = Clock()
        tunnels = GatewayTunnels()
        directory = MemoryGatewayDirectory(self.clock)
        link = linked_tunnels(
            FakeGateway(json.dumps(summary("gw-1")).encode()),
            self.clock,
        )
        self.addCleanup(link.close)
        self.link = link
        tunnels.add("gw-1", link.client, peer="127.0.0.1:9")
        self.api = ControlAPI(SupportDesk(tunnels, directory, self.clock))

    def get(self, path: bytes, method: bytes = b"GET") -> DummyRequest:
        request = dummy_request(path, method)
        rendered = self.api.render(cast(Request, request))
        if rendered != NOT_DONE_YET:
            assert isinstance(rendered, bytes)
            request.write(rendered)
            request.finish()
        self.link.settle()
        return request

    def test_it_lists_the_gateways_as_json(self) -> None:
        request = self.get(b"/api/gateways")
        self.assertEqual(request.finished, 1)
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"]
        )
        body = json.loads(b"".join(request.written))
        self.assertEqual(body["answer_timeout"], 2.0)
        [gateway] = body["gateways"]
        self.assertEqual(
            (gateway["id"], gateway["address"], gateway["mode"]),
            ("gw-1", "127.0.0.1:9", "attended"),
        )
        self.assertEqual(gateway["requests"][0]["engineer"], "alice")
        self.assertIsNone(gateway["sessions_unknown"])

    def test_other_paths_and_methods_are_refused_in_json(self) -> None:
        for path, method, status in [
            (b"/api/other", b"GET", 404),
            (b"/api/gateways", b"POST", 405),
        ]:
            request = self.get(path, method)
            self.assertEqual(request.responseCode, status, path)
            self.assertIn("reason", json.loads(b"".join(request.written)))

    def test_a_command_that_gave_up_gets_nothing_written(self) -> None:
        request = dummy_request(b"/api/gateways")
        self.api.render(cast(Request, request))
        request.processingFailed(Exception("gone"))  # the client went away before the answer
        written = list(request.written)
        self.link.settle()
        self.assertEqual(request.written, written)


class ReadableViewTests(SynchronousTestCase):
    """What ``gateway relay sessions`` prints from the relay's answer (`gateway.cli.desk`)."""

    NOW = datetime.fromisoformat("2030-01-02T10:03:00+00:00").timestamp()

    def report(self, gateway_id: str, **changes: Any) -> dict[str, Any]:
        answer = read_summary(json.dumps(summary(gateway_id)).encode(), gateway_id)
        assert not isinstance(answer, str)
        report = GatewayReport(
            id=gateway_id,
            address="198.51.100.7:40000",
            connected_since="2030-01-02T09:03:00+00:00",
            streams=3,
            mode=answer.mode,
            requests=answer.requests,
            sessions=answer.sessions,
        )
        return {**attrs.asdict(report), **changes}

    def test_one_block_per_gateway_with_requests_and_sessions(self) -> None:
        unknown = {"mode": None, "requests": None, "sessions": None}
        lines = render(
            {
                "gateways": [
                    self.report("plant7"),
                    self.report("plant9", sessions_unknown="no answer within 2 s", **unknown),
                ]
            },
            self.NOW,
        )
        text = "\n".join(lines)
        self.assertEqual(lines[0], "2 gateways connected to this relay")
        self.assertRegex(
            lines[2],
            r"^plant7  connected since .+ \(1 h ago\) from 198\.51\.100\.7:40000, 3 streams",
        )
        self.assertTrue(lines[3].startswith("  access: attended"))
        self.assertIn("waiting for the plant: 1 request", text)
        [request] = [line for line in lines if line.startswith("    r-4f2a9c")]
        self.assertIn("alice", request)
        self.assertIn("3 min ", request)  # waited
        self.assertIn("in 2 min", request)  # denied unless answered
        self.assertIn("ticket 4711: recalibrate camera", request)
        [session] = [line for line in lines if line.startswith("    s-81be07")]
        for shown in ("bob", "web", "view", "(in 57 min)", " 2 "):
            self.assertIn(shown, session)
        self.assertEqual(lines[-1], "  sessions unknown: no answer within 2 s")
        self.assertTrue(lines[-2].startswith("plant9  connected since "))

    def test_a_reported_text_cannot_steer_the_terminal(self) -> None:
        report = self.report("plant7")
        report["requests"][0]["reason"] = "fix\x1b[2J\x9b31m\u202egnp"
        text = "\n".join(render({"gateways": [report]}, self.NOW))
        self.assertIn("fix\\x1b[2J\\x9b31m\\u202egnp", text)
        self.assertNotIn("\x1b", text)

    def test_no_gateway_is_said_in_words(self) -> None:
        self.assertEqual(
            render({"gateways": []}, self.NOW), ["no gateways are connected to this relay"]
        )
