# Twisted's web and endpoint APIs are only partly annotated; strict mode would flag every call.
# mypy: disable-error-code="no-untyped-call"
"""A stand-in for an industrial processor's web interface.

`gateway demo`, the end-to-end tests and the benchmark need something behind the gateway that
behaves like the processors the product exists for: a page with a live WebSocket (processor UIs
stream status that way), large downloads and uploads (logs, images, firmware) and a way to see
which request headers actually arrive after relay, tunnel and gateway. Everything here streams:
a 64 GiB download or a multi-GiB upload costs a few MiB of memory, so the processor is never the
bottleneck or the memory hog when the tunnel is measured.

Routes: ``GET /`` page, ``GET /ws`` echo WebSocket, ``GET /download?size=N``, ``POST /upload``,
``GET /headers``; anything else is 404. Every response carries ``Cache-Control: no-store``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from html import escape
from importlib.resources import files
from io import BytesIO
from typing import Any, Final

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from zope.interface import implementer

from gateway.config import parse_address

__all__ = [
    "CHUNK_SIZE",
    "MAX_DOWNLOAD_SIZE",
    "PATTERN_PERIOD",
    "ListenAddressError",
    "ProcessorRequest",
    "parse_listen",
    "pattern_bytes",
    "processor_site",
    "run_processor",
]

log = Logger()

PATTERN_PERIOD: Final = 251
"""Byte i of a download is ``i % 251``: a prime period, so a lost, repeated or reordered block of
any power-of-two size shows up as a mismatch."""

CHUNK_SIZE: Final = PATTERN_PERIOD * 4096
"""About 1 MiB per write. A multiple of the period, so every full chunk starts at pattern offset 0
and is the very same precomputed bytes object: no copying, no per-byte Python on the hot path."""

MAX_DOWNLOAD_SIZE: Final = 2**40
"""1 TiB: far beyond any benchmark, small enough that a typo is refused rather than served."""

_TURN_BYTES: Final = 4 * CHUNK_SIZE
"""Most bytes written in one reactor turn when the consumer never pauses us (a transport without
flow control): then we yield to the reactor instead of writing the whole body in one go."""

_BLOCK: Final = bytes(range(PATTERN_PERIOD)) * (CHUNK_SIZE // PATTERN_PERIOD + 1)
_CHUNK: Final = _BLOCK[:CHUNK_SIZE]

_UPLOAD_READ: Final = 1024 * 1024


def pattern_bytes(start: int, length: int) -> bytes:
    """Bytes ``start`` to ``start + length`` of every download body (``length <= CHUNK_SIZE``).

    Tests and the benchmark use it to check what arrived without repeating the pattern's rule.
    """
    if not 0 <= length <= CHUNK_SIZE:
        raise ValueError(f"length must be 0..{CHUNK_SIZE}, got {length}")
    offset = start % PATTERN_PERIOD
    if offset == 0 and length == CHUNK_SIZE:
        return _CHUNK
    return _BLOCK[offset : offset + length]


class ListenAddressError(ValueError):
    """The listen address is not ``IP:PORT`` (IPv6 as ``[IP]:PORT``); the message is one line."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8000"``, ``"[::1]:8000"`` or ``"localhost:8000"`` -> ``(ip, port)``.

    The one ``host:port`` rule is `gateway.config.parse_address`'s.  On top of it: listening
    needs an interface address, not a name to resolve, so only ``localhost`` is accepted besides
    IP literals; port 0 picks a free port (tests use that); and the text is taken as given, not
    stripped, since it comes from one command-line argument.
    """
    if listen != listen.strip():
        raise ListenAddressError(f"listen address {listen!r} has spaces around it")
    try:
        address = parse_address(listen, allow_port_zero=True)
    except ValueError as e:
        raise ListenAddressError(f"listen address {listen!r}: {e}") from None
    if address.host == "localhost":
        return "127.0.0.1", address.port
    if not address.is_ip:
        raise ListenAddressError(
            f"listen address {listen!r}: {address.host!r} is not an IP address"
        )
    return str(ipaddress.ip_address(address.host)), address.port


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ProcessorRequest(Request):
    """A request that hashes its body as it arrives instead of keeping it.

    Twisted's own `Request` spools a body to a temporary file, so a multi-GiB upload would fill
    the edge PC's disk and hashing it afterwards would block the reactor. No route here needs the
    body itself, only its size and SHA-256, so each chunk is counted, hashed and dropped; the
    body costs no memory and no disk however large it is. ``content`` stays an empty file so
    that Twisted's form parsing finds nothing to parse.

    It also marks every response ``Cache-Control: no-store``, error pages included: a browser
    must never show yesterday's processor state, or a cached page when the tunnel is down.
    """

    body_size: int
    """Bytes of request body received so far."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.body_size = 0
        self._body_sha256 = hashlib.sha256()

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        self.body_size += len(data)
        self._body_sha256.update(data)

    def body_sha256(self) -> str:
        """Hex SHA-256 of the body received so far (all of it once the request is processed)."""
        return self._body_sha256.hexdigest()

    def process(self) -> None:
        self.setHeader(b"Cache-Control", b"no-store")
        super().process()


class _Route(Resource):
    """A resource with nothing below it: deeper paths are 404 (Twisted's default is deprecated)."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


class _EchoSocket(WebSocketResource):
    """``/ws``; like `_Route`, nothing lives below it."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


def _text(request: Request, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return (message + "\n").encode("utf-8")


def _json(request: Request, value: object) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(value, indent=2).encode("utf-8") + b"\n"


def _address(address: IAddress | None) -> str:
    if isinstance(address, IPv4Address | IPv6Address):
        return _netloc(address.host, address.port)
    return str(address)


class _Page(_Route):
    """The processor's web UI: one self-contained page (the plant has no internet)."""

    def __init__(self, page: bytes) -> None:
        super().__init__()
        self._page = page

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return self._page


def _load_page(name: str, ws_port: int | None = None) -> bytes:
    """The page; with ``ws_port`` its WebSocket goes to that port of the page's own host name."""
    template = files(__package__ or "gateway.demo").joinpath("processor.html").read_text("utf-8")
    page = template.replace("__PROCESSOR_NAME__", escape(name))
    return page.replace("__WS_PORT__", "" if ws_port is None else str(int(ws_port))).encode()


class _Echo:
    """Sends every WebSocket message straight back, text as text and binary as binary.

    Backpressure: while the HTTP request that became this WebSocket is open, Twisted's
    `HTTPChannel` is the connection's producer and never stops reading, so a client that sends
    without reading would make us buffer its echoes without bound. The connection becomes its own
    producer instead: when its send buffer is full it stops reading until the client catches up.
    (Measured: a client that sends 2 GiB without reading grows the processor by 2 GiB without
    this, by nothing with it.)
    """

    def __init__(self, connection: ITransport | None) -> None:
        self._connection = connection
        self._transport: WebSocketTransport | None = None

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self._transport = transport
        producer = IPushProducer(self._connection, None)
        if producer is not None:
            transport.detachProducer()
            transport.attachProducer(producer)

    def negotiationFinished(self) -> None:
        pass

    def textMessageReceived(self, message: str) -> None:
        assert self._transport is not None
        self._transport.sendTextMessage(message)

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        assert self._transport is not None
        self._transport.sendBytesMessage(bytes(data))

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        self._transport = None


class _EchoFactory:
    def buildProtocol(self, request: Request) -> _Echo:
        return _Echo(request.channel.transport)


@implementer(IPushProducer)
class _PatternBody:
    """Streams a download body as the client takes it.

    The transport pauses us when its send buffer is full and resumes us when it has drained, so a
    slow client holds at most about one chunk in the processor. If the client goes away we stop;
    we never build the body in memory, so any size up to `MAX_DOWNLOAD_SIZE` costs the same.
    """

    def __init__(self, request: Request, size: int, clock: IReactorTime) -> None:
        self._request = request
        self._size = size
        self._clock = clock
        self._sent = 0
        self._paused = False
        self._done = False
        self._writing = False
        self._later: IDelayedCall | None = None

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(self._client_gone)
        self._write_some()

    def pauseProducing(self) -> None:
        self._paused = True
        self._cancel_later()

    def resumeProducing(self) -> None:
        if self._done:
            return
        self._paused = False
        if not self._writing and self._later is None:
            self._write_some()

    def stopProducing(self) -> None:
        self._stop()

    def _client_gone(self, reason: Failure) -> None:
        self._stop()

    def _stop(self) -> None:
        self._done = True
        self._cancel_later()

    def _cancel_later(self) -> None:
        if self._later is not None:
            self._later.cancel()
            self._later = None

    def _write_some(self) -> None:
        """Write until paused, done, or this turn's budget is spent (then continue next turn)."""
        self._later = None
        budget = _TURN_BYTES
        self._writing = True
        try:
            while not (self._paused or self._done) and self._sent < self._size and budget > 0:
                length = min(CHUNK_SIZE, self._size - self._sent)
                chunk = pattern_bytes(self._sent, length)
                self._sent += length
                budget -= length
                self._request.write(chunk)
        finally:
            self._writing = False
        if self._done:
            return
        if self._sent == self._size:
            self._done = True
            self._request.unregisterProducer()
            self._request.finish()
        elif not self._paused:
            self._later = self._clock.callLater(0, self._write_some)


def _download_size(request: Request) -> int | str:
    """The requested size, or a one-line reason why it is not acceptable."""
    values = (request.args or {}).get(b"size", [])
    if not values:
        return "missing size: use /download?size=BYTES"
    if len(values) > 1:
        return "size given more than once"
    raw = values[0]
    shown = repr(raw[:40].decode("latin-1"))
    if re.fullmatch(rb"[0-9]+", raw) is None:
        return f"size must be a whole number of bytes (0 to {MAX_DOWNLOAD_SIZE}), got {shown}"
    size = int(raw) if len(raw) <= 20 else MAX_DOWNLOAD_SIZE + 1
    if size > MAX_DOWNLOAD_SIZE:
        return f"size must be at most {MAX_DOWNLOAD_SIZE} bytes, got {shown}"
    return size


class _Download(_Route):
    """``GET /download?size=N``: N bytes where byte i is ``i % 251``, with Content-Length."""

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__()
        self._clock = clock

    def _prepare(self, request: Request) -> int | bytes:
        size = _download_size(request)
        if isinstance(size, str):
            return _text(request, 400, size)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Length", b"%d" % size)
        return size

    def render_HEAD(self, request: Request) -> bytes:
        """Headers only; without this Twisted would fake HEAD by streaming the body to nowhere."""
        size = self._prepare(request)
        return size if isinstance(size, bytes) else b""

    def render_GET(self, request: Request) -> bytes | int:
        size = self._prepare(request)
        if isinstance(size, bytes):
            return size
        if size == 0:
            return b""
        _PatternBody(request, size, self._clock).start()
        return NOT_DONE_YET


class _Upload(_Route):
    """``POST /upload``: size and SHA-256 of the body, to check that bytes arrived intact."""

    def render_POST(self, request: Request) -> bytes:
        if isinstance(request, ProcessorRequest):
            size, digest = request.body_size, request.body_sha256()
        else:  # another request factory kept the body: hash what it kept
            sha256, size = hashlib.sha256(), 0
            assert request.content is not None
            request.content.seek(0)
            while block := request.content.read(_UPLOAD_READ):
                sha256.update(block)
                size += len(block)
            digest = sha256.hexdigest()
        return _json(request, {"bytes": size, "sha256": digest})


class _Headers(_Route):
    """``GET /headers``: what reached the processor, to see what relay and gateway pass on.

    Header names are Twisted's canonical spelling (``User-Agent``); a header sent more than
    once is a list of its values in order. ``method``, ``path`` (without the query) and
    ``client`` (the peer, ``host:port``) are lower case, so they never clash with a header.
    """

    def render_GET(self, request: Request) -> bytes:
        seen: dict[str, str | list[str]] = {
            "method": (request.method or b"").decode("latin-1"),
            "path": (request.path or b"").decode("latin-1"),
            "client": _address(request.getClientAddress()),
        }
        for name, values in request.requestHeaders.getAllRawHeaders():
            texts = [value.decode("latin-1") for value in values]
            seen[name.decode("latin-1")] = texts[0] if len(texts) == 1 else texts
        return _json(request, seen)


def processor_site(
    *, clock: IReactorTime, name: str = "Demo vision processor", ws_port: int | None = None
) -> Site:
    """The demo processor's web site, ready for any listening endpoint.

    ``clock`` runs the site's timeouts and continues downloads on a transport that never pushes
    back: the reactor the site runs on (tests pass a `Clock`).
    """
    root = _Route()
    root.putChild(b"", _Page(_load_page(name, ws_port)))
    root.putChild(b"ws", _EchoSocket(_EchoFactory()))
    root.putChild(b"download", _Download(clock))
    root.putChild(b"upload", _Upload())
    root.putChild(b"headers", _Headers())
    return Site(root, requestFactory=ProcessorRequest, reactor=clock)


async def run_processor(reactor: IReactorTCP, listen: str, ws_port: int | None = None) -> None:
    """Serve the demo processor on ``listen`` (``HOST:PORT``, ``[IPv6]:PORT``) until cancelled.

    Raises `ListenAddressError` (a `ValueError`) for a malformed address before listening.
    """
    host, port = parse_listen(listen)
    site = processor_site(clock=IReactorTime(reactor), ws_port=ws_port)
    if ":" in host:
        endpoint: TCP4ServerEndpoint | TCP6ServerEndpoint = TCP6ServerEndpoint(
            reactor, port, interface=host
        )
    else:
        endpoint = TCP4ServerEndpoint(reactor, port, interface=host)
    listening = await endpoint.listen(site)
    bound = listening.getHost()
    if isinstance(bound, IPv4Address | IPv6Address):
        port = bound.port
    log.info("demo processor listening on {url}", url=f"http://{_netloc(host, port)}/")
    try:
        await Deferred()
    finally:
        await maybeDeferred(listening.stopListening)
