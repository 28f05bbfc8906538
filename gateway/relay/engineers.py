"""Engineer streams on the relay: authenticate, find the gateway, ask it, relay its answer.

Each stream from ``gateway connect`` carries a bearer token, the gateway id and the target name.
The relay never decides whether a target is allowed: it asks the gateway, which alone knows its
allowlist and access mode, and passes the gateway's refusal (status, token, reason) back unchanged.
"""

from __future__ import annotations

import json

from h2.errors import ErrorCodes
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.relay.credentials import ICredentialStore
from gateway.relay.directory import IGatewayRegistry
from gateway.relay.metrics import RelayMetrics
from gateway.splice import SpliceEnd, splice
from gateway.tunnel.connection import IStreamHandler
from gateway.tunnel.errors import TunnelClosed
from gateway.tunnel.stream import TunnelStream
from gateway.wire import (
    ERROR_HEADER,
    REASON_HEADER,
    Refusal,
    StreamRefused,
    clean_reason,
)

log = Logger()

GATEWAY_HEADER = "gateway"
ENGINEER_HEADER = b"engineer"


@implementer(IStreamHandler)
class EngineerStreams:
    def __init__(
        self,
        *,
        registry: IGatewayRegistry,
        credentials: ICredentialStore,
        metrics: RelayMetrics,
        clock: IReactorTime,
    ) -> None:
        self.registry = registry
        self.credentials = credentials
        self.metrics = metrics
        self.clock = clock

    def stream_requested(self, stream: TunnelStream) -> None:
        request = stream.request
        assert request is not None
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        engineer = (
            self.credentials.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        )
        if engineer is None:
            self.metrics.bad_tokens.inc()
            self._refuse(stream, Refusal.BAD_TOKEN, "the engineer token was not accepted")
            return
        gateway_id = request.headers.get(GATEWAY_HEADER, "")
        record = self.registry.lookup(gateway_id)
        if record is None:
            self._refuse(
                stream,
                Refusal.UNKNOWN_GATEWAY,
                f"no gateway named {gateway_id!r} has connected to this relay",
            )
            return
        if request.method == "GET" and request.path == "/v1/gateway":
            self._gateway_info(stream, gateway_id, record.tunnel is not None)
            return
        tunnel = record.tunnel
        if tunnel is None or tunnel.draining:
            self._refuse(
                stream,
                Refusal.GATEWAY_OFFLINE,
                f"gateway {gateway_id!r} is offline (its tunnel to the relay is down)",
            )
            return
        if request.method != "CONNECT" or not request.authority:
            self._refuse(stream, Refusal.BAD_REQUEST, "expected CONNECT to a target name")
            return
        started = self.clock.seconds()
        try:
            upstream = tunnel.open_stream(
                request.authority, headers=[(ENGINEER_HEADER, clean_reason(engineer.name))]
            )
        except TunnelClosed as e:
            self._refuse(
                stream, Refusal.GATEWAY_OFFLINE, f"gateway {gateway_id!r} is offline ({e})"
            )
            return
        log.info(
            "{engineer} asks gateway {gw} for {target}",
            engineer=engineer.name,
            gw=gateway_id,
            target=request.authority,
        )
        # Splice at once: the engineer's first bytes follow the request to the gateway without
        # waiting for its answer (one relay-gateway round trip less before the first byte).
        # Nothing flows back before the answer: a stream sends no DATA before its headers.
        engineer_end = SpliceEnd(on_bytes=self.metrics.to_gateway.inc)
        gateway_end = SpliceEnd(on_bytes=self.metrics.from_gateway.inc)
        stream.attach(engineer_end)
        upstream.attach(gateway_end)
        splice(engineer_end, gateway_end)
        upstream.response.addCallbacks(
            lambda response: self._answered(stream, engineer_end, started),
            lambda failure: self._not_answered(stream, gateway_id, failure),
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
                        (REASON_HEADER, clean_reason(refused.reason)),
                    ],
                    end=True,
                )
                stream.reset(ErrorCodes.NO_ERROR)
            return
        self._refuse(
            stream,
            Refusal.GATEWAY_OFFLINE,
            f"gateway {gateway_id!r} went away before answering",
        )

    def _refuse(self, stream: TunnelStream, refusal: Refusal, reason: str) -> None:
        self.metrics.stream_result(refusal.token)
        stream.refuse(refusal, reason)

    def _gateway_info(self, stream: TunnelStream, gateway_id: str, online: bool) -> None:
        body = json.dumps({"gateway": gateway_id, "online": online}).encode()
        stream.respond(200, [(b"content-type", b"application/json")])
        stream.write(body)
        stream.loseWriteConnection()
