# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""``gateway connect --group``: the group's members learnt from the relay, each on its own port.

The client runs against the in-memory relay of `tests.unit.test_connect`, whose far end here also
answers ``GET GATEWAY_INFO_PATH`` as the relay does (`gateway.wire.GatewayInfo`).
"""

from __future__ import annotations

import errno
from pathlib import Path

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cli.connect import DEFAULT_BIND as CLI_DEFAULT_BIND
from gateway.config import Address
from gateway.connect import ConnectOptions, LocalConnection
from gateway.connect.group import GroupProblem, listen_problem, read_members
from gateway.connect.options import DEFAULT_BIND
from gateway.tunnel.stream import TunnelStream
from gateway.wire import (
    GATEWAY_INFO_PATH,
    GatewayInfo,
    Refusal,
    SessionEvent,
    SessionEventKind,
)
from tests.helpers.processes import free_port
from tests.unit.test_cli import CommandLineTestCase
from tests.unit.test_connect import RELAY, BrowserTransport, EngineerClientTestCase, FakeRelay

GROUP = ConnectOptions(
    relay=RELAY,
    ca=Path("never-read-ca.pem"),
    token="rsg_secret",
    gateway="plant7",
    target="",
    listen=Address("127.0.0.1", 8080),
    group="pickit",
)
MEMBERS = {"8080": "ui", "9999": "ws"}


class OptionsTests(SynchronousTestCase):
    def test_options_forward_either_one_target_or_one_group(self) -> None:
        with self.assertRaises(ValueError):
            attrs.evolve(GROUP, target="web")
        with self.assertRaises(ValueError):
            attrs.evolve(GROUP, group=None)

    def test_a_member_listens_on_its_own_port_at_the_bind_address(self) -> None:
        self.assertEqual(GROUP.bind, "127.0.0.2")
        self.assertEqual(GROUP.member_address(9999), Address("127.0.0.2", 9999))
        self.assertEqual(attrs.evolve(GROUP, bind="127.0.0.5").member_address(80).host, "127.0.0.5")
        self.assertEqual(CLI_DEFAULT_BIND, DEFAULT_BIND)


def info(**fields: object) -> bytes:
    return GatewayInfo(**fields).to_json()  # type: ignore[arg-type]


class ReadMembersTests(SynchronousTestCase):
    def test_the_members_by_port_the_groups_page_first(self) -> None:
        body = info(
            gateway="plant7",
            online=True,
            access_mode="attended",
            targets=[],
            groups={"pickit": MEMBERS},
        )
        members = read_members(body, "plant7", "pickit")
        self.assertEqual(members, {8080: "ui", 9999: "ws"})
        self.assertEqual(next(iter(members)), 8080)

    def test_an_unknown_group_names_the_ones_there_are(self) -> None:
        body = info(gateway="plant7", online=True, groups={"pickit": MEMBERS, "cam": {"81": "c"}})
        with self.assertRaises(GroupProblem) as raised:
            read_members(body, "plant7", "pikcit")
        self.assertEqual(
            str(raised.exception),
            "gateway 'plant7' has no target group 'pikcit' (its groups: cam, pickit)",
        )
        self.assertFalse(raised.exception.retry)

    def test_an_offline_gateway_or_one_that_did_not_answer_is_asked_again(self) -> None:
        for body, words in (
            (info(gateway="plant7", online=False), "is offline"),
            (info(gateway="plant7", online=True, problem="no answer in time"), "no answer in time"),
        ):
            with self.subTest(words=words), self.assertRaises(GroupProblem) as raised:
                read_members(body, "plant7", "pickit")
            self.assertIn(words, str(raised.exception))
            self.assertTrue(raised.exception.retry)

    def test_a_relay_too_old_to_report_groups_is_said_so(self) -> None:
        with self.assertRaises(GroupProblem) as raised:
            read_members(b'{"gateway": "plant7", "online": true}', "plant7", "pickit")
        self.assertIn("as new as this client", str(raised.exception))
        self.assertFalse(raised.exception.retry)

    def test_a_port_below_1024_without_privilege_is_one_line_naming_it(self) -> None:
        line = listen_problem(
            "127.0.0.2:80", "ui", "pickit", OSError(errno.EACCES, "Permission denied")
        )
        self.assertTrue(
            line.startswith(
                "cannot listen on 127.0.0.2:80 for 'ui' of group 'pickit': Permission denied; "
            ),
            line,
        )
        self.assertIn("below 1024 needs privilege", line)
        self.assertNotIn("\n", line)


class GroupRelay(FakeRelay):
    """The fake relay, answering the gateway info with a group."""

    def __init__(self) -> None:
        super().__init__()
        self.infos: list[bytes] = []
        self.info_refusal: tuple[Refusal, str] | None = None

    def stream_requested(self, stream: TunnelStream) -> None:
        assert stream.request is not None
        if stream.request.path == GATEWAY_INFO_PATH:
            self.streams.append(stream)
            if self.info_refusal is not None:
                stream.refuse(*self.info_refusal)
                return
            stream.respond(200, [(b"content-type", b"application/json")])
            answer = (
                self.infos.pop(0)
                if self.infos
                else info(
                    gateway="plant7",
                    online=True,
                    access_mode="attended",
                    targets=["ui", "ws"],
                    groups={"pickit": MEMBERS},
                )
            )
            stream.write(answer)
            stream.loseWriteConnection()
            return
        super().stream_requested(stream)


class RefusingReactor(MemoryReactorClock):
    """Refuses to listen on one port, as a kernel does on 80 for an unprivileged user."""

    refused_port = 9999

    def listenTCP(self, port, factory, backlog=50, interface=""):  # type: ignore[no-untyped-def]
        if port == self.refused_port:
            raise CannotListenError(interface, port, OSError(errno.EACCES, "Permission denied"))
        return super().listenTCP(port, factory, backlog, interface)


class GroupClientTests(EngineerClientTestCase):
    options = attrs.evolve(GROUP, reason="ticket 4711: camera drifts")

    relay: GroupRelay

    def setUp(self) -> None:
        super().setUp()
        self.relay = GroupRelay()
        self.endpoint.handler = self.relay
        self.relay.session_default = "hold"

    def member_browser(self, port: int) -> tuple[LocalConnection, BrowserTransport]:
        [(_, factory, _, interface)] = [s for s in self.reactor.tcpServers if s[0] == port]
        self.assertEqual(interface, "127.0.0.2")
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 50000))
        assert isinstance(protocol, LocalConnection)
        transport = BrowserTransport()
        protocol.makeConnection(transport)
        self.endpoint.settle()
        return protocol, transport

    def test_each_member_listens_on_its_own_port_and_one_session_asks_for_all(self) -> None:
        self.start()
        self.assertEqual(
            sorted((port, interface) for port, _, _, interface in self.reactor.tcpServers),
            [(8080, "127.0.0.2"), (9999, "127.0.0.2")],
        )
        self.assertEqual(
            self.reports[:2],
            [
                f"forwarding http://127.0.0.2:{port}/ -> target {member!r} of group 'pickit' on "
                "gateway 'plant7'"
                for port, member in ((8080, "ui"), (9999, "ws"))
            ],
        )
        [(_, body, _)] = self.relay.asks
        self.assertEqual(body["targets"], ["ui", "ws"])
        self.relay.send(
            SessionEvent(
                SessionEventKind.APPROVED, session="s-9", targets=["ui", "ws"], permission="full"
            )
        )
        self.endpoint.settle()
        self.assertIn("open http://127.0.0.2:8080/", self.reports[-1])
        self.assertNotIn("note", self.reports[-1])
        # A connection on 9999 goes to the member on 9999, in the group's one session.
        self.member_browser(9999)
        [connect] = self.relay.connects
        assert connect.request is not None
        self.assertEqual(connect.request.authority, "ws")
        self.assertEqual(connect.request.headers["session"], "s-9")
        self.member_browser(8080)
        self.assertEqual(
            [s.request.authority for s in self.relay.connects if s.request], ["ws", "ui"]
        )

    def test_an_unknown_group_ends_the_client_with_one_line(self) -> None:
        self.client = self.engineer_client(self.endpoint, attrs.evolve(self.options, group="nope"))
        self.start()
        self.assertEqual(self.exit_code(), 1)
        self.assertEqual(
            self.reports, ["gateway 'plant7' has no target group 'nope' (its groups: pickit)"]
        )
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(self.relay.asks, [])

    def test_a_refused_question_ends_the_client_with_the_relays_words(self) -> None:
        self.relay.info_refusal = (Refusal.BAD_TOKEN, "the engineer token was not accepted")
        self.start()
        self.assertEqual(self.exit_code(), 1)
        self.assertEqual(self.reports, ["the engineer token was not accepted"])

    def test_an_offline_gateway_is_asked_again_until_it_is_back(self) -> None:
        self.relay.infos = [info(gateway="plant7", online=False)] * 2
        self.start()
        self.assertEqual(len(self.reports), 1)
        self.assertIn("is offline", self.reports[0])
        self.advance(5)
        self.assertEqual(len(self.reports), 1)  # told once
        self.assertEqual(self.reactor.tcpServers, [])
        self.advance(5)
        self.assertEqual(len(self.reactor.tcpServers), 2)
        self.assertEqual(len(self.relay.asks), 1)

    def test_a_port_that_cannot_be_bound_ends_the_client_naming_it(self) -> None:
        self.reactor = RefusingReactor()
        self.endpoint.clock = self.reactor
        self.client = self.engineer_client(self.endpoint)
        self.start()
        self.assertEqual(self.exit_code(), 1)
        [line] = self.reports
        self.assertTrue(
            line.startswith(
                "cannot listen on 127.0.0.2:9999 for 'ws' of group 'pickit': Permission denied"
            ),
            line,
        )
        self.assertEqual(self.relay.asks, [])


class GroupFlagTests(CommandLineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ca = str(self.make_pki().ca_cert)

    def connect(self, *extra: str) -> list[str]:
        return [
            "connect",
            "--relay",
            f"127.0.0.1:{free_port()}",
            "--ca",
            self.ca,
            "--gateway",
            "plant7",
            *extra,
        ]

    def test_group_and_target_or_listen_together_exit_2(self) -> None:
        env = {"GATEWAY_TOKEN": "x"}
        result = self.gateway(*self.connect("--group", "pickit", "--target", "web"), env=env)
        self.assertUsageError(result, "--target", "not allowed with argument --group")
        result = self.gateway(
            *self.connect("--group", "pickit", "--listen", "127.0.0.1:1"), env=env
        )
        self.assertOneLineError(result, "--listen is for --target")
        result = self.gateway(*self.connect("--target", "web", "--bind", "127.0.0.2"), env=env)
        self.assertOneLineError(result, "--bind is for --group")
        result = self.gateway(*self.connect("--group", "pickit", "--bind", "127.0.0.2:80"), env=env)
        self.assertUsageError(result, "--bind", "not an IP address")
        result = self.gateway(*self.connect(), env=env)
        self.assertUsageError(result, "one of the arguments --target --group is required")
