"""The gateway's one request to the relay: ``gateway enroll`` and the daemon's renewal use it.

TLS to the relay's gateway listener exactly as the tunnel goes (directly, or through the plant's
HTTP proxy with CONNECT; the relay's CA pinned, its host name checked), ALPN ``http/1.1``, one
``POST`` with a JSON body, one JSON answer (`gateway.enrollment.wire`).  With ``cert``/``key``
the current certificate is presented (renewal); without, none (enrollment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h11
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from gateway.config import RelayLink
from gateway.enrollment.wire import (
    ALPN_HTTP11,
    MAX_BODY_BYTES,
    REQUEST_TIMEOUT,
    EnrollmentRefused,
    body,
    parse_body,
)
from gateway.net.proxy import relay_tcp_endpoint
from gateway.tls import TLSClientEndpoint, client_options
from gateway.tls.errors import describe_tls_failure


class _OneRequest(Protocol):
    transport: Any

    def __init__(self, host: str, path: bytes, payload: bytes, clock: IReactorTime) -> None:
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_BODY_BYTES)
        self.host, self.path, self.payload, self.clock = host, path, payload, clock
        self.answer: Deferred[dict[str, Any]] = Deferred()
        self._status = 0
        self._body: list[bytes] = []
        self._deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._deadline = self.clock.callLater(REQUEST_TIMEOUT * 2, self._too_slow)
        request = h11.Request(
            method="POST",
            target=self.path,
            headers=[
                ("host", self.host),
                ("content-type", "application/json"),
                ("content-length", str(len(self.payload))),
                ("connection", "close"),
            ],
        )
        out = self.h11.send(request) or b""
        out += self.h11.send(h11.Data(data=self.payload)) or b""
        out += self.h11.send(h11.EndOfMessage()) or b""
        self.transport.write(out)

    def _too_slow(self) -> None:
        self._deadline = None
        self._fail(EnrollmentRefused("timeout", "the relay did not answer in time"))
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        try:
            self.h11.receive_data(data)
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                if isinstance(event, h11.Response):
                    self._status = event.status_code
                elif isinstance(event, h11.Data):
                    self._body.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    self._done()
                    self.transport.loseConnection()
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except h11.RemoteProtocolError:
            self._fail(EnrollmentRefused("bad-answer", "the relay's answer is not HTTP/1.1"))
            self.transport.abortConnection()

    def _done(self) -> None:
        try:
            data = parse_body(b"".join(self._body))
        except ValueError:
            self._fail(EnrollmentRefused("bad-answer", "the relay's answer is not JSON"))
            return
        if self._status != 200:
            reason = str(data.get("reason") or f"HTTP status {self._status}")
            self._fail(EnrollmentRefused(str(data.get("error", "refused")), reason, self._status))
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if not self.answer.called:
            self.answer.callback(data)

    def _fail(self, error: Exception) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if not self.answer.called:
            self.answer.errback(Failure(error))

    def connectionLost(self, reason: Failure | None = None) -> None:
        why = describe_tls_failure(reason) if reason is not None else "closed"
        if not self._status and "TLS" in why:
            why += (
                " (a relay without [enrollment] in its relay.toml, or an address that is not its "
                "gateway listener, ends an enrollment so)"
            )
        self._fail(EnrollmentRefused("connection-lost", f"the relay closed the connection: {why}"))


async def request_certificate(
    reactor: Any,
    link: RelayLink,
    path: bytes,
    request: dict[str, Any],
    *,
    cert: Path | None = None,
    key: Path | None = None,
) -> bytes:
    """POST ``request`` to ``path`` on the relay's gateway listener; the certificate PEM."""
    options = client_options(
        link.expected_name, link.ca, cert_path=cert, key_path=key, protocols=[ALPN_HTTP11]
    )
    endpoint = TLSClientEndpoint(relay_tcp_endpoint(reactor, link), options, reactor)
    protocol = _OneRequest(link.expected_name, path, body(request), reactor)
    try:
        factory = Factory.forProtocol(lambda: protocol)
        factory.noisy = False
        await endpoint.connect(factory)
    except Exception as e:
        raise EnrollmentRefused(
            "unreachable", f"cannot reach relay {link.address}: {describe_tls_failure(Failure(e))}"
        ) from None
    answer = await protocol.answer
    pem = answer.get("certificate")
    if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
        raise EnrollmentRefused("bad-answer", "the relay's answer holds no certificate")
    return pem.encode("ascii")
