"""Dial through the plant's HTTP proxy with ``CONNECT``, then run TLS end to end over it.

Many plants allow the internet only through an HTTP proxy.  The gateway asks the proxy for a
``CONNECT relay:443`` tunnel and starts TLS inside it, so the proxy sees only the relay's name and
encrypted bytes, and the relay's certificate is still checked against the pinned CA.

Plants' proxies want credentials more often than not: Basic credentials (``[relay]
proxy_credentials``, a private file) are sent with the first CONNECT, never in a log.  Each way a
proxy can fail has its own `ProxyError` with a sentence plant IT can act on: it wants
credentials (and which scheme: NTLM and Negotiate are named, since we cannot answer them), it
forbids the CONNECT, it cannot be reached, it does not answer in time, it does not speak HTTP.
``no_proxy`` names relay hosts that are dialled directly.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import (
    ConnectionRefusedError,
    DNSLookupError,
    NoRouteError,
    TCPTimedOutError,
)
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import Address, ProxyCredentials, RelayLink

MAX_RESPONSE_HEAD = 16 * 1024
USER_AGENT = b"remote-service-gateway"


class ProxyError(Exception):
    """The proxy would not open the tunnel; the message says what it answered."""

    proxy: Address | None = None
    target: Address | None = None


class ProxyAuthRequired(ProxyError):
    """407: the proxy wants credentials (``schemes`` it offered; ``sent``: ours were refused)."""

    def __init__(self, message: str, *, schemes: tuple[str, ...], sent: bool) -> None:
        super().__init__(message)
        self.schemes = schemes
        self.sent = sent

    @property
    def unsupported(self) -> tuple[str, ...]:
        """Offered schemes we cannot answer (NTLM, Negotiate, Digest...)."""
        return tuple(s for s in self.schemes if s.lower() != "basic")

    @property
    def basic_offered(self) -> bool:
        return any(s.lower() == "basic" for s in self.schemes) or not self.schemes


class ProxyForbidden(ProxyError):
    """403 (or 405): the proxy's rules do not allow CONNECT to the relay."""


class ProxyRefusedStatus(ProxyError):
    """Any other non-200 answer (502: the proxy could not reach the relay, 503, ...)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class ProxyUnreachable(ProxyError):
    """No TCP connection to the proxy (refused, no route, name not found, timed out)."""


class ProxyTimeout(ProxyError, DeferredTimeout):
    """The proxy did not answer in time (a `defer.TimeoutError` too, as ``addTimeout`` gives)."""


class ProxyNotHTTP(ProxyError):
    """Something answered on the proxy port that is not an HTTP proxy."""


def basic_authorization(credentials: ProxyCredentials) -> bytes:
    token = f"{credentials.user}:{credentials.password}".encode()
    return b"Basic " + base64.b64encode(token)


def auth_schemes(head: bytes) -> tuple[str, ...]:
    """The schemes of every ``Proxy-Authenticate`` header in a response head, in order."""
    found: list[str] = []
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"proxy-authenticate":
            scheme = value.strip().split(b" ", 1)[0].split(b",", 1)[0].decode("latin-1")
            if scheme and scheme not in found:
                found.append(scheme)
    return tuple(found)


def connect_request(target: Address, credentials: ProxyCredentials | None) -> bytes:
    authority = str(target).encode("ascii")
    lines = [
        b"CONNECT " + authority + b" HTTP/1.1",
        b"Host: " + authority,
        b"User-Agent: " + USER_AGENT,
    ]
    if credentials is not None:
        lines.append(b"Proxy-Authorization: " + basic_authorization(credentials))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def error_for_answer(
    head: bytes, proxy: Address, target: Address, *, sent_credentials: bool
) -> ProxyError | None:
    """The error a CONNECT answer means, or None for ``200``."""
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1").strip()
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return ProxyNotHTTP(
            f"{proxy} does not answer like an HTTP proxy (it said {status_line[:60]!r})"
        )
    status = int(parts[1])
    if status == 200:
        return None
    said = f"the proxy refused CONNECT {target}: {status_line!r}"
    if status == 407:
        schemes = auth_schemes(head)
        return ProxyAuthRequired(
            f"{said}; it wants {' or '.join(schemes) or 'some'} authentication"
            + ("; the configured credentials were not accepted" if sent_credentials else ""),
            schemes=schemes,
            sent=sent_credentials,
        )
    if status in (403, 405):
        return ProxyForbidden(said)
    return ProxyRefusedStatus(said, status=status)


def _looks_like_http(head: bytes) -> bool:
    return b"HTTP/"[: len(head)] == head[:5]


class _ConnectThenRelay(Protocol):
    """Speaks HTTP CONNECT to the proxy, then hands the connection to the real protocol.

    Once ``ready`` has fired without it (timed out, cancelled, refused) the attempt is over: a
    late answer builds nothing and the proxy connection is closed.
    """

    def __init__(self, attempt: _Attempt) -> None:
        self._attempt = attempt
        self._ready = attempt.ready
        self._head = b""
        self._inner: IProtocol | None = None

    def connectionMade(self) -> None:
        self._attempt.tcp_connected = True
        if self._ready.called:  # given up while TCP was connecting
            self.abandon()
            return
        self.transport.write(  # type: ignore[union-attr]
            connect_request(self._attempt.target, self._attempt.credentials)
        )

    def abandon(self) -> None:
        """Close the proxy connection: nobody waits for this tunnel any more."""
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        if self._ready.called:  # an answer after the timeout or a cancel
            self.abandon()
            return
        self._head += data
        attempt = self._attempt
        if not _looks_like_http(self._head):
            self._fail(
                error_for_answer(self._head, attempt.proxy, attempt.target, sent_credentials=False)
            )
            return
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_RESPONSE_HEAD:
                self._fail(ProxyNotHTTP("the proxy's answer to CONNECT is too long"))
            return
        head, rest = self._head[:end], self._head[end + 4 :]
        error = error_for_answer(
            head, attempt.proxy, attempt.target, sent_credentials=attempt.credentials is not None
        )
        if error is not None:
            self._fail(error)
            return
        inner = attempt.factory.buildProtocol(self.transport.getPeer())  # type: ignore[union-attr]
        if inner is None:
            self._fail(ProxyError("no protocol for the proxied connection"))
            return
        self._inner = inner
        inner.makeConnection(self.transport)  # type: ignore[arg-type]
        self._ready.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def _fail(self, error: ProxyError | None) -> None:
        assert error is not None
        error.proxy, error.target = self._attempt.proxy, self._attempt.target
        if not self._ready.called:
            self._ready.errback(error)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._inner is not None:
            self._inner.connectionLost(reason)
        elif not self._ready.called:
            error = ProxyError(f"the proxy closed the connection: {reason.value}")
            if self._head and not _looks_like_http(self._head):
                error = ProxyNotHTTP(f"{self._attempt.proxy} does not answer like an HTTP proxy")
            error.proxy, error.target = self._attempt.proxy, self._attempt.target
            self._ready.errback(error)


_UNREACHABLE = {
    ConnectionRefusedError: "connection refused (nothing listens there, or a firewall rejects)",
    NoRouteError: "no route to it",
    DNSLookupError: "its name does not resolve",
    ConnectTimeout: "no answer (a firewall drops the connection?)",
    TCPTimedOutError: "no answer (a firewall drops the connection?)",
}


class _Attempt(Factory):
    """One dial through the proxy: TCP to the proxy, then CONNECT; ``ready`` can be cancelled.

    Cancelling ``ready`` (``addTimeout`` does, and so does ``ClientService`` when it stops) stops
    the TCP connect if it is still under way, or closes the proxy connection if it is not.
    """

    noisy = False

    def __init__(
        self,
        proxy: Address,
        target: Address,
        factory: IProtocolFactory,
        credentials: ProxyCredentials | None,
    ) -> None:
        self.proxy, self.target, self.factory = proxy, target, factory
        self.credentials = credentials
        self.ready: Deferred[IProtocol] = Deferred(self._cancel)
        self.connecting: Deferred[Any] | None = None
        self.tcp_connected = False
        self._speaker: _ConnectThenRelay | None = None
        self._cancelling = False

    def buildProtocol(self, addr: IAddress | None) -> _ConnectThenRelay:
        self._speaker = _ConnectThenRelay(self)
        return self._speaker

    def tcp_failed(self, reason: Failure) -> None:
        if self.ready.called or self._cancelling:
            return
        why = next((text for kind, text in _UNREACHABLE.items() if reason.check(kind)), None)
        error = ProxyUnreachable(
            f"cannot reach the proxy {self.proxy}: {why or reason.getErrorMessage()}"
        )
        error.proxy, error.target = self.proxy, self.target
        self.ready.errback(error)

    def timed_out(self, reason: Failure) -> Failure:
        if not reason.check(DeferredTimeout) or reason.check(ProxyError):
            return reason
        if self.tcp_connected:
            text = f"the proxy {self.proxy} did not answer CONNECT {self.target} in time"
        else:
            text = f"cannot reach the proxy {self.proxy}: no answer in time"
        error = ProxyTimeout(text)
        error.proxy, error.target = self.proxy, self.target
        return Failure(error)

    def _cancel(self, _ready: Deferred[IProtocol]) -> None:
        # Deferred.cancel errbacks ``ready`` with CancelledError after this returns (addTimeout
        # turns that into TimeoutError), so the TCP attempt's own cancel error is swallowed.
        self._cancelling = True
        if self._speaker is not None:
            self._speaker.abandon()
        elif self.connecting is not None:
            self.connecting.cancel()


@implementer(IStreamClientEndpoint)
class HTTPConnectEndpoint:
    """An endpoint that reaches ``target`` through an HTTP proxy's CONNECT method."""

    def __init__(
        self,
        reactor: Any,
        proxy: Address,
        target: Address,
        *,
        timeout: float = 10.0,
        credentials: ProxyCredentials | None = None,
    ) -> None:
        self._proxy_endpoint = HostnameEndpoint(reactor, proxy.host, proxy.port, timeout=timeout)
        self._reactor: IReactorTCP | IReactorTime = reactor
        self._proxy, self._target, self._timeout = proxy, target, timeout
        self._credentials = credentials

    def __repr__(self) -> str:
        return f"<CONNECT {self._target} via proxy {self._proxy}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        attempt = _Attempt(self._proxy, self._target, protocolFactory, self._credentials)
        attempt.connecting = self._proxy_endpoint.connect(attempt)
        attempt.connecting.addErrback(attempt.tcp_failed)
        attempt.ready.addTimeout(self._timeout, self._reactor)  # type: ignore[arg-type]
        attempt.ready.addErrback(attempt.timed_out)
        return attempt.ready


def bypasses_proxy(host: str, no_proxy: tuple[str, ...]) -> bool:
    """Does ``no_proxy`` say to dial ``host`` directly?

    As curl and Python read the variable: ``*`` matches everything, ``example.com`` matches it
    and its subdomains, ``.example.com`` (or ``*.example.com``) its subdomains and itself, an IP
    address itself and a network (``10.0.0.0/8``) every address in it.
    """
    host = host.lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy:
        if entry == "*":
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        domain = entry.removeprefix("*").lstrip(".").rstrip(".")
        if host == domain or host.endswith("." + domain):
            return True
    return False


def proxy_for(link: RelayLink) -> Address | None:
    """The proxy the tunnel dials through: ``[relay] proxy``, unless ``no_proxy`` bypasses it."""
    if link.proxy is None or bypasses_proxy(link.address.host, link.no_proxy):
        return None
    return link.proxy


def relay_tcp_endpoint(
    reactor: Any, link: RelayLink, *, timeout: float | None = None
) -> IStreamClientEndpoint:
    """TCP to the relay: directly, or through the plant's proxy with CONNECT."""
    wait = link.connect_timeout if timeout is None else timeout
    proxy = proxy_for(link)
    if proxy is not None:
        return HTTPConnectEndpoint(
            reactor, proxy, link.address, timeout=wait, credentials=link.proxy_credentials
        )
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, link.address.host, link.address.port, timeout=wait
    )
    return endpoint
