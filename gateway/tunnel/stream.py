"""One tunnel stream, presented to the rest of the product as a half-closeable transport.

A stream looks like a TCP connection to whoever holds it: ``write``, ``loseWriteConnection``,
``loseConnection``, ``abortConnection`` and producer registration; what arrives on it is delivered
to an attached ``IProtocol`` (``dataReceived``, ``readConnectionLost``, ``connectionLost``).  So the
same splice joins a stream to a processor's TCP connection on the gateway, to another stream on the
relay, and to a browser's connection in ``gateway connect``.

Backpressure never pauses the shared connection.  Inbound, a stream whose consumer paused it
withholds its WINDOW_UPDATEs, so the sender stops after one window (the per-stream memory bound).
Outbound, a stream whose queue passes its connection's ``high_water`` pauses its producer (e.g.
stops reading from the processor) until the connection's fair scheduler has drained it below a
quarter of that.

The stream owns its queue and its flags; the connection carrying it (a ``StreamOwner``, see
owner.py) takes bytes with ``take`` and tells it what happened through the methods at the end of
the class.  This module never imports the connection.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen
from h2.errors import ErrorCodes
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.logsafe import peer_text
from gateway.tunnel.errors import StreamReset
from gateway.tunnel.h2tuning import START_STREAM_WINDOW
from gateway.tunnel.owner import StreamOwner
from gateway.wire import Refusal, StreamRefused, refusal_headers, refused_from

log = Logger()

HIGH_WATER = 1024 * 1024
"""The most queued outbound bytes at which a stream's producer is paused: one maximum-size frame
(a fast path, whose peer's stream window has grown to 4 MiB or more)."""
LOW_WATER = HIGH_WATER // 4
MIN_HIGH_WATER = 64 * 1024
"""The fewest: on any path a queue this long refills faster than a credit batch drains it."""


def high_water_for(peer_window: int) -> int:
    """Queued bytes at which a stream pauses its producer, given the peer's stream window.

    More than a quarter of the window (the peer's credit batch) only waits: the window lets
    nothing more out until the next credit.  On a slow path the window stays small, and bytes
    queued here would be bytes an engineer's application believes sent (an upload's tail) or a
    processor's bytes read ahead of a slow engineer.
    """
    return min(HIGH_WATER, max(MIN_HIGH_WATER, peer_window // 4))


STREAM_CREDIT_BATCH = START_STREAM_WINDOW // 4
"""Consumed bytes a stream collects before it sends a WINDOW_UPDATE for them (fewer frames), on a
connection whose windows have not grown: the owner's ``credit_batch`` is a quarter of its
current window.  Less than a batch is credited by the connection's idle credit
(``StreamOwner.owe_credit``)."""
REASON_LOG_LIMIT = 200
_REFUSED_LINE = "stream {sid} to '{target}' refused: {reason}"


@frozen
class StreamRequest:
    """What the opener of a stream asked for (the request's HTTP/2 headers)."""

    method: str
    authority: str
    path: str
    headers: dict[str, str]

    @classmethod
    def from_h2(cls, raw: list[tuple[bytes, bytes]]) -> StreamRequest:
        pseudo: dict[str, str] = {}
        headers: dict[str, str] = {}
        for name, value in raw:
            text = value.decode("utf-8", "replace")
            if name.startswith(b":"):
                pseudo[name.decode("ascii", "replace")] = text
            else:
                headers[name.decode("ascii", "replace")] = text
        return cls(
            method=pseudo.get(":method", ""),
            authority=pseudo.get(":authority", ""),
            path=pseudo.get(":path", ""),
            headers=headers,
        )


@frozen
class StreamResponse:
    status: int
    headers: dict[str, str]


def response_from_h2(raw: list[tuple[bytes, bytes]]) -> StreamResponse:
    status = 0
    headers: dict[str, str] = {}
    for name, value in raw:
        if name == b":status":
            status = int(value) if value.isdigit() else 0
        elif not name.startswith(b":"):
            headers[name.decode("ascii", "replace")] = value.decode("utf-8", "replace")
    return StreamResponse(status, headers)


def refusal_from(response: StreamResponse) -> StreamRefused:
    return refused_from(response.status, response.headers)


@implementer(IConsumer, IPushProducer)
class TunnelStream:
    """A byte stream multiplexed on a ``TunnelConnection``.

    Thousands sit idle on a busy relay, so a stream is kept small: slots, and no Deferred or
    buffers until something needs them (an idle stream costs ~0.5 KiB here, h2's own state aside).

    The connection's scheduler reads ``queued``, ``headers_sent``, ``end_requested``,
    ``local_closed`` and ``finished``; only the stream itself changes them.
    """

    __slots__ = (
        "_credit_onward",
        "_owed",
        "_pending",
        "_producer",
        "_producer_paused",
        "_queue",
        "_response",
        "_sink_paused",
        "_uncredited",
        "bytes_acknowledged",
        "bytes_framed",
        "bytes_received",
        "bytes_sent",
        "connection",
        "delivered_via",
        "disconnecting",
        "end_requested",
        "ended_cleanly",
        "epoch_credited",
        "epoch_started",
        "finished",
        "headers_sent",
        "local_closed",
        "protocol",
        "queued",
        "remote_closed",
        "request",
        "reset_code",
        "stream_id",
    )

    def __init__(
        self,
        connection: StreamOwner[TunnelStream],
        stream_id: int,
        request: StreamRequest | None,
    ) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.request = request
        self._response: Deferred[StreamResponse] | None = None
        self.protocol: IProtocol | None = None
        self.bytes_received = 0
        self.bytes_sent = 0  # written to the stream (some may still be queued)
        self.bytes_framed = 0  # sent in DATA frames
        self.bytes_acknowledged = 0  # credited back by the other end (its consumer took them)
        # Relay: credit our sender when the stream we feed (``delivered_via``) is acknowledged,
        # not when we hand bytes to it (see credit_as_delivered_by).
        self.delivered_via: TunnelStream | None = None
        self._credit_onward: TunnelStream | None = None
        # The window's auto-tuning (the connection's ``credit_stream``): when the epoch began
        # (-1: no data yet) and what has been credited in it.
        self.epoch_started = -1.0
        self.epoch_credited = 0
        self.disconnecting = False
        # Outbound: what the application wrote and the scheduler has not sent yet (a short list:
        # the producer is paused once it holds the connection's high_water bytes).
        self._queue: list[bytes] = []
        self.queued = 0
        self.headers_sent = request is None  # a client's request headers go out at open
        self.end_requested = False
        self.local_closed = False
        self.remote_closed = False
        self.finished = False
        self.ended_cleanly = False  # both directions closed, no reset
        self.reset_code: int | None = None
        # Inbound flow control.
        self._pending: list[tuple[bytes, int]] | None = None  # arrived before attach()
        self._sink_paused = False
        self._owed = 0  # consumed while our consumer paused us: credited on resumeProducing()
        self._uncredited = 0  # consumed and not credited yet (see STREAM_CREDIT_BATCH)
        # Our producer (e.g. the processor's TCP transport), paused while the queue is full.
        self._producer: IPushProducer | None = None
        self._producer_paused = False

    @classmethod
    def opened(cls, owner: StreamOwner[TunnelStream], stream_id: int, *, end: bool) -> TunnelStream:
        """A stream we opened: our request headers went out already, with END_STREAM if ``end``
        (then nothing more is sent on it)."""
        stream = cls(owner, stream_id, None)
        if end:
            stream.local_closed = stream.end_requested = True
        return stream

    @classmethod
    def requested(
        cls,
        owner: StreamOwner[TunnelStream],
        stream_id: int,
        request: StreamRequest,
        *,
        ended: bool,
    ) -> TunnelStream:
        """A stream the other end opened with ``request``; ``ended``: it sends nothing more."""
        stream = cls(owner, stream_id, request)
        stream.remote_closed = ended
        return stream

    def __repr__(self) -> str:
        return f"<TunnelStream {self.stream_id} {self.request.authority if self.request else ''}>"

    @property
    def response(self) -> Deferred[StreamResponse]:
        """Fires with the other end's answer to a stream we opened (errback: refused, reset)."""
        if self._response is None:
            self._response = Deferred()
            if self.finished:
                self._response.errback(StreamReset("stream closed before a response"))
        return self._response

    def _answer(self, outcome: StreamResponse | Exception) -> None:
        if self.request is not None:
            return  # we answered this stream ourselves: nobody waits for a response
        response = self.response
        if response.called:
            return
        if isinstance(outcome, Exception):
            response.errback(outcome)
        else:
            response.callback(outcome)

    # -- answering a request (server side) -----------------------------------------------------

    def accept(self, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """Answer 200: the stream is open for data both ways."""
        self.respond(200, headers or [])

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], end: bool = False) -> None:
        if self.headers_sent or self.finished:
            return
        self.headers_sent = True
        self.connection.send_response(self, status, headers, end)
        if end:
            self.local_closed = True
            self.end_requested = True
        self.connection.schedule(self)

    def refuse(self, refusal: Refusal, reason: str) -> None:
        """Answer with an error status and a reason, then stop the opener sending."""
        if self.finished:
            return
        # The authority and the reason (which may name what the peer asked for) are the peer's
        # bytes: escaped and cut.  A peer can cause this line at will (a bad token per stream):
        # rate-limited when the connection shares its program's lines (gateway.logsafe).
        fields = {
            "sid": self.stream_id,
            "target": peer_text(self.request.authority if self.request else ""),
            "reason": peer_text(reason, REASON_LOG_LIMIT),
        }
        lines = getattr(self.connection, "lines", None)
        if lines is None:
            log.info(_REFUSED_LINE, **fields)
        else:
            lines.info(log, _REFUSED_LINE, **fields)
        self._queue.clear()
        self.queued = 0
        self.respond(
            refusal.status,
            refusal_headers(refusal.token, reason),
            end=True,
        )
        self.reset(ErrorCodes.NO_ERROR)

    # -- the transport face ----------------------------------------------------------------------

    def attach(self, protocol: IProtocol) -> None:
        """Deliver this stream's data to ``protocol`` from now on (it becomes the transport)."""
        self.protocol = protocol
        protocol.makeConnection(self)  # type: ignore[arg-type]
        pending, self._pending = self._pending or [], None
        for data, flow in pending:
            if self.finished:
                break
            self._deliver(data, flow)
        if self.remote_closed and not self.finished:
            self._deliver_read_closed()
        self._maybe_finish()

    def write(self, data: bytes) -> None:
        if self.local_closed or self.end_requested or self.finished or not data:
            return
        self._queue.append(data)
        self.queued += len(data)
        self.bytes_sent += len(data)
        if (
            self.queued >= self.connection.high_water
            and self._producer is not None
            and not self._producer_paused
        ):
            self._producer_paused = True
            self._producer.pauseProducing()
        self.connection.schedule(self)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        """Half-close: END_STREAM once everything written so far has been sent."""
        if self.end_requested or self.finished:
            return
        self.end_requested = True
        self.connection.schedule(self)

    def loseConnection(self) -> None:
        """Close our direction after the queue drains; the stream ends when both are closed."""
        self.disconnecting = True
        self.loseWriteConnection()
        self._maybe_finish()

    def abortConnection(self) -> None:
        self.reset(ErrorCodes.CANCEL)

    def reset(self, code: int = ErrorCodes.CANCEL) -> None:
        if self.finished:
            return
        self.connection.reset_stream(self, code)
        self._finish(
            Failure(ConnectionDone())
            if code == ErrorCodes.NO_ERROR
            else Failure(StreamReset(f"stream reset by this side ({_code_name(code)})"))
        )

    def getPeer(self) -> Any:
        return self.connection.transport.getPeer() if self.connection.transport else None

    def getHost(self) -> Any:
        return self.connection.transport.getHost() if self.connection.transport else None

    @property
    def delivered(self) -> int:
        """Bytes written here that reached the other end's consumer, as far as this end knows.

        What the other end credited back (its WINDOW_UPDATEs: on the relay, chained to the
        engineer's client by `credit_as_delivered_by`), never more than was sent.  A stream that
        ended cleanly delivered everything it framed: the last credits are never sent.  So a
        status page counts what the engineer received, not what the processor poured into the
        tunnel's windows ahead of a slow reader.
        """
        if self.ended_cleanly:
            return self.bytes_framed
        return min(self.bytes_acknowledged, self.bytes_framed)

    def credit_as_delivered_by(self, onward: TunnelStream) -> None:
        """Credit this stream's sender only for bytes ``onward``'s receiver acknowledged.

        The relay joins a gateway's stream to an engineer's: everything arriving on one is
        written to the other.  Crediting on arrival would tell the gateway its bytes were taken
        while they still wait on the relay for a slow engineer; crediting as the engineer's
        client acknowledges them makes the gateway's window, and its count of delivered bytes,
        end to end.  The memory bound is unchanged: one window per stream.
        """
        self.delivered_via = onward
        onward._credit_onward = self

    def window_updated(self, delta: int) -> None:
        """The other end credited ``delta`` bytes on this stream (a WINDOW_UPDATE)."""
        self.bytes_acknowledged += delta
        upstream = self._credit_onward
        if upstream is not None and not upstream.finished:
            upstream._credit(delta)

    # -- producer/consumer ----------------------------------------------------------------------

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:  # type: ignore[override]
        if not streaming:
            raise ValueError("tunnel streams take push producers only")
        self._producer = producer
        self._producer_paused = False
        if self.queued >= self.connection.high_water:
            self._producer_paused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None

    def pauseProducing(self) -> None:
        """Our consumer is full: stop crediting the sender, so it stops after one window."""
        self._sink_paused = True

    def resumeProducing(self) -> None:
        if not self._sink_paused:
            return
        self._sink_paused = False
        owed, self._owed = self._owed, 0
        if owed and not self.finished:
            self._credit(owed)

    def stopProducing(self) -> None:
        self.abortConnection()

    # -- called by the connection -----------------------------------------------------------------

    def take(self, size: int) -> bytes:
        """Take exactly ``size`` (at most ``queued``) bytes from the front of the queue to send.

        No copy when the first queued piece has exactly that size (the common case for a bulk
        transfer: the splice writes what it read, the scheduler takes a frame's worth).
        """
        queue = self._queue
        first = queue[0]
        self.bytes_framed += size
        if len(first) == size:
            del queue[0]
            self.queued -= size
            return first
        pieces: list[bytes] = []
        got = taken = 0
        while got < size:
            piece = queue[taken]
            room = size - got
            if len(piece) > room:
                pieces.append(piece[:room])
                queue[taken] = piece[room:]
                got = size
            else:
                pieces.append(piece)
                got += len(piece)
                taken += 1
        del queue[:taken]
        self.queued -= size
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def data_received(self, data: bytes, flow: int) -> None:
        self.bytes_received += len(data)
        if self.protocol is None:
            if self._pending is None:
                self._pending = []
            self._pending.append((data, flow))
            return
        self._deliver(data, flow)

    def _deliver(self, data: bytes, flow: int) -> None:
        assert self.protocol is not None
        if self.epoch_started < 0:
            self.epoch_started = self.connection.clock.seconds()
        if data:
            self.protocol.dataReceived(data)
        if self.finished:
            return
        if self.delivered_via is not None:
            # Credited as the stream we feed is acknowledged (window_updated); padding, which
            # is never passed on, at once.
            flow -= len(data)
            if flow <= 0:
                return
        if self._sink_paused:
            self._owed += flow
        elif flow:
            # self._credit(flow), inline: this runs for every DATA frame.
            uncredited = self._uncredited
            self._uncredited = uncredited + flow
            if uncredited + flow >= self.connection.credit_batch:
                self._uncredited = 0
                self.connection.credit_stream(self, uncredited + flow)
            elif not uncredited:
                self.connection.owe_credit(self)

    def _credit(self, flow: int) -> None:
        """Our consumer took ``flow`` bytes: let the sender have them again, a batch at a time."""
        uncredited = self._uncredited
        self._uncredited = uncredited + flow
        if uncredited + flow >= self.connection.credit_batch:
            self._uncredited = 0
            self.connection.credit_stream(self, uncredited + flow)
        elif not uncredited and flow:
            self.connection.owe_credit(self)

    def credit_owed(self) -> None:
        """Send the credit collected below a batch (the connection's idle credit timer)."""
        if self._uncredited and not self.finished:
            amount, self._uncredited = self._uncredited, 0
            self.connection.credit_stream(self, amount)

    def ended_by_peer(self) -> None:
        self.remote_closed = True
        if self.protocol is not None and not self._pending:
            self._deliver_read_closed()
        self._maybe_finish()

    def _deliver_read_closed(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.protocol):
            self.protocol.readConnectionLost()
        elif self.protocol is not None:
            self.loseConnection()

    def reset_by_peer(self, code: int) -> None:
        self.reset_code = code
        self._answer(StreamReset(f"stream reset by the other side ({_code_name(code)})"))
        self._finish(Failure(StreamReset(f"stream reset by the other side ({_code_name(code)})")))

    def response_received(self, response: StreamResponse) -> None:
        self._answer(response if response.status == 200 else refusal_from(response))

    def sent_everything(self) -> None:
        """The scheduler sent END_STREAM after the last queued byte."""
        self.local_closed = True
        self._maybe_finish()

    def drained_below_low_water(self) -> None:
        if self._producer is not None and self._producer_paused:
            self._producer_paused = False
            self._producer.resumeProducing()

    def connection_lost(self, reason: Failure) -> None:
        if reason.value is not None:
            self._answer(reason.value)  # type: ignore[arg-type]
        self._finish(reason if not reason.check(ConnectionDone) else Failure(ConnectionLost()))

    def _maybe_finish(self) -> None:
        if self.finished:
            return
        if self.local_closed and self.remote_closed and not self._pending:
            self.ended_cleanly = True
            self._finish(Failure(ConnectionDone()))

    def _finish(self, reason: Failure) -> None:
        if self.finished:
            return
        self.finished = True
        self._queue.clear()
        self.queued = 0
        self._pending = None
        self._producer = None
        self.connection.stream_finished(self)
        self._answer(StreamReset("stream closed before a response"))
        if self.protocol is not None:
            protocol, self.protocol = self.protocol, None
            protocol.connectionLost(reason)


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error {code}"
