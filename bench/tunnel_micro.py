"""In-process microbenchmark of the tunnel's data path: no TLS, no sockets, one CPU.

Two ``TunnelConnection``s joined by ``StringTransport``s move bytes through one stream (or
several), the way ``gateway relay`` and ``gateway run`` do, minus TLS and the kernel: a source per
stream that writes fixed-size chunks while the stream has not paused it (like a splice reading a
TCP socket), a sink that counts what arrives and credits it at once.  What it measures is the
Python cost of framing, scheduling and flow control, so it shows a change in that code long before
the full benchmark (bench/run.py) would, and with far less noise.  Compare numbers only within
one machine and one sitting.

    .venv/bin/python -m bench.tunnel_micro                  # 256 MiB, 64 KiB and 1 MiB writes
    .venv/bin/python -m bench.tunnel_micro --mib 1024 --runs 5 --chunk-kib 4 --streams 50
    .venv/bin/python -m bench.tunnel_micro --mib 64 --chunk-kib 4 --per-turn 1  # small frames

Each line shows the best wall-clock and the best CPU time of the runs (CPU time is the steadier
figure on a shared machine).

Set ``GLIBC_TUNABLES`` as TUNNEL-NOTES.md says to see the Python cost rather than glibc's page
faults on freshly mapped megabyte buffers (they dominate an untuned run).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from gateway.tunnel.connection import IStreamHandler, TunnelConnection
from gateway.tunnel.stream import TunnelStream

MiB = 1 << 20


class Counter:
    received = 0


class Sink(Protocol):
    """Counts what a stream delivers (and keeps none of it)."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def dataReceived(self, data: bytes) -> None:
        self.counter.received += len(data)


@implementer(IStreamHandler)
class AcceptInto:
    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def stream_requested(self, stream: TunnelStream) -> None:
        stream.accept()
        stream.attach(Sink(self.counter))


@implementer(IPushProducer)
class Source:
    """Writes ``chunk`` while not paused, one chunk per "socket read" (see ``produce``)."""

    def __init__(self, stream: TunnelStream, total: int, chunk: bytes, per_turn: int) -> None:
        self.stream, self.left, self.chunk, self.per_turn = stream, total, chunk, per_turn
        self.paused = False

    def produce(self) -> int:
        """Write what a reactor turn of reading the source socket would; how many writes."""
        for done in range(self.per_turn):
            if self.paused or self.left <= 0:
                return done
            self.left -= len(self.chunk)
            self.stream.write(self.chunk)
        return self.per_turn

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False  # no write here: a TCP transport reads on its next turn

    def stopProducing(self) -> None:
        self.left = 0


def _move(source: StringTransport, to: TunnelConnection) -> bool:
    data = source.value()
    if not data:
        return False
    source.clear()
    to.dataReceived(data)
    return True


def one_run(
    total: int, chunk_size: int, streams: int = 1, per_turn: int = 1 << 30
) -> tuple[float, float]:
    """Seconds (wall, CPU) to move ``total`` bytes through ``streams`` streams in ``chunk_size``
    writes, at most ``per_turn`` writes per stream and reactor turn."""
    clock = Clock()
    arrived = Counter()
    opener = TunnelConnection(client_side=True, clock=clock, ready_timeout=None)
    answerer = TunnelConnection(
        client_side=False, clock=clock, handler=AcceptInto(arrived), ready_timeout=None
    )
    to_answerer, to_opener = StringTransport(), StringTransport()
    opener.makeConnection(to_answerer)
    answerer.makeConnection(to_opener)

    def turn() -> bool:
        clock.advance(0)  # the flushes a reactor turn would run
        moved = _move(to_answerer, answerer)
        return _move(to_opener, opener) or moved

    while turn():
        pass
    chunk = b"b" * chunk_size
    sources = []
    for _ in range(streams):
        stream = opener.open_stream("bench")
        stream.attach(Sink(Counter()))
        sources.append(Source(stream, total // streams, chunk, per_turn))
        stream.registerProducer(sources[-1], True)
    expected = sum(s.left for s in sources)
    started, cpu = time.perf_counter(), time.process_time()
    while arrived.received < expected:
        wrote = sum(source.produce() for source in sources)
        if not turn() and not wrote:
            raise RuntimeError(f"stalled after {arrived.received} of {expected} bytes")
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    for conn in (opener, answerer):
        conn.connectionLost()
    clock.advance(3600)
    return elapsed, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB per run (default 256)")
    parser.add_argument("--runs", type=int, default=3, help="runs per chunk size; best is shown")
    parser.add_argument("--streams", type=int, default=1, help="streams sharing the bytes")
    parser.add_argument(
        "--per-turn",
        type=int,
        default=1 << 30,
        help="writes per stream and turn (default: until paused); 1 makes a frame per write",
    )
    parser.add_argument(
        "--chunk-kib", type=int, action="append", help="write size in KiB (default: 64 and 1024)"
    )
    args: Any = parser.parse_args(argv)
    total = args.mib * MiB
    pace = "" if args.per_turn >= 1 << 30 else f" ({args.per_turn} per turn)"
    for kib in args.chunk_kib or [64, 1024]:
        runs = [one_run(total, kib * 1024, args.streams, args.per_turn) for _ in range(args.runs)]
        wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
        print(
            f"{args.mib} MiB, {args.streams} stream(s), {kib} KiB writes{pace}, "
            f"best of {args.runs}: {wall:.3f} s ({total / wall / 1e6:.0f} MB/s), CPU {cpu:.3f} s"
        )


if __name__ == "__main__":
    main()
