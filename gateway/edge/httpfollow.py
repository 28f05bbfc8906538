"""Follow the requests on an ``http`` target's streams: see each one, let it through or answer it.

For a ``kind = "http"`` target the gateway reads the request side of each engineer stream with a
maintained HTTP/1.1 parser, to decide each request on its own (a view-only session may only
``GET``, ``HEAD`` and ``OPTIONS``) and to record it.  It is a follower, not a proxy: the bytes it
lets through are exactly the bytes the engineer's browser sent, passed on as they come (a body is
never gathered, each piece goes on as it arrives), and the processor's answers are not changed.
A refused request gets the gateway's own answer (``403`` and a short HTML or JSON page); its body
is read and dropped, and the keep-alive connection carries on with the next request.

Parsers, measured on this project's (shared, 2-core) machine with a browser-like 400-byte
``GET`` head: ``h11`` 0.16 (pure Python, already installed with ``wsproto``) about 50 µs to read
it; ``httptools`` 0.9 (C, llhttp) about 0.5 µs.  Both are used, each where it is right:

- ``h11`` reads the request side in general, because it says exactly which bytes each event came
  from (``Connection.trailing_data``): that is what lets the follower pass a request's bytes on
  unchanged and cut the stream at request boundaries (a refused request's head and body go
  nowhere, the next request goes on); ``httptools`` has no such offsets.  Body bytes cost one
  copy.
- h11's 50 µs would be the whole per-request budget, so the common case has a fast path: a read
  that is exactly one request head with no body (a browser's ``GET``, one per read: one
  ``\r\n\r\n``, at its very end) is read by ``httptools`` alone, and taken only if it saw
  exactly one complete request in exactly those bytes, without body, upgrade or repeated header.
  A parser that saw the head end anywhere else would have seen a body or a second request, so
  the fast path cannot cut a stream where h11 would not; everything else goes to h11.
- The response side, where every byte of a bulk download passes, is only *peeked at* with
  ``httptools`` (no Python callback per body chunk): the status of each answer (for the audit),
  when it is complete (so that the gateway's own answers keep their place among pipelined ones)
  and whether an upgrade was taken.

`bench/http_follow_micro.py` measures what following costs per round trip and per GiB.

Upgrades: a request that asks for one (``Upgrade: websocket``) is let through or refused like
any other; once let through, the follower holds the engineer's next bytes until the processor
answers.  ``101`` means the connection now speaks another protocol, and from then on the bytes
pass both ways unread; any other answer and the follower reads HTTP requests again.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Any

import h11
import httptools
from attrs import define, frozen

from gateway.httppage import error_page

MAX_HEAD = 32 * 1024
"""Bytes of a request head (request line and headers): a longer one ends the stream."""
MAX_HELD = 256 * 1024
"""Bytes of a stream held while the processor answers an upgrade or earlier pipelined
requests: a client that sends more without waiting is cut off."""


@frozen
class RequestHead:
    """One request as the engineer's browser sent it."""

    method: str
    target: str
    """The request target as sent (``/page?x=1``)."""
    upgrade: str | None = None
    """The protocol asked for (``websocket``), when the request asks to upgrade."""
    accept: str = ""
    """The ``Accept`` header: a refusal is JSON when the client wants JSON."""
    has_body: bool = False
    """It says it has a body (``Content-Length`` above 0, or ``Transfer-Encoding``)."""

    @property
    def path(self) -> str:
        """The target with query values left out (``/trend?tag=&from=``): names, not values."""
        return path_without_values(self.target)


def path_without_values(target: str) -> str:
    path, sep, query = target.partition("?")
    path = path.split("#", 1)[0]
    if not sep:
        return path
    names = [part.split("=", 1)[0] for part in query.split("&") if part]
    return path + "?" + "&".join(f"{name}=" for name in names)


@frozen
class Refuse:
    """The gateway answers this request itself: ``status`` and a one-line reason."""

    status: int
    reason: str
    token: str = "refused"


Decide = Callable[[RequestHead], Refuse | None]
"""A request's verdict, taken when its head is complete: None lets it through."""


@define(eq=False)
class Exchange:
    """A request and what became of it."""

    head: RequestHead
    refused: Refuse | None = None
    status: int | None = None
    """The answer's status: the processor's (read from its answer's head) or the gateway's."""

    @property
    def forwarded(self) -> bool:
        return self.refused is None


@define(eq=False)
class _Answer:
    """The gateway's own answer, waiting for the processor's earlier answers to go out first."""

    data: bytes
    close: bool = False


class _Mode(enum.Enum):
    FOLLOW = "follow"
    HELD = "held"
    """Waiting for the processor: an upgrade's answer, or earlier answers before ours."""
    BLIND = "blind"
    """An upgrade was taken: bytes pass both ways unread."""
    ENDED = "ended"


class RequestFollower:
    """The engineer's side of one stream to an ``http`` target, read request by request.

    ``forward`` sends bytes on to the processor, ``answer`` writes the gateway's own answers to
    the engineer, ``close`` ends the engineer's stream once they are written (a malformed
    request), ``seen`` hears every exchange once its result is known (a refusal at once; a
    forwarded request when its answer's head arrives, or at the end of the stream).
    """

    def __init__(
        self,
        decide: Decide,
        *,
        forward: Callable[[bytes], None],
        answer: Callable[[bytes], None],
        close: Callable[[str], None],
        seen: Callable[[Exchange], None] | None = None,
        max_head: int = MAX_HEAD,
        max_held: int = MAX_HELD,
    ) -> None:
        self._decide = decide
        self._forward = forward
        self._answer = answer
        self._close = close
        self._seen = seen if seen is not None else (lambda exchange: None)
        self._max_head = max_head
        self._max_held = max_held
        self._conn = self._new_parser()
        self._mirror = bytearray()
        """Bytes given to the parser that no event has used yet (the same as its buffer)."""
        self._current: Exchange | None = None
        self._mode = _Mode.FOLLOW
        self._held = bytearray()
        self._queue: deque[Exchange | _Answer] = deque()
        """Forwarded requests waiting for the processor's answer, and our answers behind them."""
        self._unanswered: deque[Exchange] = deque()
        """Forwarded requests whose answer's head has not been seen (for the status)."""
        self._upgrade: Exchange | None = None
        self._responses = _ResponsePeek(self)
        self.ended_why: str | None = None
        self.switched_to: str | None = None
        """The protocol the connection was upgraded to (``websocket``), once it was."""
        self.fast_requests = 0
        """Requests read by the fast path (`_whole_request`)."""

    def _new_parser(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)

    @property
    def blind(self) -> bool:
        return self._mode is _Mode.BLIND

    # -- the engineer's bytes ------------------------------------------------------------------

    def request_bytes(self, data: bytes) -> None:
        mode = self._mode
        if mode is _Mode.BLIND:
            self._forward(data)
        elif mode is _Mode.HELD:
            self._held += data
            if len(self._held) > self._max_held:
                self._malformed(
                    f"the client sent more than {self._max_held} bytes without waiting for "
                    "the processor's answer"
                )
        elif mode is _Mode.FOLLOW:
            self._read(data)

    def _read(self, data: bytes) -> None:
        if not self._mirror and self._current is None and self._whole_request(data):
            return
        conn = self._conn
        conn.receive_data(data)
        self._mirror += data
        while self._mode is _Mode.FOLLOW:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                self._malformed(_protocol_error(e, self._max_head))
                return
            used = len(self._mirror) - len(conn.trailing_data[0])
            chunk = bytes(self._mirror[:used])
            del self._mirror[:used]
            if event is h11.NEED_DATA:
                self._body(chunk)  # a chunk size line, read before its data comes
                return
            if isinstance(event, h11.Request):
                self._request(event, chunk)
            elif isinstance(event, h11.Data):
                self._body(chunk)
            elif isinstance(event, h11.EndOfMessage):
                self._body(chunk)
                self._message_done()
                conn = self._conn
            elif event is h11.PAUSED:  # pragma: no cover - each message gets a fresh parser
                return

    def _whole_request(self, data: bytes) -> bool:
        """The common case, read fast: ``data`` is exactly one request, its head and its whole
        ``Content-Length`` body if it has one (a browser's ``GET``, a form's or an API's small
        ``POST``, one per read).  httptools reads it; anything else (a chunked body, a body split
        across reads, an upgrade, more than one request, a head split across reads, anything
        httptools or the checks here doubt) is left to h11, so both parsers must agree for this
        path to count."""
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 > self._max_head:
            return False
        body_size = len(data) - end - 4
        probe = _HeadProbe()
        parser = httptools.HttpRequestParser(probe)
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return False
        if (
            probe.begun != 1
            or probe.complete != 1
            or probe.url is None
            or probe.repeated
            or probe.body_bytes != body_size
        ):
            return False
        headers = probe.headers
        method = parser.get_method()
        length = headers.get(b"content-length", b"0").strip()
        if (
            parser.should_upgrade()
            or method == b"CONNECT"
            or b"upgrade" in headers
            or b"transfer-encoding" in headers
            or not length.isdigit()
            or len(length) > 12
            or int(length) != body_size
            or (parser.get_http_version() == "1.1" and b"host" not in headers)
        ):
            return False
        head = RequestHead(
            method=method.decode("ascii", "replace"),
            target=probe.url.decode("latin-1"),
            accept=headers.get(b"accept", b"").decode("latin-1"),
            has_body=body_size > 0,
        )
        self.fast_requests += 1
        exchange = Exchange(head, refused=self._decide(head))
        if exchange.refused is None:
            self._forward(data)
            self._queue.append(exchange)
            self._unanswered.append(exchange)
        else:
            exchange.status = exchange.refused.status
            self._seen(exchange)
            self._give(_Answer(refusal_page(exchange.refused, head)))
        return True

    def _request(self, event: h11.Request, chunk: bytes) -> None:
        headers = {name: value for name, value in event.headers}
        upgrade = headers.get(b"upgrade")
        method = event.method.decode("ascii", "replace")
        head = RequestHead(
            method=method,
            target=event.target.decode("latin-1"),
            upgrade=None if upgrade is None else upgrade.decode("latin-1").strip().lower(),
            accept=headers.get(b"accept", b"").decode("latin-1"),
            has_body=b"transfer-encoding" in headers
            or headers.get(b"content-length", b"0").strip() not in (b"0", b""),
        )
        exchange = Exchange(head, refused=self._decide(head))
        self._current = exchange
        if exchange.refused is None:
            self._forward(chunk)
            self._queue.append(exchange)
            self._unanswered.append(exchange)
        else:
            exchange.status = exchange.refused.status
            self._seen(exchange)

    def _body(self, chunk: bytes) -> None:
        current = self._current
        if chunk and current is not None and current.refused is None:
            self._forward(chunk)

    def _message_done(self) -> None:
        """A request ended: answer a refused one, wait on an upgrade, start the next."""
        current, self._current = self._current, None
        rest = bytes(self._mirror)
        self._mirror = bytearray()
        self._conn = self._new_parser()
        if current is not None and current.refused is not None:
            data = refusal_page(current.refused, current.head)
            self._give(_Answer(data))
        elif current is not None and (current.head.upgrade or current.head.method == "CONNECT"):
            self._upgrade = current
            self._mode = _Mode.HELD
        if self._mode is _Mode.HELD:
            self._held += rest
        elif rest:
            self._read(rest)

    def _give(self, answer: _Answer) -> None:
        if self._responses.lost and self._queue:
            self._end_lost()
        elif self._queue:
            self._queue.append(answer)
            self._mode = _Mode.HELD  # nothing more reaches the processor until ours is out
        else:
            self._write(answer)

    def _write(self, answer: _Answer) -> None:
        self._answer(answer.data)
        if answer.close:
            self._mode = _Mode.ENDED
            self._close(self.ended_why or "")

    def _malformed(self, why: str) -> None:
        """End the stream: nothing more reaches the processor; the engineer reads why."""
        if self._mode is _Mode.ENDED:
            return
        self.ended_why = why
        self._held = bytearray()
        self._mirror = bytearray()
        self._current = None
        page = refusal_page(Refuse(400, why, "bad-request"), None, close=True)
        self._mode = _Mode.ENDED
        if self._queue:
            self._queue.append(_Answer(page, close=True))
        else:
            self._write(_Answer(page, close=True))

    # -- the processor's bytes -------------------------------------------------------------------

    def response_bytes(self, data: bytes) -> None:
        """The processor's bytes, after they were passed on unchanged: peeked at, never held."""
        if self._mode is not _Mode.BLIND:
            self._responses.feed(data)

    def _response_head(self, status: int) -> None:
        if 100 <= status < 200 and status != 101:
            return  # 100 Continue and friends: the real answer follows
        if self._unanswered:
            exchange = self._unanswered.popleft()
            exchange.status = status
            self._seen(exchange)

    def _response_done(self, status: int) -> None:
        if 100 <= status < 200 and status != 101:
            return
        if self._queue and isinstance(self._queue[0], Exchange):
            exchange = self._queue.popleft()
            if exchange is self._upgrade:
                self._upgrade = None
                if status == 101:
                    self._go_blind(exchange)
                    return
        while self._queue and isinstance(self._queue[0], _Answer):
            answer = self._queue.popleft()
            assert isinstance(answer, _Answer)
            self._write(answer)
        if self._mode is _Mode.HELD and not self._queue and self._upgrade is None:
            self._mode = _Mode.FOLLOW
            held, self._held = bytes(self._held), bytearray()
            if held:
                self._read(held)

    def _go_blind(self, exchange: Exchange) -> None:
        self.switched_to = exchange.head.upgrade or exchange.head.method.lower()
        self._mode = _Mode.BLIND
        held, self._held = bytes(self._held), bytearray()
        if held:
            self._forward(held)

    def _lost_track(self) -> None:
        """The processor's answers could not be followed: nothing of ours can be placed among
        them, so a stream that waits to place an answer (or on an upgrade) ends now, and one
        that needs an answer of ours later ends then (`_give`)."""
        self._responses.lost = True
        if self._upgrade is not None or any(isinstance(x, _Answer) for x in self._queue):
            self._end_lost()

    def _end_lost(self) -> None:
        self._queue.clear()
        self._held = bytearray()
        self._mode = _Mode.ENDED
        self.ended_why = "the gateway could not follow the processor's answers"
        self._close(self.ended_why)

    def finish(self) -> None:
        """The stream ended: exchanges still waiting for their answer are told without one."""
        while self._unanswered:
            self._seen(self._unanswered.popleft())


class _HeadProbe:
    """What httptools tells of one request head (callbacks only; it keeps no state of ours)."""

    def __init__(self) -> None:
        self.begun = 0
        self.complete = 0
        self.url: bytes | None = None
        self.body_bytes = 0
        self.repeated = False
        self.headers: dict[bytes, bytes] = {}

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_url(self, url: bytes) -> None:
        self.url = url if self.url is None else self.url + url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in self.headers:  # a repeated header: only h11's full reading will do
            self.headers[name] += b", " + value
            self.repeated = True
        else:
            self.headers[name] = value

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        self.complete += 1


class _ResponsePeek:
    """Reads the processor's answers' heads and ends with httptools; bodies are skipped in C."""

    def __init__(self, follower: RequestFollower) -> None:
        self._follower = follower
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self._head_answered = False
        self._tail = b""
        """The last bytes fed, to find a HEAD answer's end across two reads."""
        self.lost = False

    def feed(self, data: bytes) -> None:
        if self.lost:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # 101: told by on_headers_complete; nothing after it is HTTP
        except httptools.HttpParserError:
            if self._follower.blind:
                return  # a CONNECT was taken: what follows is no HTTP
            if not self._head_answered:
                self._follower._lost_track()
                return
            # The answer to a HEAD has no body whatever its Content-Length says; llhttp cannot
            # be told, so its callback stopped it and a fresh parser reads what follows the head.
            self._head_answered = False
            self._parser = httptools.HttpResponseParser(self)
            rest = (self._tail + data).split(b"\r\n\r\n", 1)
            self._tail = b""
            self._follower._response_done(self._status)
            if len(rest) == 2 and rest[1]:
                self.feed(rest[1])
            return
        self._tail = data[-3:]

    # httptools callbacks

    def on_headers_complete(self) -> None:
        self._status = status = self._parser.get_status_code()
        follower = self._follower
        method = follower._unanswered[0].head.method if follower._unanswered else ""
        follower._response_head(status)
        if method == "HEAD" and status >= 200:
            self._head_answered = True
            raise _HeadAnswered
        if status == 101:
            follower._response_done(101)
        elif method == "CONNECT" and 200 <= status < 300:
            follower._response_done(101)  # a tunnel now, as after an upgrade
            raise _HeadAnswered  # stop reading: the rest is the tunnel's

    def on_message_complete(self) -> None:
        if self._status != 101:
            self._follower._response_done(self._status)


class _HeadAnswered(Exception):
    pass


def _protocol_error(error: h11.RemoteProtocolError, max_head: int) -> str:
    text = str(error) or "malformed request"
    if "buffer" in text.lower() and "too long" in text.lower():
        return f"the request's head is longer than {max_head} bytes"
    return f"the gateway could not read the request: {text}"


def refusal_page(refused: Refuse, head: RequestHead | None, *, close: bool = False) -> bytes:
    """The gateway's own answer: a short page (JSON when the client asked for JSON)."""
    return error_page(
        refused.status,
        refused.token,
        refused.reason,
        wants_json=head is not None and "json" in head.accept.lower(),
        head_only=head is not None and head.method == "HEAD",
        close=close,
    )


def describe(exchange: Exchange) -> dict[str, Any]:
    """An exchange as the audit trail and the status JSON show it."""
    refused = exchange.refused
    return {
        "method": exchange.head.method,
        "path": exchange.head.path,
        "result": "forwarded" if refused is None else "refused",
        "why": None if refused is None else refused.reason,
        "status": exchange.status,
        **({"upgrade": exchange.head.upgrade} if exchange.head.upgrade else {}),
    }


__all__ = [
    "MAX_HEAD",
    "Decide",
    "Exchange",
    "Refuse",
    "RequestFollower",
    "RequestHead",
    "describe",
    "path_without_values",
    "refusal_page",
]
