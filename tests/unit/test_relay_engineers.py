"""The relay's engineer streams: tokens, gateway lookup, and relaying the gateway's answer."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.relay.credentials import Engineer, ICredentialStore
from gateway.relay.directory import MemoryGatewayRegistry
from gateway.relay.engineers import EngineerStreams
from gateway.relay.metrics import RelayMetrics
from gateway.tunnel.stream import TunnelStream
from gateway.wire import Refusal, StreamRefused
from tests.helpers.tunnel import AcceptAll, Linked, Recorder, linked_tunnels, settle_all


@implementer(ICredentialStore)
class OneToken:
    def authenticate(self, token: str) -> Engineer | None:
        return Engineer("alice") if token == "good" else None


class RefuseAll(AcceptAll):
    def stream_requested(self, stream: TunnelStream) -> None:
        self.streams.append(stream)
        stream.refuse(Refusal.TARGET_NOT_ALLOWED, "target 'plc' is not in this gateway's allowlist")


class EngineerStreamTests(SynchronousTestCase):
    def _relay(self, gateway_handler: AcceptAll) -> tuple[Linked, Linked, RelayMetrics]:
        clock = Clock()
        registry = MemoryGatewayRegistry(clock)
        metrics = RelayMetrics(CollectorRegistry())
        engineers = EngineerStreams(
            registry=registry, credentials=OneToken(), metrics=metrics, clock=clock
        )
        engineer_link = linked_tunnels(engineers, clock)
        gateway_link = linked_tunnels(gateway_handler, clock)
        registry.register("gw-1", gateway_link.client)
        self.addCleanup(engineer_link.close)
        self.addCleanup(gateway_link.close)
        return engineer_link, gateway_link, metrics

    def _ask(
        self,
        link: Linked,
        *others: Linked,
        token: str = "good",
        gateway: str = "gw-1",
        target: str = "web",
    ) -> tuple[TunnelStream, Recorder]:
        stream = link.client.open_stream(
            target,
            headers=[
                (b"authorization", b"Bearer " + token.encode()),
                (b"gateway", gateway.encode()),
            ],
        )
        rec = Recorder()
        stream.attach(rec)
        stream.write(b"hello processor")
        settle_all(link, *others)
        return stream, rec

    def test_good_token_reaches_the_gateway_and_bytes_flow(self) -> None:
        gw_handler = AcceptAll()
        eng, gw, metrics = self._relay(gw_handler)
        stream, rec = self._ask(eng, gw)
        self.assertEqual(self.successResultOf(stream.response).status, 200)
        asked = gw_handler.streams[0].request
        assert asked is not None
        self.assertEqual((asked.authority, asked.headers["engineer"]), ("web", "alice"))
        self.assertEqual(gw_handler.recorders[0].received, b"hello processor")
        gw_handler.streams[0].write(b"hello engineer")
        settle_all(eng, gw)
        self.assertEqual(rec.received, b"hello engineer")
        self.assertEqual(metrics.streams_active._value.get(), 1)

    def test_bad_token_is_refused_and_counted(self) -> None:
        gw_handler = AcceptAll()
        eng, gw, metrics = self._relay(gw_handler)
        stream, _ = self._ask(eng, gw, token="bad")
        refused = self.failureResultOf(stream.response, StreamRefused).value
        self.assertEqual((refused.status, refused.token), (401, "bad-token"))
        self.assertEqual(gw_handler.streams, [])
        self.assertEqual(metrics.bad_tokens._value.get(), 1)

    def test_unknown_gateway_is_refused(self) -> None:
        eng, gw, _ = self._relay(AcceptAll())
        stream, _ = self._ask(eng, gw, gateway="nowhere")
        refused = self.failureResultOf(stream.response, StreamRefused).value
        self.assertEqual((refused.status, refused.token), (404, "unknown-gateway"))

    def test_offline_gateway_is_refused(self) -> None:
        eng, gw, _ = self._relay(AcceptAll())
        gw.close()
        settle_all(eng)
        stream, _ = self._ask(eng)
        refused = self.failureResultOf(stream.response, StreamRefused).value
        self.assertEqual(refused.token, "gateway-offline")

    def test_the_gateways_refusal_reaches_the_engineer_unchanged(self) -> None:
        eng, gw, _ = self._relay(RefuseAll())
        stream, _ = self._ask(eng, gw, target="plc")
        refused = self.failureResultOf(stream.response, StreamRefused).value
        self.assertEqual(
            (refused.status, refused.token, refused.reason),
            (403, "target-not-allowed", "target 'plc' is not in this gateway's allowlist"),
        )
