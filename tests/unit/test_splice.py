"""The splice: bytes both ways, half-closes, aborts, and backpressure between the two ends."""

from __future__ import annotations

from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.splice import SpliceEnd, splice


class HalfCloseTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.write_closed = False
        self.aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True


def _joined() -> tuple[SpliceEnd, HalfCloseTransport, SpliceEnd, HalfCloseTransport]:
    a, b = SpliceEnd(), SpliceEnd()
    ta, tb = HalfCloseTransport(), HalfCloseTransport()
    a.makeConnection(ta)
    b.makeConnection(tb)
    splice(a, b)
    return a, ta, b, tb


class SpliceTests(SynchronousTestCase):
    def test_bytes_cross_both_ways_and_are_counted(self) -> None:
        counted: list[int] = []
        a, ta, b, tb = _joined()
        a.on_bytes = counted.append
        a.dataReceived(b"to b")
        b.dataReceived(b"to a")
        self.assertEqual(tb.value(), b"to b")
        self.assertEqual(ta.value(), b"to a")
        self.assertEqual((a.bytes, b.bytes, counted), (4, 4, [4]))

    def test_each_side_is_the_producer_of_the_other(self) -> None:
        """A full write buffer on one side pauses reading on the other (a slow reader)."""
        _a, ta, _b, tb = _joined()
        self.assertIs(ta.producer, tb)
        self.assertIs(tb.producer, ta)
        self.assertTrue(ta.streaming and tb.streaming)
        # What a full socket buffer on side a does: pause its producer, i.e. side b's reading.
        assert ta.producer is not None
        ta.producer.pauseProducing()
        self.assertEqual(tb.producerState, "paused")
        ta.producer.resumeProducing()
        self.assertEqual(tb.producerState, "producing")

    def test_eof_is_passed_on_as_a_half_close(self) -> None:
        a, ta, b, tb = _joined()
        a.readConnectionLost()
        self.assertTrue(tb.write_closed)
        self.assertFalse(tb.disconnecting)
        b.dataReceived(b"the answer still flows")
        self.assertEqual(ta.value(), b"the answer still flows")
        b.readConnectionLost()
        self.assertTrue(ta.write_closed)
        self.assertTrue(ta.disconnecting and tb.disconnecting)

    def test_an_error_on_one_side_aborts_the_other(self) -> None:
        a, _ta, _b, tb = _joined()
        a.connectionLost(Failure(ConnectionLost("reset by peer")))
        self.assertTrue(tb.aborted)

    def test_clean_close_after_eof_closes_the_other_side_gently(self) -> None:
        a, _ta, _b, tb = _joined()
        a.readConnectionLost()
        a.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(tb.aborted)
        self.assertTrue(tb.disconnecting)

    def test_bytes_that_arrive_before_joining_are_kept(self) -> None:
        a, b = SpliceEnd(), SpliceEnd()
        ta, tb = HalfCloseTransport(), HalfCloseTransport()
        a.makeConnection(ta)
        b.makeConnection(tb)
        a.dataReceived(b"early")
        a.readConnectionLost()
        splice(a, b)
        self.assertEqual(tb.value(), b"early")
        self.assertTrue(tb.write_closed)


class HalfCloseGuardTests(SynchronousTestCase):
    def test_quiet_half_closed_splice_is_ended_after_the_timeout(self) -> None:
        from twisted.internet.task import Clock

        from gateway.splice import HalfCloseGuard

        clock = Clock()
        a, b = SpliceEnd(), SpliceEnd()
        ta, tb = HalfCloseTransport(), HalfCloseTransport()
        a.makeConnection(ta)
        b.makeConnection(tb)
        HalfCloseGuard(a, b, clock, 30)
        splice(a, b)
        a.readConnectionLost()  # the engineer finished; the processor never answers
        clock.advance(29)
        b.dataReceived(b"a late byte keeps it open")
        clock.advance(29)
        self.assertFalse(ta.aborted or tb.aborted)
        clock.advance(2)
        self.assertTrue(ta.aborted and tb.aborted)
        a.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_open_splice_is_never_timed_out(self) -> None:
        from twisted.internet.task import Clock

        from gateway.splice import HalfCloseGuard

        clock = Clock()
        a, b = SpliceEnd(), SpliceEnd()
        ta, tb = HalfCloseTransport(), HalfCloseTransport()
        a.makeConnection(ta)
        b.makeConnection(tb)
        HalfCloseGuard(a, b, clock, 30)
        splice(a, b)
        clock.advance(3600)
        self.assertFalse(ta.aborted or tb.aborted)
        self.assertEqual(clock.getDelayedCalls(), [])


class _SlowSocket(FileDescriptor):
    """Twisted's own write buffer and producer logic (``abstract.FileDescriptor``), over a socket
    that takes ``room`` bytes per write event: what a processor or a browser reading slowly is."""

    bufferSize = 64 * 1024

    def __init__(self) -> None:
        super().__init__(reactor=MemoryReactor())
        self.connected = 1
        self.room = 0
        self.delivered = bytearray()
        self.write_closed = False
        self.writing = False
        self.closed = False

    def startWriting(self) -> None:
        self.writing = True

    def stopWriting(self) -> None:
        self.writing = False

    def startReading(self) -> None:
        pass

    def stopReading(self) -> None:
        pass

    def writeSomeData(self, data: bytes) -> int:
        taken = bytes(data[: self.room])
        self.delivered += taken
        return len(taken)

    def _closeWriteConnection(self) -> None:
        self.write_closed = True

    def drain(self) -> None:
        """The reader catches up: every write event the reactor would give while writing."""
        self.room = 1 << 30
        for _ in range(10):
            if not self.writing:
                return
            if self.doWrite() is not None:  # the reactor would now close the socket
                self.closed = True
                return


class SlowReaderEndOfStreamTests(SynchronousTestCase):
    """A stream that ends while its slow reader still has a full buffer to take (issue 21).

    When Twisted's write buffer drains it either resumes a paused producer or carries out a
    pending half-close, never both: the end of a download toward a slow browser was lost (every
    byte arrived, the socket never closed, the page waited for ever).
    """

    def _ended_while_paused(self) -> tuple[SpliceEnd, _SlowSocket]:
        source, sink = SpliceEnd(), SpliceEnd()
        source_transport, socket = HalfCloseTransport(), _SlowSocket()
        source.makeConnection(source_transport)
        sink.makeConnection(socket)
        splice(source, sink)
        for _ in range(4):
            source.dataReceived(b"x" * 32 * 1024)  # over bufferSize: the source is paused
        self.assertEqual(source_transport.producerState, "paused")
        source.readConnectionLost()  # the sender is done while its bytes still wait
        return source, socket

    def test_the_half_close_follows_the_last_byte(self) -> None:
        _source, socket = self._ended_while_paused()
        socket.drain()
        self.assertEqual(len(socket.delivered), 128 * 1024)
        self.assertTrue(socket.write_closed, "the reader never saw the end of the stream")

    def test_a_close_after_both_directions_ended_follows_the_last_byte(self) -> None:
        source, socket = self._ended_while_paused()
        sink = source.peer
        assert sink is not None
        sink.readConnectionLost()  # the reader had finished sending long ago
        socket.drain()
        self.assertEqual(len(socket.delivered), 128 * 1024)
        self.assertTrue(socket.closed, "the reader's connection was never closed")
