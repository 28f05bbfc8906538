"""The tunnel connection: HTTP/2 (h2) over one TLS connection, carrying many streams.

On the gateway's tunnel the gateway is the HTTP/2 *server* on the connection it dialled and the
relay is the client that opens one ``CONNECT`` stream per engineer connection; on an engineer
client's connection to the relay the roles are the usual ones.  This class does not care: it
frames, schedules and flow-controls streams for either role, and hands requests that arrive to an
``IStreamHandler``.  It knows Twisted and h2, not configuration, policy or metrics.

What makes it fast (TUNNEL-NOTES.md): stream windows that grow to 16 MiB with the path (see
``credit_stream``), a 64 MiB connection window, 1 MiB frames,
all output of a reactor turn written in one call, and a round-robin scheduler (scheduler.py) that
sends at most one frame per stream per round and stops as soon as the TLS transport pushes back,
so a bulk download cannot make a WebSocket message wait behind megabytes.  Streams own their
queues (stream.py); the connection takes frames from them and owns only the h2 state.
"""

from __future__ import annotations

from typing import Any

import h2.events as ev
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error, ProtocolError, StreamClosedError
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from gateway.logsafe import RateLimitedLog, h2_error_summary, is_header_error, peer_text
from gateway.tunnel.batch import WriteBatch
from gateway.tunnel.errors import TunnelClosed
from gateway.tunnel.guards import oversized_input
from gateway.tunnel.h2tuning import (
    CONNECTION_WINDOW,
    LOCAL_SETTINGS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    MAX_STREAM_WINDOW,
    MIN_TUNING_RTT,
    START_STREAM_WINDOW,
    h2_configuration,
    install,
    lean_settings,
)
from gateway.tunnel.heartbeat import Heartbeat
from gateway.tunnel.scheduler import RoundRobin
from gateway.tunnel.stream import (
    StreamRequest,
    TunnelStream,
    high_water_for,
    response_from_h2,
)
from gateway.wire import Refusal

log = Logger()

CONNECTION_CREDIT_BATCH = CONNECTION_WINDOW // 4
LAST_CLIENT_STREAM_ID = 2**31 - 1 - 2 * 1000
"""Past this the opener stops opening streams and the connection is replaced."""
GOAWAY_REASON_LIMIT = 200
IDLE_CREDIT_DELAY = 0.2
"""Seconds within which credit below a batch is sent anyway (``owe_credit``): a small download
is acknowledged, so the gateway's count of delivered bytes follows it, at one timer per
connection, however many streams owe."""
"""Bytes of a GOAWAY's debug data we send, and characters of a peer's that we log."""


class IStreamHandler(Interface):
    """Decides what to do with a stream the other end asked for."""

    def stream_requested(stream: TunnelStream) -> None:
        """``stream.request`` says what was asked; answer with ``accept``/``refuse``/``respond``."""


class ITunnelObserver(Interface):
    """Hears about the connection's life; metrics and status pages implement it."""

    name = Attribute("A label for logs: who is at the other end.")

    def tunnel_ready(connection: TunnelConnection) -> None:
        """The peer's SETTINGS arrived: the tunnel carries streams from now on."""

    def tunnel_rtt(connection: TunnelConnection, seconds: float) -> None:
        """A heartbeat measured the round-trip time."""

    def tunnel_lost(connection: TunnelConnection, reason: Failure) -> None:
        """The connection ended."""


@implementer(ITunnelObserver)
class NullObserver:
    name = "peer"

    def tunnel_ready(self, connection: TunnelConnection) -> None:
        pass

    def tunnel_rtt(self, connection: TunnelConnection, seconds: float) -> None:
        pass

    def tunnel_lost(self, connection: TunnelConnection, reason: Failure) -> None:
        pass


@implementer(IPushProducer, IHandshakeListener)
class TunnelConnection(Protocol):
    """One HTTP/2 connection carrying many ``TunnelStream``s, with heartbeats and drain.

    ``handoff`` (the relay's gateway listener, where enrollment shares the port): HTTP/2 starts
    only once the TLS handshake is done, and first ``handoff(transport)`` may return another
    protocol to take the connection instead (`handed_off`); this connection then only passes
    bytes on, and stays what the listener's guard and drain see.
    """

    transport: Any  # the TLS transport (tests: iosim or StringTransport)
    handed_off: IProtocol | None = None

    def __init__(
        self,
        *,
        client_side: bool,
        clock: IReactorTime,
        handler: IStreamHandler | None = None,
        observer: ITunnelObserver | None = None,
        heartbeat_interval: float = 10.0,
        heartbeat_timeout: float = 10.0,
        ready_timeout: float | None = 20.0,
        batch: WriteBatch | None = None,
        lines: RateLimitedLog | None = None,
        handoff: Any = None,
    ) -> None:
        self.client_side = client_side
        self.handoff = handoff
        # Lines a peer can make us write at will go through ``lines`` when a program shares one
        # among its connections (see gateway.logsafe); streams find it here too.
        self.lines = lines
        # Share one batch among all the tunnels of a program (see gateway.tunnel.batch); a
        # connection on its own (tests, tools) gets its own.
        self.batch = batch if batch is not None else WriteBatch()
        self.ready_timeout = ready_timeout
        self._ready_deadline: IDelayedCall | None = None
        self.clock = clock
        self.handler = handler
        self.observer: ITunnelObserver = observer or NullObserver()
        install()  # h2's per-frame repr made cheap: see h2tuning.install
        self.h2 = H2Connection(h2_configuration(client_side=client_side))
        lean_settings(self.h2, LOCAL_SETTINGS)
        self.streams: dict[int, TunnelStream] = {}
        self.frame_limit = MAX_FRAME_SIZE
        """The largest DATA frame we write: sized to the path by the TLS layer below
        (`gateway.net.queues`), so that a frame of a download is a few milliseconds of the
        uplink and a small message never waits long behind one."""
        self._scheduler: RoundRobin[TunnelStream] = RoundRobin()
        self._flush_call: IDelayedCall | None = None
        self._conn_uncredited = 0
        self.stream_window = START_STREAM_WINDOW
        """Our streams' receive window (SETTINGS_INITIAL_WINDOW_SIZE): grows with the path."""
        self.credit_batch = START_STREAM_WINDOW // 4
        self._window_growth_unacked = False
        self.high_water = 0
        """Queued bytes at which a stream pauses its producer: follows the peer's window."""
        self._follow_peer_window()
        self._owing: set[TunnelStream] = set()
        self._credit_call: IDelayedCall | None = None
        self.is_ready = False
        self.draining = False
        self.closed = False
        self.connected_at: float | None = None
        self._ready_waiters: list[Deferred[TunnelConnection]] = []
        self._drained_waiters: list[Deferred[None]] = []
        self._lost_waiters: list[Deferred[None]] = []
        self.heartbeat = Heartbeat(
            clock,
            interval=heartbeat_interval,
            timeout=heartbeat_timeout,
            send_ping=self._send_ping,
            on_rtt=lambda rtt: self.observer.tunnel_rtt(self, rtt),
            on_timeout=self._heartbeat_expired,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_at = self.clock.seconds()
        if self.ready_timeout is not None:
            # TLS handshake and the peer's SETTINGS must arrive in time: a connection that
            # stalls before HTTP/2 (half a ClientHello, silence) would otherwise hold a socket.
            self._ready_deadline = self.clock.callLater(self.ready_timeout, self._not_ready)
        if self.handoff is None:
            self._start_h2()

    def handshakeCompleted(self) -> None:
        """TLS is up: HTTP/2 starts now, unless ``handoff`` gives the connection to another."""
        if self.handoff is None or self.closed:
            return
        other = self.handoff(self.transport)
        if other is None:
            self._start_h2()
            return
        self.handed_off = other
        self.heartbeat.stop()
        if self._ready_deadline is not None and self._ready_deadline.active():
            self._ready_deadline.cancel()  # the other protocol keeps its own deadline
        self._ready_deadline = None
        other.makeConnection(self.transport)

    def _start_h2(self) -> None:
        self.h2.max_inbound_frame_size = MAX_FRAME_SIZE
        self.h2.decoder.max_header_list_size = MAX_HEADER_LIST_SIZE
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65_535)
        sizer = getattr(self.transport, "queue_sizer", None)  # gateway.net.queues, via TLS
        if sizer is not None:
            self.frame_limit = sizer.sizes.frame
            sizer.on_frame_size = self._frame_size_changed
        self.transport.registerProducer(self, True)
        self._write_out()

    def _frame_size_changed(self, size: int) -> None:
        self.frame_limit = size

    def _warn(self, format: str, **kw: Any) -> None:
        """A warning a peer can cause at will: rate-limited when the program shares ``lines``."""
        if self.lines is None:
            log.warn(format, **kw)
        else:
            self.lines.warn(log, format, **kw)

    def _info(self, format: str, **kw: Any) -> None:
        if self.lines is None:
            log.info(format, **kw)
        else:
            self.lines.info(log, format, **kw)

    def _not_ready(self) -> None:
        self._ready_deadline = None
        self._warn(
            "{peer}: no TLS handshake and HTTP/2 settings within {t:g}s; closing",
            peer=self.observer.name,
            t=self.ready_timeout,
        )
        if self.transport is not None:
            self.transport.abortConnection()

    def when_ready(self) -> Deferred[TunnelConnection]:
        """Fires once the peer's SETTINGS arrived (TLS handshake done, HTTP/2 spoken)."""
        if self.is_ready:
            return succeed(self)
        if self.closed:
            return fail(TunnelClosed("connection closed before ready"))
        d: Deferred[TunnelConnection] = Deferred()
        self._ready_waiters.append(d)
        return d

    def when_lost(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.closed:
            d.callback(None)
        else:
            self._lost_waiters.append(d)
        return d

    _hanging_up = False

    def dataReceived(self, data: bytes) -> None:
        if self.closed or self._hanging_up:
            # After we hung up, TLS keeps reading until the peer answers our close_notify;
            # whatever still arrives is dropped, not buffered (a hostile peer keeps sending).
            return
        if self.handed_off is not None:
            self.handed_off.dataReceived(data)
            return
        self.heartbeat.peer_active()
        self.batch.begin()
        try:
            self._receive(data)
        finally:
            self.batch.end()

    def _receive(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as e:
            # A malformed frame or protocol violation: h2 queued a GOAWAY; send it (with a reason
            # the other end can show) and end this connection only.  Others carry on.  h2's text
            # quotes the offending header's value (a token, say): never log or send it as is.
            summary = h2_error_summary(e)
            self._warn(
                "HTTP/2 protocol error from {peer}: {error}; closing that connection",
                peer=self.observer.name,
                error=summary,
            )
            reason = f"HTTP/2 protocol error: {summary}"
            if is_header_error(e):
                reason = (
                    f"malformed request header refused ({summary}); check the token for "
                    "spaces or control characters"
                )
            self._write_out_with_goaway_reason(reason)
            self._close_transport()
            return
        for event in events:
            self._dispatch(event)
            if self.closed:
                return
        too_big = oversized_input(
            self.h2.incoming_buffer, self.h2.max_inbound_frame_size, MAX_HEADER_LIST_SIZE
        )
        if too_big:
            self._refuse_oversized(too_big)
            return
        self._flush_soon()  # acks and window updates go out when this batch ends

    def _refuse_oversized(self, too_big: str) -> None:
        """A frame or header block over our limits is arriving (see guards.py): hang up now."""
        self._warn(
            "{peer} sent {what}; closing that connection", peer=self.observer.name, what=too_big
        )
        try:
            self.h2.close_connection(ErrorCodes.FRAME_SIZE_ERROR)
        except H2Error:
            pass
        self._write_out()
        self._close_transport()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if self.closed:
            return
        self.closed = True
        if self.handed_off is not None:
            self.handed_off.connectionLost(reason)
        self.heartbeat.stop()
        if self._ready_deadline is not None and self._ready_deadline.active():
            self._ready_deadline.cancel()
        self._ready_deadline = None
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._credit_call is not None and self._credit_call.active():
            self._credit_call.cancel()
        self._credit_call = None
        self._owing.clear()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        for stream in list(self.streams.values()):
            stream.connection_lost(Failure(ConnectionLost(_reason_text(reason))))
        self.streams.clear()
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(TunnelClosed(_reason_text(reason)))
        self._fire_drained()
        lost, self._lost_waiters = self._lost_waiters, []
        for waiter in lost:
            waiter.callback(None)
        self.observer.tunnel_lost(self, reason)

    _abort_call: IDelayedCall | None = None

    def _close_transport(self) -> None:
        """Close cleanly (TLS close_notify), and abort if the peer does not answer in time.

        Twisted's TLS transport postpones its shutdown while a producer is registered, and we
        are the producer: unregister first, or the connection waits for ever.
        """
        if self.transport is None:
            return
        self._hanging_up = True
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._abort_later()

    def _abort_later(self, delay: float = 5.0) -> None:
        """After a clean close is asked for, do not wait forever for the peer to agree."""
        if self._abort_call is None and not self.closed:
            self._abort_call = self.clock.callLater(delay, self._abort_now)

    def _abort_now(self) -> None:
        self._abort_call = None
        if not self.closed and self.transport is not None:
            self.transport.abortConnection()

    def close(self, error_code: int = ErrorCodes.NO_ERROR, why: str = "") -> None:
        """Send GOAWAY (with ``why`` as its debug data) and close; open streams end."""
        if self.closed:
            return
        if self.handed_off is not None or (self.handoff is not None and not self.is_ready):
            # No HTTP/2 on this connection (yet): nothing to say a GOAWAY in.
            if self.transport is not None:
                self._hanging_up = self.handed_off is None
                self.transport.loseConnection()
                self._abort_later()
            return
        self.heartbeat.stop()
        try:
            reason = why.encode("utf-8")[:GOAWAY_REASON_LIMIT] or None
            self.h2.close_connection(error_code, additional_data=reason)
        except H2Error:
            pass
        self._write_out()
        self._close_transport()

    def drain(self, timeout: float) -> Deferred[None]:
        """Refuse new streams, let open ones finish within ``timeout``, then GOAWAY and close.

        h2 treats a GOAWAY as the end of the connection in both directions, so it cannot be sent
        first as RFC 9113 would allow: new streams are refused with ``shutting-down`` instead.
        """
        self.draining = True
        d: Deferred[None] = Deferred()
        if self.closed:
            d.callback(None)
            return d
        self._drained_waiters.append(d)
        if not self.streams:
            self.close()
        else:
            deadline = self.clock.callLater(timeout, self._drain_expired)

            def cancel_deadline(result: object) -> object:
                if deadline.active():
                    deadline.cancel()
                return result

            d.addBoth(cancel_deadline)
        return d

    def _drain_expired(self) -> None:
        if self.streams:
            log.info(
                "drain timeout: closing tunnel to {peer} with {n} streams still open",
                peer=self.observer.name,
                n=len(self.streams),
            )
        self.close()

    def _fire_drained(self) -> None:
        waiters, self._drained_waiters = self._drained_waiters, []
        for d in waiters:
            d.callback(None)

    # -- opening streams (client side) ----------------------------------------------------------

    def open_stream(
        self,
        authority: str,
        *,
        method: str = "CONNECT",
        path: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        end_stream: bool = False,
    ) -> TunnelStream:
        """Ask the other end for a stream; ``stream.response`` fires with its answer."""
        if self.closed or self.draining or not self.is_ready:
            raise TunnelClosed("the tunnel is not connected")
        stream_id = self.h2.get_next_available_stream_id()
        if stream_id > LAST_CLIENT_STREAM_ID:
            self.draining = True
            self.drain(30.0).addErrback(lambda _: None)
            raise TunnelClosed("the tunnel used up its stream ids and is being replaced")
        request = [(b":method", method.encode()), (b":authority", authority.encode())]
        if method != "CONNECT":
            request += [(b":scheme", b"https"), (b":path", (path or "/").encode())]
        request += headers or []
        self.h2.send_headers(stream_id, request, end_stream=end_stream)
        stream = TunnelStream.opened(self, stream_id, end=end_stream)
        self.streams[stream_id] = stream
        self._flush_soon()
        return stream

    # -- called by streams ----------------------------------------------------------------------

    def send_response(
        self, stream: TunnelStream, status: int, headers: list[tuple[bytes, bytes]], end: bool
    ) -> None:
        if self.closed:
            return
        try:
            self.h2.send_headers(
                stream.stream_id, [(b":status", str(status).encode()), *headers], end_stream=end
            )
        except (StreamClosedError, ProtocolError):
            return
        self._flush_soon()

    def schedule(self, stream: TunnelStream) -> None:
        """The stream has something to send: put it in the round-robin."""
        self._scheduler.add(stream)
        self._flush_soon()

    def reset_stream(self, stream: TunnelStream, code: int) -> None:
        if self.closed:
            return
        try:
            self.h2.reset_stream(stream.stream_id, code)
        except (StreamClosedError, ProtocolError):
            pass
        self._flush_soon()

    def credit_stream(self, stream: TunnelStream, amount: int) -> None:
        """The stream's consumer took ``amount`` bytes: let the sender have that much again."""
        if self.closed:
            return
        try:
            self.h2.increment_flow_control_window(amount, stream.stream_id)
        except (StreamClosedError, KeyError, ProtocolError):
            return
        if self.stream_window < MAX_STREAM_WINDOW:
            self._tune_stream_window(stream, amount)
        self._flush_soon()

    def _tune_stream_window(self, stream: TunnelStream, amount: int) -> None:
        """Grow the stream window when a stream's credit shows the window limits it.

        quic-go's receive-window auto-tuning: an epoch lasts until half the window has been
        credited; if that took less than ``4 * credited / window`` round trips, the sender was
        held back by the window rather than the path, and the window doubles (up to
        ``MAX_STREAM_WINDOW``).  A window-limited sender moves a window per round trip, so the
        rule settles at about four bandwidth-delay products: a fast LAN reaches 16 MiB within a
        few megabytes, while a 10 Mbit/s uplink keeps 1 MiB and its bytes do not pile up in
        our buffers (or in the relay's, for an upload's slow tail).

        The growth goes out as SETTINGS_INITIAL_WINDOW_SIZE, for every stream at once, not as
        extra WINDOW_UPDATE: a WINDOW_UPDATE says "delivered", and the other end counts its
        delivered bytes from them (``TunnelStream.delivered``).  On the relay, a stream
        credited as an engineer's client acknowledges (``credit_as_delivered_by``) is timed
        over both hops, so both hops' round trips count.
        """
        credited = stream.epoch_credited + amount
        window = self.stream_window
        if 2 * credited < window:
            stream.epoch_credited = credited
            return
        now = self.clock.seconds()
        taken = now - stream.epoch_started
        stream.epoch_started = now
        stream.epoch_credited = 0
        if self._window_growth_unacked:
            return  # the last growth is not in effect yet: this epoch does not tell
        rtt = self.path_rtt()
        onward = stream.delivered_via
        if onward is not None:
            rtt += onward.connection.path_rtt()
        if taken < 4 * credited / window * rtt:
            self._grow_stream_window()

    def _grow_stream_window(self) -> None:
        grown = min(2 * self.stream_window, MAX_STREAM_WINDOW)
        try:
            self.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: grown})
        except (ProtocolError, H2Error):
            return
        self.stream_window = grown
        self.credit_batch = grown // 4
        self._window_growth_unacked = True
        self._flush_soon()

    def path_rtt(self) -> float:
        """This connection's round trip: the kernel's smoothed RTT where there is a TCP socket
        (fresh, one system call), else the last PING's; never below ``MIN_TUNING_RTT``."""
        sizer = getattr(self.transport, "queue_sizer", None)  # gateway.net.queues, via TLS
        info = sizer.read_now() if sizer is not None else None
        if info is not None and info.rtt > 0:
            return max(float(info.rtt), MIN_TUNING_RTT)
        return max(self.heartbeat.last_rtt or 0.0, MIN_TUNING_RTT)

    def owe_credit(self, stream: TunnelStream) -> None:
        """Credit ``stream``'s remainder within ``IDLE_CREDIT_DELAY`` (one timer for all)."""
        if self.closed:
            return
        self._owing.add(stream)
        if self._credit_call is None:
            self._credit_call = self.clock.callLater(IDLE_CREDIT_DELAY, self._credit_owed)

    def _credit_owed(self) -> None:
        self._credit_call = None
        owing, self._owing = self._owing, set()
        for stream in owing:
            stream.credit_owed()

    def stream_finished(self, stream: TunnelStream) -> None:
        self._owing.discard(stream)
        self.streams.pop(stream.stream_id, None)
        self._scheduler.forget(stream.stream_id)
        if self.draining and not self.streams and not self.closed:
            self.close()

    # -- producer (the TLS transport pushes back on us) -----------------------------------------

    def pauseProducing(self) -> None:
        self._scheduler.paused = True

    def resumeProducing(self) -> None:
        self._scheduler.paused = False
        self._flush_soon()

    def stopProducing(self) -> None:
        pass

    # -- sending ---------------------------------------------------------------------------------

    _queued_for_batch = False

    def _flush_soon(self) -> None:
        """Write when the input being handled is done (see ``WriteBatch``), else next turn."""
        if self.closed:
            return
        if self.batch.active:
            if not self._queued_for_batch:
                self._queued_for_batch = True
                self.batch.add(self)
        elif self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def flush_batched(self) -> None:
        self._queued_for_batch = False
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush()

    def _flush(self) -> None:
        self._flush_call = None
        if self.closed:
            return
        self._scheduler.run(self._send_one_frame, self._end_of_round)
        if not self.closed:
            self._write_out()

    def _end_of_round(self) -> bool:
        """Write what one scheduler round produced (the transport may pause us); go on?"""
        self._write_out()
        return not self.closed

    def _send_one_frame(self, stream: TunnelStream) -> bool:
        """Send up to one frame for ``stream``; True if it has more to send right away."""
        if stream.finished or not stream.headers_sent:
            return False
        sid = stream.stream_id
        try:
            if stream.queued:
                window = self.h2.local_flow_control_window(sid)
                if window <= 0:
                    self._scheduler.block(sid)
                    return False
                size = min(window, self.h2.max_outbound_frame_size, self.frame_limit, stream.queued)
                chunk = stream.take(size)
                end = stream.end_requested and not stream.queued
                self.h2.send_data(sid, chunk, end_stream=end)
                if stream.queued < self.high_water // 4:
                    stream.drained_below_low_water()
                if end:
                    stream.sent_everything()
                    return False
                return bool(stream.queued)
            if stream.end_requested and not stream.local_closed:
                self.h2.end_stream(sid)
                stream.sent_everything()
        except (StreamClosedError, ProtocolError) as e:
            log.debug("stream {sid} closed while sending: {e}", sid=sid, e=e)
            stream.reset_by_peer(ErrorCodes.STREAM_CLOSED)
        return False

    def _write_out(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _write_out_with_goaway_reason(self, reason: str) -> None:
        """Write out what h2 queued, its GOAWAY (the last frame after a ProtocolError) given
        ``reason`` as debug data: h2 sends none, and the other end would only see the code."""
        data = self.h2.data_to_send()
        goaway = data[-_GOAWAY_SIZE:]
        if len(goaway) == _GOAWAY_SIZE and goaway[:5] == _BARE_GOAWAY_HEAD:
            frame = GoAwayFrame(
                0,
                last_stream_id=int.from_bytes(goaway[9:13], "big") & 0x7FFFFFFF,
                error_code=int.from_bytes(goaway[13:17], "big"),
                additional_data=reason.encode("ascii", "replace")[:GOAWAY_REASON_LIMIT],
            )
            data = data[:-_GOAWAY_SIZE] + frame.serialize()
        if data and self.transport is not None:
            self.transport.write(data)

    # -- receiving -------------------------------------------------------------------------------

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, ev.DataReceived):
            self._conn_uncredited += event.flow_controlled_length
            if self._conn_uncredited >= CONNECTION_CREDIT_BATCH:
                amount, self._conn_uncredited = self._conn_uncredited, 0
                self.h2.increment_flow_control_window(amount)
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.data_received(event.data, event.flow_controlled_length)
        elif isinstance(event, ev.WindowUpdated):
            if event.stream_id:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.window_updated(event.delta)
            self._window_opened(event.stream_id)
        elif isinstance(event, ev.RequestReceived):
            self._request_received(event)
        elif isinstance(event, ev.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.response_received(response_from_h2(event.headers))
        elif isinstance(event, ev.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.ended_by_peer()
        elif isinstance(event, ev.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.reset_by_peer(event.error_code)
        elif isinstance(event, ev.PingAckReceived):
            self.heartbeat.ack_received(event.ping_data)
        elif isinstance(event, ev.SettingsAcknowledged):
            self._window_growth_unacked = False
            self._settings_changed()
        elif isinstance(event, ev.RemoteSettingsChanged):
            self._settings_changed()
        elif isinstance(event, ev.ConnectionTerminated):
            self._info(
                "{peer} closed the tunnel (GOAWAY {code}{why})",
                peer=self.observer.name,
                code=_error_name(event.error_code or 0),
                why=": " + peer_text(event.additional_data, GOAWAY_REASON_LIMIT)
                if event.additional_data
                else "",
            )
            self.draining = True
            self.heartbeat.stop()
            self._write_out()
            self._close_transport()
        elif isinstance(event, ev.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None and event.stream_ended is None:
                stream.reset(ErrorCodes.PROTOCOL_ERROR)

    def _settings_changed(self) -> None:
        if not self.is_ready:
            self.is_ready = True
            if self._ready_deadline is not None and self._ready_deadline.active():
                self._ready_deadline.cancel()
            self._ready_deadline = None
            self.heartbeat.start()
            waiters, self._ready_waiters = self._ready_waiters, []
            for d in waiters:
                d.callback(self)
            self.observer.tunnel_ready(self)
        # A new initial window may have unblocked streams, and sizes how much they queue.
        self._follow_peer_window()
        self._window_opened(0)

    def _follow_peer_window(self) -> None:
        self.high_water = high_water_for(self.h2.remote_settings.initial_window_size)

    def _window_opened(self, stream_id: int) -> None:
        if self._scheduler.window_opened(stream_id, self.streams):
            self._flush_soon()

    def _request_received(self, event: ev.RequestReceived) -> None:
        request = StreamRequest.from_h2(event.headers)
        stream = TunnelStream.requested(
            self, event.stream_id, request, ended=event.stream_ended is not None
        )
        self.streams[event.stream_id] = stream
        if self.draining:
            stream.refuse(Refusal.SHUTTING_DOWN, "the tunnel is shutting down; try again shortly")
        elif self.handler is None:
            stream.refuse(Refusal.BAD_REQUEST, "this end does not accept streams")
        else:
            try:
                self.handler.stream_requested(stream)
            except Exception:
                # Never the request itself: its headers hold the engineer's token.
                log.failure(
                    "stream handler failed for {method} '{target}' from {peer}",
                    method=peer_text(request.method),
                    target=peer_text(request.authority),
                    peer=self.observer.name,
                )
                stream.reset(ErrorCodes.INTERNAL_ERROR)

    # -- heartbeat --------------------------------------------------------------------------------

    def _send_ping(self, payload: bytes) -> None:
        if self.closed:
            return
        try:
            self.h2.ping(payload)
        except ProtocolError:
            return  # h2 already closed (GOAWAY): the connection is on its way down
        self._flush_soon()

    def _heartbeat_expired(self, waited: float) -> None:
        log.warn(
            "no heartbeat answer from {peer} for {waited:.1f}s; dropping the tunnel",
            peer=self.observer.name,
            waited=waited,
        )
        if self.transport is not None:
            self.transport.abortConnection()


_GOAWAY_SIZE = 9 + 8
_BARE_GOAWAY_HEAD = b"\x00\x00\x08\x07\x00"
"""A GOAWAY without debug data: length 8, type 7, no flags (stream 0 follows)."""


def _error_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


def _reason_text(reason: Failure) -> str:
    value = reason.value
    text = str(value) if value is not None else ""
    return text or type(value).__name__
