"""PING heartbeats: notice a dead or blackholed peer in seconds, not after TCP's minutes.

A plant firewall that silently drops a long-lived connection, or a relay host that vanished,
leaves TCP believing all is well for a very long time.  Each end sends an HTTP/2 PING every
``interval`` seconds; an ack that has not come back after ``timeout`` seconds ends the
connection, and the gateway dials again.  The ack's delay is the tunnel's round-trip time.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Heartbeat:
    """One PING outstanding at a time; ``stop()`` leaves no delayed call behind."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        interval: float,
        timeout: float,
        send_ping: Callable[[bytes], None],
        on_rtt: Callable[[float], None],
        on_timeout: Callable[[float], None],
    ) -> None:
        self._clock = clock
        self.interval, self.timeout = interval, timeout
        self._send_ping, self._on_rtt, self._on_timeout = send_ping, on_rtt, on_timeout
        self._counter = 0
        self._outstanding: bytes | None = None
        self._sent_at = 0.0
        self._next: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = None
        self.last_rtt: float | None = None

    def start(self) -> None:
        """Send the first PING now: it measures the RTT and proves the peer speaks HTTP/2."""
        self._ping()

    def stop(self) -> None:
        for call in (self._next, self._deadline):
            if call is not None and call.active():
                call.cancel()
        self._next = self._deadline = None
        self._outstanding = None

    def _ping(self) -> None:
        self._next = None
        self._counter += 1
        payload = struct.pack(">Q", self._counter)
        self._outstanding, self._sent_at = payload, self._clock.seconds()
        self._deadline = self._clock.callLater(self.timeout, self._expired)
        self._send_ping(payload)

    def peer_active(self) -> None:
        """Bytes arrived from the peer: it is alive even if our PING waits behind a big queue.

        On a slow, busy uplink a PING (or its ack) can sit behind megabytes of stream data for
        longer than the timeout; the frames that keep arriving prove the peer is there.
        """
        if self._deadline is not None and self._deadline.active():
            now = self._clock.seconds()
            if now - self._last_extended >= 0.5:
                self._last_extended = now
                self._deadline.reset(self.timeout)

    _last_extended = 0.0

    def ack_received(self, payload: bytes) -> None:
        if payload != self._outstanding:
            return  # an ack for a PING that is not ours, or a late one: ignore
        self._outstanding = None
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self.last_rtt = self._clock.seconds() - self._sent_at
        self._next = self._clock.callLater(self.interval, self._ping)
        self._on_rtt(self.last_rtt)

    def _expired(self) -> None:
        self._deadline = None
        waited = self._clock.seconds() - self._sent_at
        self.stop()
        self._on_timeout(waited)
