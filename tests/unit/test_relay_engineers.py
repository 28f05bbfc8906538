"""The relay's engineer streams: tokens, gateway lookup, and relaying the gateway's answer.

Real tunnel connections joined in memory on both sides of the relay: the engineer's (`gateway
connect`'s role) and the gateway's.  The path's steps are the memory implementations the relay
runs with, except the credential store and, where a test says so, a step replaced by a fake.
"""

from __future__ import annotations

import json

import attrs
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.relay.authorisation import EveryAuthenticatedEngineer, IEngineerAuthorisation
from gateway.relay.credentials import Engineer, ICredentialStore
from gateway.relay.dialer import IGatewayDialer, LocalDialer
from gateway.relay.directory import GatewayLocation, IGatewayDirectory, MemoryGatewayDirectory
from gateway.relay.edgeinfo import INFO_TIMEOUT, ask_edge_info
from gateway.relay.engineers import EngineerStreams
from gateway.relay.gateways import GatewayTunnels
from gateway.relay.metrics import RelayMetrics
from gateway.relay.path import EngineerPath
from gateway.relay.refusals import Refused
from gateway.tunnel.connection import IStreamHandler
from gateway.tunnel.stream import TunnelStream
from gateway.wire import (
    AUTHORIZATION_HEADER,
    CONNECTION_ID_HEADER,
    ENGINEER_HEADER,
    GATEWAY_HEADER,
    GATEWAY_INFO_PATH,
    INFO_PATH,
    GroupedEdgeInfo,
    Refusal,
    StreamRefused,
)
from tests.helpers.tunnel import AcceptAll, Recorder, linked_tunnels, settle_all


@implementer(ICredentialStore)
class OneToken:
    def authenticate(self, token: str) -> Engineer | None:
        return Engineer("alice") if token == "good" else None


@implementer(IEngineerAuthorisation)
class OnlyGateway:
    """Authorises every engineer for one gateway only."""

    def __init__(self, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.asked: list[tuple[Engineer, str]] = []

    def authorise(self, engineer: Engineer, gateway_id: str) -> Deferred[None]:
        self.asked.append((engineer, gateway_id))
        if gateway_id == self.gateway_id:
            return succeed(None)
        return fail(Refused(Refusal.TARGET_NOT_ALLOWED, f"not for {gateway_id!r}"))


@implementer(IGatewayDirectory)
class LaterDirectory:
    """A directory that answers when the test says so, as a shared store would."""

    def __init__(self, inner: IGatewayDirectory) -> None:
        self.inner = inner
        self.waiting: list[tuple[str, Deferred[GatewayLocation]]] = []

    def locate(self, gateway_id: str) -> Deferred[GatewayLocation]:
        d: Deferred[GatewayLocation] = Deferred()
        self.waiting.append((gateway_id, d))
        return d

    def answer_all(self) -> None:
        waiting, self.waiting = self.waiting, []
        for gateway_id, d in waiting:
            self.inner.locate(gateway_id).chainDeferred(d)

    def gateway_connected(self, gateway_id: str) -> Deferred[None]:
        return self.inner.gateway_connected(gateway_id)

    def gateway_disconnected(self, gateway_id: str) -> Deferred[None]:
        return self.inner.gateway_disconnected(gateway_id)


@implementer(IGatewayDialer)
class CountingDialer:
    """The local dialer, counting its dials."""

    def __init__(self, inner: IGatewayDialer) -> None:
        self.inner = inner
        self.dials: list[tuple[str, str, str, str]] = []

    def dial(
        self,
        gateway_id: str,
        engineer: Engineer,
        target: str,
        connection_id: str,
        session: str | None = None,
    ) -> TunnelStream:
        self.dials.append((gateway_id, engineer.name, target, connection_id))
        return self.inner.dial(gateway_id, engineer, target, connection_id, session)

    def ask_session(self, gateway_id: str, engineer: Engineer, connection_id: str) -> TunnelStream:
        return self.inner.ask_session(gateway_id, engineer, connection_id)


@implementer(IStreamHandler)
class DialledWithin:
    """Notes, when the handler returns, how many dials it made: the path took no reactor turn."""

    def __init__(self, inner: IStreamHandler, dialer: CountingDialer) -> None:
        self.inner, self.dialer = inner, dialer
        self.dials_on_return: list[int] = []

    def stream_requested(self, stream: TunnelStream) -> None:
        self.inner.stream_requested(stream)
        self.dials_on_return.append(len(self.dialer.dials))


class BrokenDirectory(MemoryGatewayDirectory):
    def locate(self, gateway_id: str) -> Deferred[GatewayLocation]:
        return fail(ConnectionRefusedError("the shared store is down"))


class RelayWorld:
    """An engineer link and a gateway link on one clock, with the relay's engine between."""

    def __init__(
        self,
        case: SynchronousTestCase,
        gateway_handler: AcceptAll,
        *,
        authorisation: IEngineerAuthorisation | None = None,
        directory: IGatewayDirectory | None = None,
        edge_info: bool = False,
    ) -> None:
        self.clock = Clock()
        self.directory = directory or MemoryGatewayDirectory(self.clock)
        self.tunnels = GatewayTunnels()
        self.metrics = RelayMetrics(CollectorRegistry())
        self.dialer = CountingDialer(LocalDialer(self.tunnels))
        ids = iter(f"c-{n:08x}" for n in range(1, 1000))
        self.engineers = EngineerStreams(
            path=EngineerPath(
                credentials=OneToken(),
                authorisation=authorisation or EveryAuthenticatedEngineer(),
                directory=self.directory,
                metrics=self.metrics,
            ),
            dialer=self.dialer,
            metrics=self.metrics,
            clock=self.clock,
            new_id=lambda: next(ids),
            edge_info=(
                (lambda gw: ask_edge_info(self.tunnels, gw, self.clock)) if edge_info else None
            ),
        )
        self.handler = DialledWithin(self.engineers, self.dialer)
        self.eng = linked_tunnels(self.handler, self.clock)
        self.gw = linked_tunnels(gateway_handler, self.clock)
        self.tunnels.add("gw-1", self.gw.client)
        self.directory.gateway_connected("gw-1")
        case.addCleanup(self.eng.close)
        case.addCleanup(self.gw.close)


def ask(
    world: RelayWorld,
    *,
    token: str = "good",
    gateway: str = "gw-1",
    target: str = "web",
    method: str = "CONNECT",
    path: str | None = None,
) -> tuple[TunnelStream, Recorder]:
    stream = world.eng.client.open_stream(
        target,
        method=method,
        path=path,
        headers=[
            (AUTHORIZATION_HEADER, b"Bearer " + token.encode()),
            (GATEWAY_HEADER, gateway.encode()),
        ],
    )
    rec = Recorder()
    stream.attach(rec)
    if method == "CONNECT":
        stream.write(b"hello processor")
    settle_all(world.eng, world.gw)
    return stream, rec


def refusal(case: SynchronousTestCase, stream: TunnelStream) -> StreamRefused:
    refused = case.failureResultOf(stream.response, StreamRefused).value
    assert isinstance(refused, StreamRefused)
    return refused


class EngineerStreamTests(SynchronousTestCase):
    def test_good_token_reaches_the_gateway_and_bytes_flow(self) -> None:
        gw_handler = AcceptAll()
        world = RelayWorld(self, gw_handler)
        stream, rec = ask(world)
        self.assertEqual(self.successResultOf(stream.response).status, 200)
        asked = gw_handler.streams[0].request
        assert asked is not None
        self.assertEqual((asked.authority, asked.headers["engineer"]), ("web", "alice"))
        self.assertEqual(gw_handler.recorders[0].received, b"hello processor")
        gw_handler.streams[0].write(b"hello engineer")
        settle_all(world.eng, world.gw)
        self.assertEqual(rec.received, b"hello engineer")
        self.assertEqual(world.metrics.streams_active._value.get(), 1)

    def test_a_half_closed_stream_gone_quiet_is_ended_after_the_relays_backstop(self) -> None:
        """The engineer sent its FIN and the gateway side neither answers nor closes."""
        gw_handler = AcceptAll()
        world = RelayWorld(self, gw_handler)
        stream, rec = ask(world)
        stream.loseWriteConnection()
        settle_all(world.eng, world.gw)
        self.assertTrue(gw_handler.recorders[0].read_closed, "the FIN did not reach the gateway")

        def wait(seconds: float) -> None:
            for _ in range(int(seconds)):  # heartbeats keep both tunnels up meanwhile
                world.clock.advance(1)
                settle_all(world.eng, world.gw)

        wait(world.engineers.half_close_timeout - 1)
        self.assertIsNone(rec.lost)
        wait(2)
        self.assertIsNotNone(rec.lost, "the quiet half-closed stream stayed open")
        self.assertIsNotNone(gw_handler.recorders[0].lost, "the gateway's stream stayed open")

    def test_bad_token_is_refused_and_counted(self) -> None:
        gw_handler = AcceptAll()
        world = RelayWorld(self, gw_handler)
        stream, _ = ask(world, token="bad")
        refused = self.failureResultOf(stream.response, StreamRefused).value
        self.assertEqual((refused.status, refused.token), (401, "bad-token"))
        self.assertEqual(gw_handler.streams, [])
        self.assertEqual(world.metrics.bad_tokens._value.get(), 1)

    def test_unknown_gateway_is_refused(self) -> None:
        world = RelayWorld(self, AcceptAll())
        stream, _ = ask(world, gateway="nowhere")
        refused = self.failureResultOf(stream.response, StreamRefused).value
        self.assertEqual((refused.status, refused.token), (404, "unknown-gateway"))

    def test_offline_gateway_is_refused(self) -> None:
        world = RelayWorld(self, AcceptAll())
        world.gw.close()
        settle_all(world.eng)
        stream, _ = ask(world)
        refused = self.failureResultOf(stream.response, StreamRefused).value
        self.assertEqual(refused.token, "gateway-offline")

    def test_the_gateways_refusal_reaches_the_engineer_unchanged(self) -> None:
        world = RelayWorld(self, RefuseAll())
        stream, _ = ask(world, target="plc")
        refused = self.failureResultOf(stream.response, StreamRefused).value
        self.assertEqual(
            (refused.status, refused.token, refused.reason),
            (403, "target-not-allowed", "target 'plc' is not in this gateway's allowlist"),
        )


class RefuseAll(AcceptAll):
    def stream_requested(self, stream: TunnelStream) -> None:
        self.streams.append(stream)
        stream.refuse(Refusal.TARGET_NOT_ALLOWED, "target 'plc' is not in this gateway's allowlist")


class Silent(AcceptAll):
    """A gateway that records requests and never answers them."""

    def stream_requested(self, stream: TunnelStream) -> None:
        self.streams.append(stream)


class Informed(AcceptAll):
    """A gateway that answers the relay's ``GET INFO_PATH`` as a gateway with a group does."""

    def stream_requested(self, stream: TunnelStream) -> None:
        self.streams.append(stream)
        assert stream.request is not None
        if stream.request.path == INFO_PATH:
            info = GroupedEdgeInfo(
                id="gw-1",
                version="1",
                access_mode="attended",
                targets=["web", "ui", "ws"],
                connections=0,
                groups={"pickit": {"8080": "ui", "9999": "ws"}},
            )
            stream.respond(200, [])
            stream.write(json.dumps(attrs.asdict(info)).encode())
            stream.loseWriteConnection()


class EngineerPathThroughTheRelayTests(SynchronousTestCase):
    def test_the_connect_carries_the_engineer_and_a_connection_id(self) -> None:
        gw_handler = AcceptAll()
        world = RelayWorld(self, gw_handler)
        ask(world)
        asked = gw_handler.streams[0].request
        assert asked is not None
        self.assertEqual(asked.headers[ENGINEER_HEADER.decode()], "alice")
        self.assertEqual(asked.headers[CONNECTION_ID_HEADER.decode()], "c-00000001")
        self.assertEqual(world.dialer.dials, [("gw-1", "alice", "web", "c-00000001")])

    def test_each_engineer_connection_gets_its_own_id(self) -> None:
        gw_handler = AcceptAll()
        world = RelayWorld(self, gw_handler)
        ask(world)
        ask(world)
        ids = [s.request.headers["connection-id"] for s in gw_handler.streams if s.request]
        self.assertEqual(ids, ["c-00000001", "c-00000002"])

    def test_the_relay_logs_who_asks_for_what_with_the_connection_id(self) -> None:
        world = RelayWorld(self, AcceptAll())
        with capturedLogs() as events:
            ask(world)
        lines = [formatEvent(e) for e in events]
        self.assertIn("alice asks gateway gw-1 for web (connection c-00000001)", lines)

    def test_the_gateway_is_dialled_in_the_turn_the_request_arrived(self) -> None:
        world = RelayWorld(self, AcceptAll())
        ask(world)
        self.assertEqual(world.handler.dials_on_return, [1])

    def test_the_engineers_first_bytes_follow_the_request_before_the_gateway_answers(
        self,
    ) -> None:
        gw_handler = Silent()
        world = RelayWorld(self, gw_handler)
        stream, _ = ask(world)
        self.assertNoResult(stream.response)
        stream.response.addErrback(lambda _: None)  # lost when the test ends
        [upstream] = gw_handler.streams
        rec = Recorder()
        upstream.attach(rec)
        self.assertEqual(rec.received, b"hello processor")

    def test_gateway_info_says_whether_the_gateway_is_online(self) -> None:
        world = RelayWorld(self, AcceptAll())
        stream, rec = ask(world, method="GET", target="relay", path=GATEWAY_INFO_PATH)
        self.assertEqual(self.successResultOf(stream.response).status, 200)
        self.assertEqual(rec.received, b'{"gateway": "gw-1", "online": true}')
        world.tunnels.remove("gw-1", world.gw.client)
        world.directory.gateway_disconnected("gw-1")
        stream, rec = ask(world, method="GET", target="relay", path=GATEWAY_INFO_PATH)
        self.assertEqual(json.loads(rec.received), {"gateway": "gw-1", "online": False})
        self.assertEqual(world.dialer.dials, [])

    def test_gateway_info_tells_an_authorised_engineer_the_gateways_targets_and_groups(
        self,
    ) -> None:
        """``gateway connect --group`` learns the members' ports from the relay's answer, which
        asks the gateway now; the old fields are as they were."""
        world = RelayWorld(self, Informed(), edge_info=True)
        stream, rec = ask(world, method="GET", target="relay", path=GATEWAY_INFO_PATH)
        self.assertEqual(self.successResultOf(stream.response).status, 200)
        self.assertEqual(
            json.loads(rec.received),
            {
                "gateway": "gw-1",
                "online": True,
                "access_mode": "attended",
                "targets": ["web", "ui", "ws"],
                "groups": {"pickit": {"8080": "ui", "9999": "ws"}},
            },
        )
        self.assertEqual(world.dialer.dials, [])

    def test_gateway_info_of_an_offline_gateway_is_the_old_answer(self) -> None:
        world = RelayWorld(self, Informed(), edge_info=True)
        world.tunnels.remove("gw-1", world.gw.client)
        world.directory.gateway_disconnected("gw-1")
        _, rec = ask(world, method="GET", target="relay", path=GATEWAY_INFO_PATH)
        self.assertEqual(rec.received, b'{"gateway": "gw-1", "online": false}')

    def test_gateway_info_says_why_when_the_gateway_does_not_answer_in_time(self) -> None:
        world = RelayWorld(self, Silent(), edge_info=True)
        stream, rec = ask(world, method="GET", target="relay", path=GATEWAY_INFO_PATH)
        self.assertNoResult(stream.response)
        world.clock.advance(INFO_TIMEOUT)
        settle_all(world.eng, world.gw)
        self.assertEqual(
            json.loads(rec.received),
            {"gateway": "gw-1", "online": True, "problem": "no answer in time"},
        )

    def test_gateway_info_needs_a_good_token(self) -> None:
        world = RelayWorld(self, AcceptAll())
        stream, _ = ask(world, token="bad", method="GET", target="relay", path=GATEWAY_INFO_PATH)
        self.assertEqual(refusal(self, stream).token, "bad-token")

    def test_anything_but_connect_to_a_target_is_a_bad_request(self) -> None:
        world = RelayWorld(self, AcceptAll())
        stream, _ = ask(world, method="GET", target="web", path="/v1/other")
        refused = refusal(self, stream)
        self.assertEqual(
            (refused.status, refused.token, refused.reason),
            (400, "bad-request", "expected CONNECT to a target name"),
        )

    def test_the_refusal_texts_are_the_ones_engineers_see(self) -> None:
        world = RelayWorld(self, AcceptAll())
        self.assertEqual(
            refusal(self, ask(world, token="bad")[0]).reason, "the engineer token was not accepted"
        )
        self.assertEqual(
            refusal(self, ask(world, gateway="x")[0]).reason,
            "no gateway named 'x' has connected to this relay",
        )
        world.tunnels.remove("gw-1", world.gw.client)
        world.directory.gateway_disconnected("gw-1")
        self.assertEqual(
            refusal(self, ask(world)[0]).reason,
            "gateway 'gw-1' is offline (its tunnel to the relay is down)",
        )

    def test_a_gateway_that_goes_away_before_answering_is_reported(self) -> None:
        world = RelayWorld(self, Silent())
        stream, _ = ask(world)
        world.gw.close()
        settle_all(world.eng)
        refused = refusal(self, stream)
        self.assertEqual(
            (refused.token, refused.reason),
            ("gateway-offline", "gateway 'gw-1' went away before answering"),
        )

    def test_a_failed_dial_is_reported_as_offline(self) -> None:
        world = RelayWorld(self, AcceptAll())
        world.gw.client.draining = True  # e.g. the relay is shutting down
        stream, _ = ask(world)
        self.assertEqual(
            refusal(self, stream).reason,
            "gateway 'gw-1' is offline (its tunnel to the relay is down)",
        )

    def test_refusals_are_counted_by_result(self) -> None:
        world = RelayWorld(self, AcceptAll())
        refusal(self, ask(world, gateway="x")[0])
        ask(world)
        counted = world.metrics.registry.get_sample_value
        self.assertEqual(counted("relay_streams_total", {"result": "unknown-gateway"}), 1)
        self.assertEqual(counted("relay_streams_total", {"result": "opened"}), 1)

    def test_an_engineer_not_authorised_for_the_gateway_never_reaches_it(self) -> None:
        gw_handler = AcceptAll()
        authorisation = OnlyGateway("gw-2")
        world = RelayWorld(self, gw_handler, authorisation=authorisation)
        stream, _ = ask(world)
        self.assertEqual(refusal(self, stream).reason, "not for 'gw-1'")
        self.assertEqual(authorisation.asked, [(Engineer("alice"), "gw-1")])
        self.assertEqual(gw_handler.streams, [])

    def test_an_authorised_engineer_gets_through(self) -> None:
        gw_handler = AcceptAll()
        world = RelayWorld(self, gw_handler, authorisation=OnlyGateway("gw-1"))
        stream, _ = ask(world)
        self.assertEqual(self.successResultOf(stream.response).status, 200)

    def test_a_directory_that_answers_later_still_relays(self) -> None:
        gw_handler = AcceptAll()
        directory = LaterDirectory(MemoryGatewayDirectory(Clock()))
        world = RelayWorld(self, gw_handler, directory=directory)
        stream, _ = ask(world)
        self.assertNoResult(stream.response)
        self.assertEqual(world.dialer.dials, [])
        directory.answer_all()
        settle_all(world.eng, world.gw)
        self.assertEqual(self.successResultOf(stream.response).status, 200)
        self.assertEqual(gw_handler.recorders[0].received, b"hello processor")

    def test_an_engineer_who_gives_up_while_the_directory_thinks_is_never_dialled(self) -> None:
        directory = LaterDirectory(MemoryGatewayDirectory(Clock()))
        world = RelayWorld(self, AcceptAll(), directory=directory)
        stream, _ = ask(world)
        stream.reset()
        self.failureResultOf(stream.response)
        settle_all(world.eng, world.gw)
        directory.answer_all()
        settle_all(world.eng, world.gw)
        self.assertEqual(world.dialer.dials, [])

    def test_a_step_that_breaks_resets_the_stream_and_is_logged(self) -> None:
        gw_handler = AcceptAll()
        world = RelayWorld(self, gw_handler, directory=BrokenDirectory(Clock()))
        stream, _ = ask(world)
        self.failureResultOf(stream.response)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionRefusedError)), 1)
        self.assertEqual(gw_handler.streams, [])


class FakesProvideTheirInterfacesTests(SynchronousTestCase):
    def test_fakes_and_the_handler_provide_their_interfaces(self) -> None:
        clock = Clock()
        memory = MemoryGatewayDirectory(clock)
        dialer = CountingDialer(LocalDialer(GatewayTunnels()))
        world = RelayWorld(self, AcceptAll())
        verifyObject(ICredentialStore, OneToken())
        verifyObject(IEngineerAuthorisation, OnlyGateway("gw-1"))
        verifyObject(IGatewayDirectory, LaterDirectory(memory))
        verifyObject(IGatewayDirectory, BrokenDirectory(clock))
        verifyObject(IGatewayDialer, dialer)
        verifyObject(IStreamHandler, DialledWithin(world.engineers, dialer))
        verifyObject(IStreamHandler, world.engineers)
        verifyObject(IStreamHandler, AcceptAll())
        verifyObject(IStreamHandler, RefuseAll())
        verifyObject(IStreamHandler, Silent())
