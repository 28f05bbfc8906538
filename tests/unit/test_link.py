"""The link to the relay: the tunnel's state machine, and the observer that feeds it events."""

from __future__ import annotations

from random import Random

from OpenSSL.SSL import Error as SSLError
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.edge.events import FanOut, ITunnelEvents
from gateway.edge.link import (
    ALLOWED,
    InvalidTransition,
    TunnelObserver,
    TunnelPhase,
    TunnelStatus,
)
from gateway.edge.testing import RecordingEvents
from gateway.net.backoff import Backoff
from gateway.tunnel.connection import ITunnelObserver, TunnelConnection

RELAY = "relay.example:443"


def connection(ready: bool) -> TunnelConnection:
    conn = TunnelConnection(client_side=False, clock=Clock())
    conn.is_ready = ready
    return conn


@implementer(ILogObserver)
class LogCapture:
    """The text of every line logged while the test runs."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self)
        test.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: LogEvent) -> None:
        self.lines.append(formatEvent(event))


class TunnelStatusTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.status = TunnelStatus(RELAY, self.clock)
        self.log = LogCapture(self)

    def test_it_starts_connecting_with_nothing_measured(self) -> None:
        self.assertTrue(verifyObject(ITunnelEvents, self.status))
        s = self.status
        self.assertEqual((s.phase, s.since, s.rtt, s.last_error, s.connects), (
            TunnelPhase.CONNECTING, 100, None, None, 0,
        ))  # fmt: skip

    def test_up_counts_a_connect_clears_the_last_error_and_says_since_when(self) -> None:
        self.status.tunnel_failed("the relay refused the connection")
        self.clock.advance(5)
        self.status.tunnel_up(f"connected to relay {RELAY}")
        self.assertEqual(self.status.phase, TunnelPhase.UP)
        self.assertEqual(self.status.since, 105)
        self.assertEqual(self.status.connects, 1)
        self.assertIsNone(self.status.last_error)
        self.assertEqual(self.log.lines, [f"tunnel connecting -> up: connected to relay {RELAY}"])

    def test_down_and_up_again(self) -> None:
        self.status.tunnel_up("connected")
        self.clock.advance(30)
        self.status.tunnel_down("connection lost: heartbeat")
        self.assertEqual((self.status.phase, self.status.since), (TunnelPhase.DOWN, 130))
        self.status.tunnel_down("connection lost: again")  # same phase: no move, no line
        self.assertEqual(self.status.since, 130)
        self.status.tunnel_up("connected")
        self.assertEqual(self.status.connects, 2)
        self.assertEqual(
            self.log.lines,
            [
                "tunnel connecting -> up: connected",
                "tunnel up -> down: connection lost: heartbeat",
                "tunnel down -> up: connected",
            ],
        )

    def test_a_failure_is_kept_as_the_last_error_without_moving(self) -> None:
        self.status.tunnel_failed("cannot resolve relay.example")
        self.assertEqual(self.status.last_error, "cannot resolve relay.example")
        self.assertEqual(self.status.phase, TunnelPhase.CONNECTING)

    def test_rtt_is_kept(self) -> None:
        self.status.tunnel_rtt(0.0125)
        self.assertEqual(self.status.rtt, 0.0125)

    def test_stopped_is_final(self) -> None:
        self.status.tunnel_up("connected")
        self.status.tunnel_stopped("gateway stopping")
        self.assertEqual(self.status.phase, TunnelPhase.STOPPED)
        self.assertIn("tunnel up -> stopped: gateway stopping", self.log.lines)
        self.assertRaises(InvalidTransition, self.status.tunnel_up, "connected")
        self.assertRaises(InvalidTransition, self.status.tunnel_down, "lost")
        self.assertEqual(self.status.phase, TunnelPhase.STOPPED)

    def test_every_phase_can_stop_and_only_the_table_moves(self) -> None:
        for old in TunnelPhase:
            for new in TunnelPhase:
                status = TunnelStatus(RELAY, self.clock)
                status.phase = old
                if new is old or new in ALLOWED[old]:
                    status.move(new, "test")
                    self.assertIs(status.phase, new)
                else:
                    self.assertRaises(InvalidTransition, status.move, new, "test")
                    self.assertIs(status.phase, old)
            if old is not TunnelPhase.STOPPED:
                self.assertIn(TunnelPhase.STOPPED, ALLOWED[old])


class TunnelObserverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = RecordingEvents()
        self.backoff = Backoff(Random(1))
        self.observer = TunnelObserver(RELAY, self.events, self.backoff)
        self.log = LogCapture(self)

    def test_it_is_a_tunnel_observer_named_after_the_relay(self) -> None:
        self.assertTrue(verifyObject(ITunnelObserver, self.observer))
        self.assertEqual(self.observer.name, f"relay {RELAY}")

    def test_ready_reports_up_resets_the_backoff_and_keeps_the_connection(self) -> None:
        self.backoff(1)
        self.backoff(2)
        conn = connection(ready=True)
        self.observer.tunnel_ready(conn)
        self.assertEqual(self.events.seen, [("tunnel_up", f"connected to relay {RELAY}")])
        self.assertEqual(self.backoff.failures, 0)
        self.assertIs(self.observer.current, conn)

    def test_rtt_is_passed_on(self) -> None:
        self.observer.tunnel_rtt(connection(ready=True), 0.02)
        self.assertEqual(self.events.seen, [("tunnel_rtt", 0.02)])

    def test_losing_an_up_tunnel_reports_down_with_why(self) -> None:
        conn = connection(ready=True)
        self.observer.tunnel_ready(conn)
        self.observer.tunnel_lost(conn, Failure(ConnectionLost("heartbeat")))
        self.assertIsNone(self.observer.current)
        [(why,)] = self.events.named("tunnel_down")
        self.assertTrue(str(why).startswith("connection lost: "), why)
        self.assertEqual(self.events.named("tunnel_failed"), [])
        self.assertFalse(any("cannot" in line for line in self.log.lines))

    def test_a_failed_handshake_is_explained_then_down(self) -> None:
        reason = Failure(SSLError([("SSL routines", "", "certificate verify failed")]))
        self.observer.tunnel_lost(connection(ready=False), reason)
        why = "the other side's certificate is not signed by the pinned CA (or has expired)"
        self.assertEqual(
            self.events.seen,
            [("tunnel_failed", why), ("tunnel_down", f"connection lost: {why}")],
        )
        self.assertEqual(self.log.lines, [f"cannot open the tunnel to relay {RELAY}: {why}"])

    def test_a_failed_dial_is_explained_every_time(self) -> None:
        for _ in range(2):
            self.observer.dial_failed(Failure(ConnectionRefusedError()))
        self.assertEqual(len(self.events.named("tunnel_failed")), 2)
        self.assertEqual(self.events.named("tunnel_down"), [])
        self.assertEqual(len(self.log.lines), 2)
        self.assertTrue(self.log.lines[0].startswith(f"cannot reach relay {RELAY}: "))

    def test_stopping_is_reported_once_and_silences_what_follows(self) -> None:
        conn = connection(ready=True)
        self.observer.tunnel_ready(conn)
        self.observer.stopped()
        self.observer.stopped()
        self.observer.dial_failed(Failure(ConnectionRefusedError()))
        self.observer.tunnel_lost(conn, Failure(ConnectionLost("drained")))
        self.observer.tunnel_ready(connection(ready=True))  # a handshake that ends during drain
        self.assertEqual([e[0] for e in self.events.seen], ["tunnel_up", "tunnel_stopped"])

    def test_a_cancelled_dial_is_not_the_relays_fault(self) -> None:
        self.observer.dial_failed(Failure(CancelledError()))
        self.assertEqual(self.events.seen, [])
        self.assertEqual(self.log.lines, [])


class LinkTests(SynchronousTestCase):
    """Observer and state machine together, as the daemon wires them."""

    def test_a_tunnel_life_as_the_status_page_sees_it(self) -> None:
        clock = Clock()
        status = TunnelStatus(RELAY, clock)
        observer = TunnelObserver(RELAY, FanOut(status))
        observer.dial_failed(Failure(ConnectionRefusedError()))
        self.assertEqual(status.phase, TunnelPhase.CONNECTING)
        self.assertIsNotNone(status.last_error)
        clock.advance(3)
        conn = connection(ready=True)
        observer.tunnel_ready(conn)
        observer.tunnel_rtt(conn, 0.01)
        self.assertEqual((status.phase, status.since, status.connects), (TunnelPhase.UP, 3, 1))
        self.assertIsNone(status.last_error)
        clock.advance(60)
        observer.tunnel_lost(conn, Failure(ConnectionLost("gone")))
        self.assertEqual((status.phase, status.since, status.rtt), (TunnelPhase.DOWN, 63, 0.01))
        observer.stopped()
        self.assertEqual(status.phase, TunnelPhase.STOPPED)
