"""The status JSON contract (BRIEF section 3) from the state model, policy and connections."""

from __future__ import annotations

import json

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway import __version__
from gateway.config import AccessMode, Address, Target, TargetKind
from gateway.edge.access import AccessPolicy
from gateway.edge.consent import Permission, Session
from gateway.edge.events import ConnectionRecord, FanOut
from gateway.edge.link import TunnelStatus
from gateway.edge.status import IStatusView, LiveConnections, StatusView, session_report
from gateway.splice import SpliceEnd

RELAY = "relay.example:443"
TARGETS = (Target("web", Address("192.168.10.2", 80)), Target("hmi", Address("192.168.10.3", 80)))


def record(id: str, engineer: str, started: float) -> ConnectionRecord:
    return ConnectionRecord(
        id=id,
        target="web",
        address="192.168.10.2:80",
        engineer=engineer,
        session=None,
        started=started,
        to_target=SpliceEnd(),
        from_target=SpliceEnd(),
    )


class StatusViewTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.tunnel = TunnelStatus(RELAY, self.clock)
        self.policy = AccessPolicy(TARGETS, AccessMode.UNATTENDED)
        self.live = LiveConnections()
        self.events = FanOut(self.tunnel, self.live)
        self.view = StatusView("plant7-gw", self.tunnel, self.policy, self.live)

    def test_it_is_a_status_view(self) -> None:
        self.assertTrue(verifyObject(IStatusView, self.view))

    def test_a_fresh_gateway_reports_every_key_of_the_contract(self) -> None:
        self.assertEqual(
            self.view.report().to_json(),
            {
                "id": "plant7-gw",
                "version": __version__,
                "tunnel": {
                    "state": "connecting",
                    "since": "2023-11-14T22:13:20+00:00",
                    "relay": RELAY,
                    "rtt_ms": None,
                    "last_error": None,
                    "connects": 0,
                },
                "access": {
                    "mode": "unattended",
                    "targets": ["hmi", "web"],
                    "requests": [],
                    "code_entry_locked_until": None,
                },
                "sessions": [],
                "connections": [],
                "checks": [],
                "recent_events": [],
            },
        )

    def test_the_tunnel_part_follows_the_state_machine(self) -> None:
        self.events.tunnel_failed("the relay refused the connection")
        self.assertEqual(self.view.report().tunnel.last_error, "the relay refused the connection")
        self.clock.advance(10)
        self.events.tunnel_up("connected")
        self.events.tunnel_rtt(0.012345)
        tunnel = self.view.report().to_json()["tunnel"]
        self.assertEqual(tunnel["state"], "up")
        self.assertEqual(tunnel["since"], "2023-11-14T22:13:30+00:00")
        self.assertEqual(tunnel["rtt_ms"], 12.35)
        self.assertEqual((tunnel["last_error"], tunnel["connects"]), (None, 1))

    def test_the_access_part_follows_the_mode(self) -> None:
        self.policy.set_mode(AccessMode.ATTENDED)
        self.assertEqual(self.view.report().access.mode, "attended")

    def test_live_connections_are_listed_with_their_bytes_so_far(self) -> None:
        conn = record("r-7", "alice", 1_700_000_005)
        self.events.stream_opened(conn)
        conn.to_target.dataReceived(b"x" * 10)  # not spliced yet: kept early, and counted
        conn.from_target.dataReceived(b"y" * 300)
        self.assertEqual(
            self.view.report().to_json()["connections"],
            [
                {
                    "id": "r-7",
                    "session": None,
                    "target": "web",
                    "engineer": "alice",
                    "started": "2023-11-14T22:13:25+00:00",
                    "bytes_to_target": 10,
                    "bytes_from_target": 300,
                }
            ],
        )
        self.events.stream_closed(conn, 10, 300, "closed")
        self.assertEqual(self.view.report().connections, [])

    def test_the_report_is_json(self) -> None:
        self.events.stream_opened(record("g-1", "bob", 1_700_000_001))
        text = json.dumps(self.view.report().to_json())
        self.assertEqual(json.loads(text)["connections"][0]["id"], "g-1")


class SessionRequestsTests(SynchronousTestCase):
    def test_a_session_lists_its_permission_and_recent_requests(self) -> None:
        session = Session(
            id="s-1",
            engineer="erin",
            reason="ticket",
            targets=("web",),
            permission=Permission.VIEW,
            started=0.0,
            expires=None,
            approved_by="alice",
        )
        recent = [{"method": "POST", "path": "/upload", "result": "refused", "status": 403}]
        report = session_report(session, {"s-1": recent}.get)  # type: ignore[arg-type]
        self.assertEqual(report.permission, "view")
        self.assertEqual(report.recent_requests, recent)
        self.assertEqual(session_report(session).recent_requests, [])

    def test_a_session_says_what_it_may_do_on_each_target(self) -> None:
        targets = (
            Target("plc", Address("10.0.0.1", 502)),
            Target("hmi", Address("10.0.0.2", 80), kind=TargetKind.HTTP),
            Target("live", Address("10.0.0.3", 80), kind=TargetKind.HTTP, view_websocket=True),
        )
        policy = AccessPolicy(targets, AccessMode.ATTENDED)
        session = Session(
            id="s-1",
            engineer="erin",
            reason="ticket",
            targets=("hmi", "live", "plc"),
            permission=Permission.VIEW,
            started=0.0,
            expires=None,
            approved_by="alice",
        )
        report = session_report(session, policy=policy)
        self.assertEqual(
            report.target_access, {"hmi": "view", "live": "view+websocket", "plc": "none"}
        )
        full = session_report(attrs.evolve(session, permission=Permission.FULL), policy=policy)
        self.assertEqual(set(full.target_access.values()), {"full"})
