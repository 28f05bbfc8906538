"""The portal's listener: each browser connection goes to the portal's pages or to one target.

The first request's ``Host`` decides.  The portal's own host name is served by its pages (a
twisted.web channel takes the connection over); ``<target>--<gateway>.<domain>`` is proxied to
that target through the gateway's tunnel; anything else is answered ``421``.

A proxied connection is one tunnel stream, opened (as the logged-in engineer, like any stream of
``gateway connect``) on its first request that carries a valid origin pass; the gateway decides
it as it decides every stream.  Requests are read with h11, each head rewritten on its way (hop
by hop headers and the portal's own credentials out, ``X-Forwarded-*`` in), bodies passed on
piece by piece as they arrive; answers pass back unread.  After a ``101`` (WebSocket) the bytes
pass both ways unread.  The browser's transport and the stream are each other's producers, so
a slow side pauses the other; nothing is gathered.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol
from urllib.parse import parse_qs, quote, urlsplit

import h11
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.relay.portal.logins import Login
from gateway.relay.refusals import Refused
from gateway.tunnel.stream import StreamResponse, TunnelStream
from gateway.wire import StreamRefused

log = Logger()

MAX_HEAD = 32 * 1024
HEAD_TIMEOUT = 30.0
"""Seconds a new connection has to send its first request head (then it is closed)."""
TICKET_PATH = "/.portal/ticket"
LOGIN_COOKIE = "__Host-portal"
"""The portal origin's login cookie (``__Host-``: Secure, Path=/, no Domain, so host-only)."""
PASS_COOKIE = "__Host-portal-pass"
"""A target origin's own cookie: its origin pass."""
_PORTAL_COOKIES = (LOGIN_COOKIE.lower(), PASS_COOKIE.lower())
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"upgrade",
    }
)
DROPPED = frozenset(
    {b"authorization", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)


class IProxyPortal(TypingProtocol):
    """What a proxied connection needs from the portal."""

    domain: str

    def portal_origin(self) -> str: ...

    def login_for_pass(self, token: str | None, gateway: str, target: str) -> Login | None: ...

    def redeem(self, ticket: str, gateway: str, target: str) -> str | None: ...

    def open_stream(
        self, login: Login, gateway: str, target: str, peer: str, port: int = 0
    ) -> TunnelStream:
        """Raises `Refused`.  ``port``: the portal port the browser came in on (a target
        group's member is the one with that port number)."""
        ...

    def page_opened(self, engineer: str, gateway: str, page: Any) -> None: ...

    def page_closed(self, engineer: str, gateway: str, page: Any) -> None: ...


def split_host(host: str, domain: str) -> tuple[str, str] | bool | None:
    """``(target, gateway)`` for a target origin, True for the portal itself, None otherwise."""
    name = host.strip().lower()
    if name.startswith("["):
        return None
    name = name.rsplit(":", 1)[0] if ":" in name else name
    name = name.rstrip(".")
    if name == domain:
        return True
    suffix = "." + domain
    if not name.endswith(suffix):
        return None
    label = name[: -len(suffix)]
    target, sep, gateway = label.partition("--")
    if not sep or not target or not gateway or "." in label:
        return None
    return target, gateway


def local_path(path: str) -> bool:
    """Whether a ``next`` redirect stays on this origin: a path, not ``//host`` or ``/\\host``
    (which browsers read as another host), without control characters."""
    return (
        path.startswith("/")
        and not path.startswith(("//", "/\\"))
        and "\\" not in path
        and all(32 < ord(c) < 127 for c in path)
    )


def target_origin(target: str, gateway: str, domain: str, port: int) -> str:
    where = f"{target}--{gateway}.{domain}"
    return f"https://{where}/" if port == 443 else f"https://{where}:{port}/"


def cookie_value(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    for key, value in headers:
        if key != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            k, _, v = part.strip().partition("=")
            if k == name:
                return v
    return None


def without_portal_cookies(value: bytes) -> bytes:
    kept = [
        part.strip()
        for part in value.decode("latin-1").split(";")
        if part.strip() and part.strip().partition("=")[0].lower() not in _PORTAL_COOKIES
    ]
    return "; ".join(kept).encode("latin-1")


def simple_answer(
    status: int,
    reason: str,
    body: str,
    *,
    headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
) -> bytes:
    data = body.encode()
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines += [
        "Content-Type: text/html; charset=utf-8",
        f"Content-Length: {len(data)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


def notice_page(title: str, text: str, portal: str) -> str:
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>"
        f"{html.escape(title)}</title></head><body style='font-family:sans-serif'>"
        f"<h1>{html.escape(title)}</h1><p id=notice>{html.escape(text)}</p>"
        f"<p><a href='{html.escape(portal)}'>Back to the portal</a></p>"
        "<p>(the remote service gateway's portal)</p></body></html>"
    )


class PortalConnection(Protocol):
    """One browser connection to the portal listener, routed by its first request's host."""

    transport: Any  # the TLS transport: a half-closeable push producer and consumer

    def __init__(
        self,
        portal: IProxyPortal,
        pages: Any,
        peer: str,
        clock: IReactorTime | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.portal = portal
        self.pages = pages
        self.peer = peer
        self._buffer = b""
        self._inner: Any = None
        self._clock = clock
        self._on_lost = on_lost
        self._deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        if self._clock is not None:
            self._deadline = self._clock.callLater(HEAD_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        if self._inner is None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self.transport.write(simple_answer(431, "Too Large", "request head too large"))
                self.transport.loseConnection()
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        host = _host_of(self._buffer[: end + 4])
        where = None if host is None else split_host(host, self.portal.domain)
        buffered, self._buffer = self._buffer, b""
        if where is True:
            self._inner = self.pages.buildProtocol(self.transport.getPeer())
        elif isinstance(where, tuple):
            target, gateway = where
            port = getattr(self.transport.getHost(), "port", 0)
            self._inner = OriginProxy(
                self.portal, target, gateway, host or "", self.peer, port=port
            )
        else:
            self.transport.write(
                simple_answer(421, "Misdirected Request", "this portal serves no such host")
            )
            self.transport.loseConnection()
            return
        self._inner.makeConnection(self.transport)
        self._inner.dataReceived(buffered)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self._on_lost is not None:
            on_lost, self._on_lost = self._on_lost, None
            on_lost()
        if self._inner is not None:
            self._inner.connectionLost(reason)


def _host_of(head: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            return value.strip().decode("latin-1")
    return None


@implementer(IHalfCloseableProtocol)
class _Upstream(Protocol):
    """The tunnel stream's side: what the processor sends goes to the browser unread."""

    def __init__(self, proxy: OriginProxy) -> None:
        self.proxy = proxy

    def dataReceived(self, data: bytes) -> None:
        self.proxy.from_processor(data)

    def readConnectionLost(self) -> None:
        self.proxy.processor_done()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.proxy.processor_done()


class OriginProxy(Protocol):
    """A browser connection to one target's origin, proxied through one tunnel stream."""

    transport: Any

    def __init__(
        self,
        portal: IProxyPortal,
        target: str,
        gateway: str,
        host: str,
        peer: str,
        port: int = 0,
    ) -> None:
        self.portal = portal
        self.port = port
        self.target = target
        self.gateway = gateway
        self.host = host
        self.peer = peer
        self.stream: TunnelStream | None = None
        self.login: Login | None = None
        self._conn = self._parser()
        self._mirror = bytearray()
        self._forwarding = False
        self._blind = False
        self._upgrading = False
        self._held = bytearray()
        self._peek = b""
        self._answered = False
        self._closed = False
        self._producing = False
        self.bytes_down = 0

    def _parser(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    # -- the browser's bytes ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        if self._blind:
            assert self.stream is not None
            self.stream.write(data)
            return
        if self._upgrading:
            self._held += data
            return
        self._read(data)

    def _read(self, data: bytes) -> None:
        conn = self._conn
        conn.receive_data(data)
        self._mirror += data
        while not self._closed and not self._upgrading:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                self._local(400, "Bad Request", f"not a request the portal can read: {e}")
                return
            used = len(self._mirror) - len(conn.trailing_data[0])
            chunk = bytes(self._mirror[:used])
            del self._mirror[:used]
            if event is h11.NEED_DATA:
                self._body(chunk)
                return
            if isinstance(event, h11.Request):
                self._request(event)
            elif isinstance(event, h11.Data):
                self._body(chunk)
            elif isinstance(event, h11.EndOfMessage):
                self._body(chunk)
                self._message_done()
                conn = self._conn
            elif event is h11.PAUSED:  # pragma: no cover - a fresh parser per message
                return

    def _request(self, event: h11.Request) -> None:
        headers = list(event.headers)
        host = next((v.decode("latin-1") for k, v in headers if k == b"host"), "")
        if split_host(host, self.portal.domain) != (self.target, self.gateway):
            self._local(421, "Misdirected Request", "one connection serves one origin")
            return
        target = event.target.decode("latin-1")
        path = urlsplit(target).path
        if path == TICKET_PATH:
            self._ticket(target)
            return
        login = self.portal.login_for_pass(
            cookie_value(headers, PASS_COOKIE), self.gateway, self.target
        )
        if login is None or (self.login is not None and login is not self.login):
            back = (
                f"{self.portal.portal_origin()}open?gateway={quote(self.gateway)}"
                f"&target={quote(self.target)}&next={quote(target, safe='')}"
            )
            self._local(
                302,
                "Found",
                notice_page("Log in to the portal", "Opening this page needs the portal.", back),
                headers=[("Location", back)],
            )
            return
        if self.stream is None:
            try:
                self.stream = self.portal.open_stream(
                    login, self.gateway, self.target, self.peer, self.port
                )
            except Refused as refused:
                self._local(
                    403,
                    "Forbidden",
                    notice_page("Not opened", refused.reason, self.portal.portal_origin()),
                )
                return
            self.login = login
            self.portal.page_opened(login.engineer, self.gateway, self)
            self._attach(self.stream)
        if event.method == b"CONNECT":
            self._local(405, "Method Not Allowed", "the portal does not tunnel CONNECT")
            return
        upgrade = any(k == b"upgrade" for k, _ in headers)
        self._upgrading = upgrade
        self._peek = b""
        self._forwarding = True
        self.stream.write(self._head(event, headers, upgrade))

    def _head(self, event: h11.Request, headers: list[tuple[bytes, bytes]], upgrade: bool) -> bytes:
        """The request head as the processor gets it."""
        lines = [b"%s %s HTTP/%s" % (event.method, event.target, event.http_version)]
        for name, value in headers:
            if name in HOP_BY_HOP or name in DROPPED:
                continue
            if name == b"cookie":
                value = without_portal_cookies(value)
                if not value:
                    continue
            lines.append(name + b": " + value)
        if upgrade:
            kept = next(v for k, v in headers if k == b"upgrade")
            lines += [b"Connection: Upgrade", b"Upgrade: " + kept]
        lines += [
            b"X-Forwarded-For: " + self.peer.encode("latin-1"),
            b"X-Forwarded-Proto: https",
            b"X-Forwarded-Host: " + self.host.encode("latin-1"),
        ]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def _body(self, chunk: bytes) -> None:
        if chunk and self._forwarding and self.stream is not None:
            self.stream.write(chunk)

    def _message_done(self) -> None:
        self._forwarding = False
        rest = bytes(self._mirror)
        self._mirror = bytearray()
        self._conn = self._parser()
        if self._upgrading:
            self._held += rest
        elif rest:
            self._read(rest)

    def _ticket(self, target: str) -> None:
        query = parse_qs(urlsplit(target).query)
        ticket = (query.get("t") or [""])[0]
        next_path = (query.get("next") or ["/"])[0]
        if not local_path(next_path):
            next_path = "/"
        token = self.portal.redeem(ticket, self.gateway, self.target)
        if token is None:
            self._local(
                403,
                "Forbidden",
                notice_page(
                    "Link expired",
                    "This link was used or is too old; open the target from the portal again.",
                    self.portal.portal_origin(),
                ),
            )
            return
        cookie = f"{PASS_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict"
        self._local(
            303,
            "See Other",
            notice_page("Opening", "Opening the page.", next_path),
            headers=[("Location", next_path), ("Set-Cookie", cookie)],
        )

    def _local(
        self,
        status: int,
        reason: str,
        body: str,
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    ) -> None:
        """The portal's own answer; the connection ends after it (and any stream with it)."""
        self._closed = True
        self.transport.write(simple_answer(status, reason, body, headers=headers))
        stream, self.stream = self.stream, None
        if stream is not None and not stream.finished:
            stream.loseConnection()
        self._hang_up()

    def _hang_up(self) -> None:
        """Close the browser's connection once what was written has gone.

        A TLS transport with a producer registered never shuts down (it waits for the producer
        to be unregistered), so the stream stops being its producer first.
        """
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    # -- the processor's bytes -------------------------------------------------------------------

    def _attach(self, stream: TunnelStream) -> None:
        stream.attach(_Upstream(self))
        self.transport.registerProducer(stream, True)
        self._producing = True
        stream.registerProducer(self.transport, True)
        stream.response.addCallbacks(self._answered_ok, self._refused)
        stream.response.addErrback(lambda f: log.failure("portal: proxying", f))

    def _answered_ok(self, response: StreamResponse) -> None:
        self._answered = True

    def _refused(self, failure: Failure) -> None:
        if self._closed:
            return
        if failure.check(StreamRefused):
            refused = failure.value
            assert isinstance(refused, StreamRefused)
            title, text = "The gateway refused this page", f"{refused.reason} ({refused.token})"
        else:
            title, text = "The gateway did not answer", failure.getErrorMessage()
        self._local(502, "Bad Gateway", notice_page(title, text, self.portal.portal_origin()))

    def from_processor(self, data: bytes) -> None:
        if self._closed:
            return
        self.bytes_down += len(data)
        if self._upgrading and not self._blind:
            self._peek += data
            if len(self._peek) < len(b"HTTP/1.1 101"):
                self.transport.write(data)
                return
            held, self._held = bytes(self._held), bytearray()
            if self._peek[9:12] == b"101":
                self._blind = True  # the upgrade was taken: from now on bytes pass unread
                if held and self.stream is not None:
                    self.stream.write(held)
            else:
                # Refused (by the gateway or the processor): the connection is HTTP still,
                # and what the browser sends next is read, rewritten, as any request.
                self._upgrading = False
                self.transport.write(data)
                if held:
                    self._read(held)
                return
        self.transport.write(data)

    def processor_done(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hang_up()

    def end(self, why: str) -> None:
        """The session or login ended: cut the page's connection."""
        if self._closed:
            return
        self._closed = True
        if self.stream is not None and not self.stream.finished:
            self.stream.abortConnection()
        self._hang_up()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self._closed = True
        if self.login is not None:
            self.portal.page_closed(self.login.engineer, self.gateway, self)
        stream = self.stream
        if stream is not None and not stream.finished:
            stream.loseConnection()
