"""Engineer streams on the relay: the path's verdict, then the dial, the splice and the answer.

Each stream from ``gateway connect`` carries a bearer token, the gateway id and the target name.
`gateway.relay.path` decides (authenticate, authorise, locate), `gateway.relay.dialer` opens the
stream to the gateway; this handler does the engineer's side of it.  The relay never decides
whether a target is allowed: it asks the gateway, which alone knows its allowlist and access mode,
and passes the gateway's refusal (status, token, reason) back unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from h2.errors import ErrorCodes
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import wire
from gateway.logsafe import peer_text
from gateway.relay.admission import EngineerAdmission, token_was_accepted
from gateway.relay.asks import SessionAsks
from gateway.relay.dialer import IGatewayDialer
from gateway.relay.edgeinfo import EdgeOffer
from gateway.relay.metrics import RelayMetrics
from gateway.relay.path import Admitted, EngineerPath, EngineerRequest, new_connection_id
from gateway.relay.refusals import Refused
from gateway.relay.revocation import LiveStreams
from gateway.splice import HalfCloseGuard, SpliceEnd, splice
from gateway.tunnel.connection import IStreamHandler
from gateway.tunnel.stream import TunnelStream
from gateway.wire import ERROR_HEADER, REASON_HEADER, GatewayInfo, Refusal, StreamRefused

log = Logger()


@implementer(IStreamHandler)
class EngineerStreams:
    """Runs each engineer stream through the path and relays what the gateway makes of it."""

    def __init__(
        self,
        *,
        path: EngineerPath,
        dialer: IGatewayDialer,
        metrics: RelayMetrics,
        clock: IReactorTime,
        new_id: Callable[[], str] = new_connection_id,
        asks: SessionAsks | None = None,
        live: LiveStreams | None = None,
        admission: EngineerAdmission | None = None,
        half_close_timeout: float = 300.0,
        edge_info: Callable[[str], Deferred[EdgeOffer]] | None = None,
    ) -> None:
        self.path = path
        self.dialer = dialer
        self.metrics = metrics
        self.clock = clock
        self._new_id = new_id
        self.asks = asks
        """Passes session asks through (`gateway.relay.asks`); None: they are refused."""
        self.live = live
        """Who opened which stream: withdrawn access ends it (`gateway.relay.revocation`)."""
        self.admission = admission
        """Stream limits, and telling the connection guard who authenticated (`admission`)."""
        self.half_close_timeout = half_close_timeout
        self.edge_info = edge_info
        """Asks an online gateway what it offers (`gateway.relay.edgeinfo`), for the info
        answer; None: the answer says only whether it is online."""

    def stream_requested(self, stream: TunnelStream) -> None:
        assert stream.request is not None
        started = self.clock.seconds()
        if self.admission is not None:
            over = self.admission.stream_arrived(stream)
            if over is not None:
                self._refuse(stream, over)
                return
        request = EngineerRequest.read(stream.request, self._new_id(), _peer_host(stream))
        verdict = self.path.admit(request)
        verdict.addCallbacks(
            lambda admitted: self._admitted(stream, admitted, started),
            lambda failure: self._refused(stream, failure),
        )
        verdict.addErrback(lambda failure: self._broken(stream, request, failure))

    def _admitted(
        self, stream: TunnelStream, verdict: GatewayInfo | Admitted, started: float
    ) -> None:
        if self.admission is not None:
            self.admission.token_accepted(stream)
        if isinstance(verdict, GatewayInfo):
            self._gateway_info(stream, verdict)
            return
        if stream.finished:
            return  # the engineer gave up while a step was waiting for its store
        request, engineer = verdict.request, verdict.engineer
        if self.live is not None:
            self.live.opened(stream, engineer, request.gateway_id)
        if request.wants_session:
            self._session_ask(stream, verdict, started)
            return
        if self.admission is not None:
            refused = self.admission.before_dial(request.gateway_id, request.target)
            if refused is not None:
                self._refuse(stream, refused)
                return
        try:
            upstream = self.dialer.dial(
                request.gateway_id,
                engineer,
                request.target,
                request.connection_id,
                session=request.session,
            )
        except Refused as refused:
            self._refuse(stream, refused)
            return
        log.info(
            "{engineer} asks gateway {gw} for {target} (connection {cid})",
            engineer=engineer.name,
            gw=request.gateway_id,
            target=peer_text(request.target),
            cid=request.connection_id,
        )
        # Splice at once: the engineer's first bytes follow the request to the gateway without
        # waiting for its answer (one relay-gateway round trip less before the first byte).
        # Nothing flows back before the answer: a stream sends no DATA before its headers.
        engineer_end = SpliceEnd(on_bytes=self.metrics.to_gateway.inc)
        gateway_end = SpliceEnd(on_bytes=self.metrics.from_gateway.inc)
        stream.attach(engineer_end)
        upstream.attach(gateway_end)
        # Each side credited as the other's receiver takes the bytes: the gateway's window, and
        # its count of what the engineer received, reach the engineer's client.
        upstream.credit_as_delivered_by(stream)
        stream.credit_as_delivered_by(upstream)
        HalfCloseGuard(engineer_end, gateway_end, self.clock, self.half_close_timeout)
        splice(engineer_end, gateway_end)
        upstream.response.addCallbacks(
            lambda response: self._answered(stream, engineer_end, started),
            lambda failure: self._not_answered(stream, request.gateway_id, failure),
        )
        upstream.response.addErrback(lambda f: log.failure("relaying a stream", f))

    def _answered(self, stream: TunnelStream, engineer_end: SpliceEnd, started: float) -> None:
        self.metrics.stream_open_seconds.observe(self.clock.seconds() - started)
        if stream.finished:
            return  # the engineer gave up meanwhile; the splice has cancelled the upstream
        self.metrics.stream_result("opened")
        self.metrics.streams_active.inc()
        engineer_end.on_lost = lambda _: self.metrics.streams_active.dec()
        stream.accept()

    def _not_answered(self, stream: TunnelStream, gateway_id: str, failure: Failure) -> None:
        if failure.check(StreamRefused):
            refused = failure.value
            assert isinstance(refused, StreamRefused)
            self.metrics.stream_result(refused.token)
            if not stream.finished:
                stream.respond(
                    refused.status,
                    [
                        (ERROR_HEADER, refused.token.encode()),
                        (REASON_HEADER, wire.clean_reason(refused.reason)),
                    ],
                    end=True,
                )
                stream.reset(ErrorCodes.NO_ERROR)
            return
        self._refuse(
            stream,
            Refused(Refusal.GATEWAY_OFFLINE, f"gateway {gateway_id!r} went away before answering"),
        )

    def _session_ask(self, stream: TunnelStream, admitted: Admitted, started: float) -> None:
        """A session ask goes through to the gateway, which alone decides (gateway.relay.asks)."""
        if self.asks is None:
            self._refuse(stream, Refused(Refusal.BAD_REQUEST, "this relay passes no session asks"))
            return
        self.asks.relay(stream, admitted, started, self._not_answered)

    def _refused(self, stream: TunnelStream, failure: Failure) -> None:
        failure.trap(Refused)
        assert isinstance(failure.value, Refused)
        if self.admission is not None and token_was_accepted(failure.value):
            self.admission.token_accepted(stream)
        self._refuse(stream, failure.value)

    def _refuse(self, stream: TunnelStream, refused: Refused) -> None:
        self.metrics.stream_result(refused.refusal.token)
        stream.refuse(refused.refusal, refused.reason)

    def _broken(self, stream: TunnelStream, request: EngineerRequest, failure: Failure) -> None:
        """A step failed in a way no refusal covers (a bug, a store that is down)."""
        log.failure(
            "engineer connection {cid} to gateway {gw}",
            failure,
            cid=request.connection_id,
            gw=peer_text(request.gateway_id),
        )
        stream.reset(ErrorCodes.INTERNAL_ERROR)

    def _gateway_info(self, stream: TunnelStream, info: GatewayInfo) -> None:
        """Whether the gateway is online and, when it is, what it offers (its targets and
        target groups, asked of it now, within `gateway.relay.edgeinfo.INFO_TIMEOUT`)."""
        if not info.online or self.edge_info is None:
            self._send_info(stream, info)
            return
        asked = self.edge_info(info.gateway)
        asked.addCallback(lambda offer: self._send_info(stream, _with_offer(info, offer)))
        asked.addErrback(lambda f: log.failure("answering gateway info", f))

    def _send_info(self, stream: TunnelStream, info: GatewayInfo) -> None:
        if stream.finished:
            return
        stream.respond(200, [(b"content-type", b"application/json")])
        stream.write(info.to_json())
        stream.loseWriteConnection()


def _with_offer(info: GatewayInfo, offer: EdgeOffer) -> GatewayInfo:
    if offer.problem is not None:
        return attrs.evolve(info, problem=offer.problem)
    return attrs.evolve(
        info,
        online=offer.online,
        access_mode=offer.mode,
        targets=list(offer.targets),
        groups=dict(offer.groups),
    )


def _peer_host(stream: TunnelStream) -> str:
    """The engineer connection's source address (login limits count per source)."""
    peer = stream.getPeer()
    return str(getattr(peer, "host", "")) if peer is not None else ""
