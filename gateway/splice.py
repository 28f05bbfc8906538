"""Join two byte transports so that each side's bytes reach the other, with backpressure.

The ends are TCP connections (a processor, an engineer's browser) or tunnel streams; both are
half-closeable transports, so one splice serves the gateway (stream <-> processor), the relay
(engineer stream <-> gateway stream) and ``gateway connect`` (browser <-> stream).  Each transport
is registered as the producer of the other (as in Twisted's portforward): when one side's write
buffer fills, the other stops reading, so a slow reader anywhere pauses the sender instead of
growing a buffer.  A FIN travels as a half-close, a reset as an abort.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.tls import tune_socket

log = Logger()


@implementer(IHalfCloseableProtocol)
class SpliceEnd(Protocol):
    """One side of a splice: bytes that arrive here are written to ``peer``'s transport."""

    transport: Any  # a TCP transport or a TunnelStream: both half-closeable producers

    def __init__(self, on_bytes: Callable[[int], None] | None = None) -> None:
        self.peer: SpliceEnd | None = None
        self.read_closed = False  # this side sent us EOF
        self.lost = False
        self.on_bytes = on_bytes
        self.bytes = 0
        self.on_lost: Callable[[Failure], None] | None = None
        self._early: list[bytes] = []  # bytes that arrived before the peer was joined
        self.consuming = False  # our transport has the peer's registered as its producer

    def connectionMade(self) -> None:
        tune_socket(self.transport)

    guard: HalfCloseGuard | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.guard is not None:
            self.guard.activity()
        self.bytes += len(data)
        if self.on_bytes is not None:
            self.on_bytes(len(data))
        if self.peer is None:
            self._early.append(data)
        elif not self.peer.lost:
            # A tunnel written to from a socket sends at the end of the reactor turn, so the
            # chunks read from many sockets in one turn share one TLS write.
            self.peer.transport.write(data)

    def readConnectionLost(self) -> None:
        """This side finished sending: pass the EOF on as a half-close."""
        self.read_closed = True
        if self.peer is None:
            return  # passed on when joined
        if self.guard is not None and not self.peer.read_closed:
            self.guard.half_closed()
        if self.peer is not None and not self.peer.lost:
            self.peer.finish_writing()
            self.peer.transport.loseWriteConnection()
            if self.peer.read_closed:
                self.peer.transport.loseConnection()
        if self.peer is not None and self.peer.read_closed:
            self.finish_writing()
            self.transport.loseConnection()

    def finish_writing(self) -> None:
        """Nothing more will be written to this side: it stops being a consumer of its peer.

        When Twisted's write buffer drains it *either* resumes a paused producer *or* carries out
        a pending ``loseWriteConnection``/``loseConnection``, never both (``FileDescriptor.
        doWrite``).  A stream that ended while its slow reader had a full buffer left the producer
        registered and paused, so the buffer drained, the producer was resumed, and the half-close
        was forgotten: every byte arrived and the reader never saw the end.  The producer is the
        other side, which has just finished sending: there is nothing left to pause or resume.
        """
        if self.consuming:
            self.consuming = False
            self.transport.unregisterProducer()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost = True
        if self.guard is not None:
            self.guard.stop()
        peer = self.peer
        if peer is not None and not peer.lost:
            if self.read_closed and not _is_error(reason):
                peer.finish_writing()
                peer.transport.loseConnection()
            else:
                peer.transport.abortConnection()
        if self.on_lost is not None:
            callback, self.on_lost = self.on_lost, None
            callback(reason)


def _is_error(reason: Failure) -> bool:
    return not reason.check(ConnectionDone)


class HalfCloseGuard:
    """Ends a half-closed splice that has gone quiet.

    A browser closing a tab sends a FIN, which travels as a half-close to the processor; a
    processor that never answers and never closes would then hold the stream and its socket for
    ever.  Once one direction has finished, the other must move a byte at least every
    ``timeout`` seconds (like HAProxy's client-fin/server-fin timeouts).
    """

    def __init__(self, a: SpliceEnd, b: SpliceEnd, clock: IReactorTime, timeout: float) -> None:
        self._ends, self._clock, self._timeout = (a, b), clock, timeout
        self._call: IDelayedCall | None = None
        a.guard = b.guard = self

    def half_closed(self) -> None:
        if self._call is None:
            self._call = self._clock.callLater(self._timeout, self._expired)

    def activity(self) -> None:
        if self._call is not None and self._call.active():
            self._call.reset(self._timeout)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _expired(self) -> None:
        self._call = None
        log.info("closing a half-closed connection after {t:g}s without data", t=self._timeout)
        for end in self._ends:
            if not end.lost and end.transport is not None:
                end.transport.abortConnection()


def splice(a: SpliceEnd, b: SpliceEnd) -> None:
    """Start moving bytes between two connected ends."""
    a.peer, b.peer = b, a
    a.transport.registerProducer(b.transport, True)
    b.transport.registerProducer(a.transport, True)
    a.consuming = b.consuming = True
    for end in (a, b):
        early, end._early = end._early, []
        for data in early:
            if not end.peer.lost:  # type: ignore[union-attr]
                end.peer.transport.write(data)  # type: ignore[union-attr]
        if end.read_closed and end.peer is not None and not end.peer.lost:
            end.read_closed = False
            end.readConnectionLost()
