"""Short queues in front of a tunnel socket, sized to what its path delivers.

What a support engineer feels on a plant's uplink is queueing: a click, a WebSocket message or a
PING written behind a download waits until everything before it has crossed the modem.  On
loopback the tunnel needs megabytes in flight to be fast; on a 10 Mbit/s uplink the same
megabytes are seconds of waiting.  So each queue in front of the socket (the DATA frame being
written, Twisted's write buffer, the kernel's unsent bytes) is sized to hold a few milliseconds of
what the path has recently delivered (``tcpi_delivery_rate``), between floors that keep a
slow path busy and the loopback tuning of TUNNEL-NOTES.md as the ceiling.  The queue that is
left, the modem's own, is kept short by the congestion control (BBR, see
``tcpinfo.set_congestion_control``).

Rate estimate: the highest delivery rate of the last ``RATE_WINDOW`` seconds, as BBR's own
bandwidth filter does (over a shorter window).  A sample taken while the tunnel was
application-limited (had less to send than the path could carry) only ever raises the estimate,
at most doubling it: an idle tunnel says nothing about its path, and a sample taken just after a
pause can be inflated by ACKs arriving in a burst (25 MB/s was seen on a 10 Mbit/s link).
Samples are taken while the tunnel is writing, at most every ``SAMPLE_INTERVAL``, so an idle
tunnel on a relay with thousands of them costs nothing, and a busy one ~20 cheap system calls a
second: often enough that a fresh tunnel grows its queues to a fast path within a few samples.
"""

from __future__ import annotations

import contextlib
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from attrs import frozen

from gateway.net.tcpinfo import PathInfo, read_path_info, socket_of

QUEUE_DELAY = 0.004
"""Seconds of the path's delivery rate that each queue in front of the socket may hold."""
FRAME_FLOOR = 4 * 1024
"""The smallest DATA frame: 9 bytes of frame header and ~22 of TLS record per 4 KiB (<1 %)."""
WRITE_FLOOR = 8 * 1024
"""The smallest write buffer.  Twisted also reads this much per call, so not smaller."""
UNSENT_FLOOR = 4 * 1024
"""The fewest unsent bytes the kernel is asked to hold: a few packets, enough to stay busy
between two writes on a 2 Mbit/s link (16 ms of it)."""
FRAME_CEILING = 1024 * 1024
"""The largest DATA frame the tunnel writes (the loopback tuning of TUNNEL-NOTES.md)."""
WRITE_CEILING = 1024 * 1024
"""Twisted's write buffer before it pauses the tunnel (loopback: as large as a frame)."""
UNSENT_CEILING = 256 * 1024
"""The kernel's unsent bytes (TCP_NOTSENT_LOWAT) on the fastest path."""
SAMPLE_INTERVAL = 0.05
RATE_WINDOW = 0.5
"""Seconds a delivery-rate maximum counts: ten samples.  Erring small costs a little CPU (more,
smaller writes); erring large costs the engineer latency, so the window is short."""


@frozen
class QueueSizes:
    """How much each queue in front of one tunnel socket may hold, in bytes."""

    frame: int
    write_buffer: int
    unsent: int


FASTEST = QueueSizes(FRAME_CEILING, WRITE_CEILING, UNSENT_CEILING)
"""What a tunnel starts with, and keeps on loopback and fast LANs."""


def sizes_for(rate: float) -> QueueSizes:
    """The queue sizes for a path delivering ``rate`` bytes per second."""
    wanted = int(rate * QUEUE_DELAY)
    return QueueSizes(
        frame=min(max(wanted, FRAME_FLOOR), FRAME_CEILING),
        write_buffer=min(max(wanted, WRITE_FLOOR), WRITE_CEILING),
        unsent=min(max(wanted, UNSENT_FLOOR), UNSENT_CEILING),
    )


class DeliveryRate:
    """A windowed maximum of delivery-rate samples (bytes per second)."""

    __slots__ = ("_samples", "window")

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, rate: float, app_limited: bool) -> None:
        samples = self._samples
        # Old maxima expire, but an idle tunnel keeps its last word on the path.
        while len(samples) > 1 and now - samples[0][0] > self.window:
            samples.popleft()
        if samples and now - samples[0][0] > self.window and not app_limited:
            samples.popleft()
        if app_limited:
            estimate = self.estimate()
            if rate <= estimate:
                return  # the tunnel had too little to send: no news about the path
            if estimate > 0:
                # It did deliver more than we thought, but a short sample after a pause can be
                # inflated (ACKs arriving in a burst): at most double per sample.
                rate = min(rate, 2 * estimate)
        # Keep only samples that may still be the maximum (a monotonic deque).
        while samples and samples[-1][1] <= rate:
            samples.pop()
        samples.append((now, rate))

    def estimate(self) -> float:
        return self._samples[0][1] if self._samples else 0.0


class QueueSizer:
    """Samples one tunnel socket's path while it writes, and resizes the queues in front of it.

    ``on_frame_size`` (set by the tunnel that writes through this socket) is told the largest
    DATA frame it should write from now on; the write buffer and the kernel's unsent limit are
    set here, on the TCP transport itself.
    """

    def __init__(
        self,
        transport: Any,
        now: Callable[[], float],
        on_frame_size: Callable[[int], None] | None = None,
    ) -> None:
        self.transport = transport
        self._socket: socket.socket | None = socket_of(transport)
        self._now = now
        self.on_frame_size = on_frame_size
        self._rate = DeliveryRate()
        self._next_sample = 0.0
        self.sizes = FASTEST
        self.last: PathInfo | None = None

    @property
    def active(self) -> bool:
        """False where there is no TCP socket to ask (a test transport, a proxied pipe)."""
        return self._socket is not None

    def writing(self) -> None:
        """The tunnel is writing: sample the path if the last sample is old enough."""
        if self._socket is None:
            return
        now = self._now()
        if now >= self._next_sample:
            self._next_sample = now + SAMPLE_INTERVAL
            self.sample(now)

    def sample(self, now: float) -> None:
        assert self._socket is not None
        info = read_path_info(self._socket)
        if info is None:
            self._socket = None  # no TCP_INFO here: keep the fixed sizes
            return
        self.last = info
        if info.delivery_rate is None or info.delivery_rate <= 0:
            return
        self._rate.add(now, info.delivery_rate, info.app_limited)
        self.resize(sizes_for(self._rate.estimate()))

    def resize(self, sizes: QueueSizes) -> None:
        if sizes == self.sizes:
            return
        self.sizes = sizes
        # Twisted pauses its producer (the tunnel) once this many bytes wait to be written.
        # The same attribute is the read size: reads on a slow path are small anyway.
        self.transport.bufferSize = sizes.write_buffer
        option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
        if self._socket is not None and option is not None:
            with contextlib.suppress(OSError):
                self._socket.setsockopt(socket.IPPROTO_TCP, option, sizes.unsent)
        if self.on_frame_size is not None:
            self.on_frame_size(sizes.frame)

    def read_now(self) -> PathInfo | None:
        """A fresh look at the path (one system call), or None where there is no TCP socket."""
        return read_path_info(self._socket) if self._socket is not None else None

    def waiting_bytes(self) -> int:
        """Bytes in Twisted's write buffer, not yet handed to the kernel.

        Twisted has no public accessor for it; these are ``FileDescriptor``'s own fields, read
        only for the metrics (0 where they are not there).
        """
        transport = self.transport
        buffered = getattr(transport, "dataBuffer", b"")
        offset = getattr(transport, "offset", 0)
        temp = getattr(transport, "_tempDataLen", 0)
        try:
            return max(0, len(buffered) - int(offset)) + int(temp)
        except TypeError:
            return 0

    def rate(self) -> float:
        return self._rate.estimate()


@frozen
class PathReport:
    """What monitoring wants to see of one tunnel's path right now (gateway metrics)."""

    smoothed_rtt: float
    min_rtt: float | None
    delivery_rate: float
    """Bytes per second the path has recently delivered (the sizer's estimate)."""
    waiting_in_process: int
    """Bytes in our own write buffer, in front of the kernel."""
    waiting_in_kernel: int
    """Bytes the kernel has not sent yet."""

    def delay(self, waiting: int) -> float:
        """Seconds ``waiting`` bytes take to leave at the path's rate (0 when it is unknown)."""
        return waiting / self.delivery_rate if self.delivery_rate > 0 else 0.0


def path_report(tls_transport: Any) -> PathReport | None:
    """A fresh report for the tunnel over ``tls_transport`` (its TLS protocol), or None."""
    sizer: QueueSizer | None = getattr(tls_transport, "queue_sizer", None)
    info = sizer.read_now() if sizer is not None else None
    if sizer is None or info is None:
        return None
    rate = sizer.rate() or (info.delivery_rate or 0.0)
    return PathReport(
        smoothed_rtt=info.rtt,
        min_rtt=info.min_rtt,
        delivery_rate=rate,
        waiting_in_process=sizer.waiting_bytes(),
        waiting_in_kernel=info.notsent or 0,
    )
