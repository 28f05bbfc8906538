# twisted.web is only partly annotated; strict mode would flag every call into it.
# mypy: disable-error-code="no-untyped-call"
"""The gateway's local web listeners (status page and API, metrics), held to rules no client
can bend.

Twisted's ``Site`` trusts its clients: a request head may trickle in for as long as the client
likes, a body of any size is written to a temporary file before anything answers (300 MB of an
edge PC's disk from one POST), any number of connections stay open (500 slow ones were enough,
under a 512-descriptor limit, to make the tunnel's forwards fail) and any ``Host`` is answered,
which lets a web page the plant's browser opens reach the status page by DNS rebinding.  Here:

- **Deadlines.** A request's head and body must arrive within ``request_timeout`` of its first
  byte (of the connection, for a new one): an absolute deadline, which sending a byte at a time
  cannot extend.  A keep-alive connection with no request is closed after ``idle_timeout``.
- **Bodies** are bounded by ``max_body`` and kept in memory: a declared length over it is
  answered 413 from the headers alone, a chunked body as soon as it grows past it, and the
  connection closes instead of reading the rest.  Nothing is ever written to disk.
- **Connections**: at most ``max_connections`` per listener.  When it is full, a newcomer takes
  the place of the connection that has waited longest without sending a whole request (a slow
  or idle one); only when every connection is busy with a request is the newcomer closed at once.
  So a flood of slow connections cannot keep the plant's staff off their own status page.
- **Host allowlist**: ``localhost``, the listen address, this machine's host name, any IP
  address, and ``allowed_hosts`` from the config; any other name is answered 421.  An IP
  address is safe to accept: DNS rebinding needs a name the attacker controls, and a browser
  always sends the name it resolved.
- **Security headers** on every answer (``SECURITY_HEADERS``), error pages included.

Repeated refusals are logged once a minute with a count (`gateway.logsafe.RateLimitedLog`),
never one line per connection, and a peer's bytes only as `gateway.logsafe.peer_text`.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterable
from io import BytesIO
from typing import Any, Literal, cast

from attrs import frozen
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorSSL,
    IReactorTCP,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from gateway.config import Address
from gateway.logsafe import RateLimitedLog, peer_text
from gateway.net.endpoints import listen_endpoint

__all__ = [
    "SECURITY_HEADERS",
    "GuardedChannel",
    "GuardedRequest",
    "GuardedSite",
    "ListenerRules",
    "exposure_warning",
    "host_allowed",
    "is_loopback",
    "local_listener",
    "rules_for",
]

log = Logger()

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Frame-Options", b"DENY"),
    (b"Content-Security-Policy", b"frame-ancestors 'none'; base-uri 'none'; object-src 'none'"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Cache-Control", b"no-store"),
)
"""Set on every answer before the resource renders (a resource may override one): no sniffing,
no framing (clickjacking the status page's buttons), no referrer leaving the plant, no caching
of a page that shows who is connected."""

REQUEST_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 64
MAX_HEADERS = 100
ABORT_TIMEOUT = 5
"""Seconds a connection we closed may take to go (a client that does not read) before it is
aborted; Twisted's default is 15."""

LOG_INTERVAL = 60.0
"""Repeated refusals of one kind are logged at most once per this many seconds, with a count."""


@frozen
class ListenerRules:
    """What every connection to one local listener is held to (defaults: the README's)."""

    name: str
    """How log lines and answers name the listener: ``status listener``."""
    hosts_key: str
    """The config key that adds host names, for the 421 answer: ``status.allowed_hosts``."""
    allowed_hosts: frozenset[str]
    """Lower-case names, without a trailing dot; any IP address is accepted besides these."""
    request_timeout: float = REQUEST_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    max_body: int = MAX_BODY
    max_connections: int = MAX_CONNECTIONS
    max_headers: int = MAX_HEADERS


def rules_for(
    name: str, hosts_key: str, listen: Address, extra_hosts: Iterable[str] = ()
) -> ListenerRules:
    """The rules for a listener on ``listen``: the default host names plus ``extra_hosts``."""
    names = {"localhost", listen.host, *extra_hosts}
    host = socket.gethostname()
    if host:
        names.update({host, host.split(".")[0]})
    return ListenerRules(
        name=name,
        hosts_key=hosts_key,
        allowed_hosts=frozenset(n for n in map(_normal_name, names) if n and not _is_ip(n)),
    )


def _normal_name(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def host_allowed(value: bytes, allowed: frozenset[str]) -> bool:
    """Whether a ``Host`` header value names this listener: an IP address or an allowed name,
    with or without a port."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return False
    if text.startswith("["):
        close = text.find("]")
        rest = text[close + 1 :]
        if close < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return False
        host = text[1:close]
        return ":" in host and _is_ip(host)
    host, colon, port = text.rpartition(":")
    if not colon:
        host = text
    elif not port.isdigit():
        return False
    host = _normal_name(host)
    return _is_ip(host) or host in allowed


def is_loopback(address: Address) -> bool:
    """Whether only this machine can reach a listener on ``address``."""
    if address.host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.host).is_loopback
    except ValueError:
        return False  # a host name: it may well resolve to an address others reach


def exposure_warning(
    address: Address, rules: ListenerRules, offers: str, *, login: bool = False
) -> str | None:
    """One line for the log when ``address`` can be reached from other machines, or None;
    ``login``: the listener asks others for the operator password (the status page)."""
    if is_loopback(address):
        return None
    where = {"0.0.0.0": "every IPv4 network of this machine", "::": "every network of this machine"}
    reach = where.get(address.host, f"the network of {address.host}")
    names = ", ".join(sorted(rules.allowed_hosts))
    return (
        f"the {rules.name} on {address} can be reached from {reach}, not only from this "
        f"machine: anyone there can {offers}. "
        + (
            "Off loopback it asks for the operator password (gateway operator-password -c "
            "gateway.toml; read-only until one is set); besides that, what protects it is the "
            "network, "
            if login
            else "It has no login; what protects it is the network, "
        )
        + f"the host names it answers to (an IP address or {names}; more in {rules.hosts_key}) "
        f"and its limits ({rules.max_connections} connections, requests within "
        f"{rules.request_timeout:g}s, bodies up to {rules.max_body // 1024} KiB). "
        "Listen on 127.0.0.1 unless the plant network needs it."
    )


class _Tally:
    """Refusals a client can repeat at will, logged through one `RateLimitedLog` per listener:
    the first of each kind per minute, then one line with the count of the rest."""

    def __init__(self, clock: IReactorTime, listener: str) -> None:
        self.log = RateLimitedLog(clock, burst=1, interval=LOG_INTERVAL)
        self._listener = listener

    def note(self, kind: str, text: str, peer: str) -> None:
        self.log.warn(
            log,
            "{listener}: {text} from {peer}",
            kind=kind,
            listener=self._listener,
            text=text,
            peer=peer,
        )


def _peer(address: IAddress | None) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        return "an unknown peer"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _answer(status: int, phrase: str, token: str, text: str, as_json: bool) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, security headers included."""
    if as_json:
        body, kind = json.dumps({"error": token, "reason": text}).encode(), b"application/json"
    else:
        body, kind = (text + "\n").encode(), b"text/plain; charset=utf-8"
    head = [f"HTTP/1.1 {status} {phrase}".encode()]
    head += [name + b": " + value for name, value in SECURITY_HEADERS]
    head += [b"Content-Type: " + kind, b"Content-Length: %d" % len(body), b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class GuardedChannel(HTTPChannel):
    """An ``HTTPChannel`` with an absolute request deadline, a body limit and a quiet close."""

    site: GuardedSite
    rules: ListenerRules
    abortTimeout = ABORT_TIMEOUT
    maxHeaders = MAX_HEADERS
    counted_out = False
    """No longer counted by the site: gone, or closed to make room for a newcomer."""
    _refused = False
    _deadline: IDelayedCall | None = None

    # -- the request deadline --------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self._start_deadline()  # a silent new connection is a slow request too
        self.site.waiting(self)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: whatever else comes is dropped unread
        if self._deadline is None and not self._handlingRequest:
            self._start_deadline()  # the first byte of a keep-alive connection's next request
        super().dataReceived(data)

    def _start_deadline(self) -> None:
        self._deadline = self.callLater(self.rules.request_timeout, self._too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self.site.tally.note(
            "slow",
            f"closed a connection that sent no whole request within "
            f"{self.rules.request_timeout:g}s",
            _peer(self.getPeer()),
        )
        self.refuse(
            408,
            "Request Timeout",
            "too-slow",
            f"a request must arrive within {self.rules.request_timeout:g} seconds",
        )

    # -- the body limit ------------------------------------------------------------------------

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > self.rules.max_body:
            self.body_too_large()
            return  # gotLength, and a "100 Continue", never happen
        super().allHeadersReceived()

    def body_too_large(self) -> None:
        self.site.tally.note(
            "large",
            f"refused a request body over {self.rules.max_body} bytes",
            _peer(self.getPeer()),
        )
        self.refuse(
            413,
            "Content Too Large",
            "too-large",
            f"the body is limited to {self.rules.max_body} bytes",
        )

    def lineReceived(self, line: bytes) -> None:
        if not self._refused:
            super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._stop_deadline()
        self.site.busy(self)
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        if self.persistent:
            self.site.waiting(self)  # before super(): a pipelined request may start inside it
        super().requestDone(request)

    # -- closing -------------------------------------------------------------------------------

    def refuse(self, status: int, phrase: str, token: str, text: str) -> None:
        """Answer ``status`` at once, then close, reading nothing more."""
        if self._refused:
            return
        self._refused = True
        self._stop_deadline()
        as_json = getattr(self, "_path", b"").startswith(b"/api/")
        self.raw_transport.write(_answer(status, phrase, token, text, as_json))
        self.setTimeout(None)
        self._close()

    @property
    def refused(self) -> bool:
        """Answered with a refusal and closing: nothing more is read."""
        return self._refused

    def timeoutConnection(self) -> None:
        """An idle keep-alive connection: closed without a log line (browsers keep many)."""
        self._close()

    def _close(self) -> None:
        if self._abortingCall is None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def forceAbortClient(self) -> None:
        self._abortingCall = None
        self.raw_transport.abortConnection()

    @property
    def raw_transport(self) -> Any:
        """The TCP transport (``ITransport`` does not name ``abortConnection``)."""
        return self.transport

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self._stop_deadline()
        self.site.gone(self)
        super().connectionLost(reason)


class GuardedRequest(Request):
    """A request whose body stays in memory and within the limit, answered only if its ``Host``
    names this listener, and always with `SECURITY_HEADERS`."""

    _received = 0

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()  # never a temporary file: the channel bounds the body

    def handleContentChunk(self, data: bytes) -> None:
        channel = cast(GuardedChannel, self.channel)
        if channel.refused:
            return
        self._received += len(data)
        if self._received > channel.rules.max_body:
            channel.body_too_large()
            return
        content = self.content
        assert content is not None
        content.write(data)

    def process(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.setHeader(name, value)
        channel = cast(GuardedChannel, self.channel)
        rules = channel.rules
        hosts = self.requestHeaders.getRawHeaders(b"host") or []
        if len(hosts) > 1 or (hosts and not host_allowed(hosts[0], rules.allowed_hosts)):
            shown = peer_text(b", ".join(hosts))
            channel.site.tally.note(
                "host", f"refused a request for host '{shown}'", _peer(self.getClientAddress())
            )
            self._refuse_host(rules)
            return
        super().process()

    def _refuse_host(self, rules: ListenerRules) -> None:
        text = (
            f"this {rules.name} does not answer to that host name: open it by its IP address "
            f"or by localhost, or add the name to {rules.hosts_key} in gateway.toml"
        )
        self.site = cast(GuardedChannel, self.channel).site
        self.setResponseCode(421, b"Misdirected Request")
        if self.path.startswith(b"/api/"):
            body = json.dumps({"error": "wrong-host", "reason": text}).encode()
            self.setHeader(b"content-type", b"application/json")
        else:
            body = (text + "\n").encode()
            self.setHeader(b"content-type", b"text/plain; charset=utf-8")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()


class GuardedSite(Site):
    """A ``Site`` of `GuardedChannel` s and `GuardedRequest` s under one `ListenerRules`."""

    protocol = GuardedChannel  # type: ignore[assignment]  # plain HTTP/1.1; no h2 upgrade here

    def __init__(
        self, resource: Resource, rules: ListenerRules, *, reactor: IReactorTime | None = None
    ) -> None:
        super().__init__(
            resource, requestFactory=GuardedRequest, timeout=rules.idle_timeout, reactor=reactor
        )
        self.rules = rules
        self.open = 0
        """Connections open now (those being evicted not counted)."""
        self._waiting: dict[GuardedChannel, None] = {}
        """Connections without a whole request, longest-waiting first."""
        self.tally = _Tally(self.reactor, rules.name)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        if self.open >= self.rules.max_connections:
            victim = next(iter(self._waiting), None)
            if victim is None:
                self.tally.note(
                    "full",
                    f"closed a new connection: all {self.rules.max_connections} are busy",
                    _peer(addr),
                )
                return None  # the port closes the socket at once
            self._evict(victim)
        channel = cast(GuardedChannel, super().buildProtocol(addr))
        channel.rules = self.rules
        channel.maxHeaders = self.rules.max_headers
        self.open += 1
        return channel

    def stopFactory(self) -> None:
        self.tally.log.stop()  # pending counts written now; no timer left behind
        super().stopFactory()

    def _evict(self, channel: GuardedChannel) -> None:
        self.tally.note(
            "evicted",
            f"all {self.rules.max_connections} connections taken: closed the one waiting "
            "longest without a whole request",
            _peer(channel.getPeer()),
        )
        self.gone(channel)
        channel.raw_transport.abortConnection()

    def waiting(self, channel: GuardedChannel) -> None:
        if not channel.counted_out:
            self._waiting.pop(channel, None)
            self._waiting[channel] = None

    def busy(self, channel: GuardedChannel) -> None:
        self._waiting.pop(channel, None)

    def gone(self, channel: GuardedChannel) -> None:
        if channel.counted_out:
            return
        channel.counted_out = True
        self._waiting.pop(channel, None)
        self.open -= 1


_OFFERS = {
    "status": "see who is connected to which processor, and read the JSON API",
    "metrics": "read the gateway's Prometheus metrics",
}


class _LocalListener(StreamServerEndpointService):
    """A listener that says at start-up who can reach it, when that is more than this machine."""

    def __init__(
        self, endpoint: Any, site: GuardedSite, address: Address, offers: str, login: bool = False
    ) -> None:
        super().__init__(endpoint, site)
        self._warning = exposure_warning(address, site.rules, offers, login=login)

    def startService(self) -> None:
        if self._warning is not None:
            log.warn("{warning}", warning=self._warning)
        super().startService()


def local_listener(
    reactor: IReactorTCP,
    kind: Literal["status", "metrics"],
    address: Address,
    root: Resource,
    allowed_hosts: Iterable[str] = (),
    *,
    tls: Any = None,
    login: bool = False,
) -> StreamServerEndpointService:
    """The ``[status]`` or ``[metrics]`` listener on ``address``, serving ``root`` under
    `ListenerRules`, with the start-up warning when other machines can reach it; ``tls``:
    Twisted TLS options to serve HTTPS with (`gateway.web.pagetls.page_tls_options`)."""
    rules = rules_for(f"{kind} listener", f"{kind}.allowed_hosts", address, allowed_hosts)
    site = GuardedSite(root, rules, reactor=cast(IReactorTime, reactor))
    endpoint: Any = listen_endpoint(reactor, address)
    if tls is not None:
        endpoint = SSL4ServerEndpoint(
            cast(IReactorSSL, reactor), address.port, tls, interface=address.host
        )
    return _LocalListener(endpoint, site, address, _OFFERS[kind], login=login)
