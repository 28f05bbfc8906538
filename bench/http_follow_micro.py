"""In-process microbenchmark of following requests on an ``http`` target (one CPU, no sockets).

What a stream to a ``kind = "http"`` target costs the gateway beyond a ``tcp`` one: the
`RequestFollower` reading each request head (h11) and peeking at each answer's head and end
(httptools), measured on its own, with the same splice work left out on both sides.

- **Round trip**: a browser-like ``GET`` (about 400 bytes of head) and a 1 KiB answer, both
  through the follower; the figure is the added time per round trip (p50 and p99 of batches).
- **Bulk**: one answer of ``--mib`` MiB with a ``Content-Length``, fed in ``--chunk-kib``
  pieces (the gateway reads 1 MiB from a socket at a time); the figure is the peek's CPU time per
  GiB, to compare with the gateway's own CPU-seconds per GiB in the full benchmark (README).

    .venv/bin/python -m bench.http_follow_micro
    .venv/bin/python -m bench.http_follow_micro --round-trips 20000 --mib 2048 --chunk-kib 64
"""

from __future__ import annotations

import argparse
import statistics
import time

from gateway.edge.httpfollow import Refuse, RequestFollower, RequestHead

REQUEST = (
    b"GET /api/values?line=2&tag=T1 HTTP/1.1\r\nHost: 192.168.10.2\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: application/json, text/plain, */*\r\nAccept-Language: en-GB,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate\r\nReferer: http://192.168.10.2/\r\n"
    b"Connection: keep-alive\r\nCookie: session=0123456789abcdef0123456789abcdef\r\n\r\n"
)
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1024\r\n"
    b"Cache-Control: no-store\r\n\r\n" + b"x" * 1024
)


def view_only(head: RequestHead) -> Refuse | None:
    return None if head.method in ("GET", "HEAD", "OPTIONS") else Refuse(403, "view-only")


def follower() -> RequestFollower:
    def drop(data: bytes) -> None:
        pass

    return RequestFollower(view_only, forward=drop, answer=drop, close=lambda why: None)


def round_trips(count: int, batch: int = 100) -> list[float]:
    """Microseconds per round trip, one figure per batch of ``batch``."""
    f = follower()
    per: list[float] = []
    for _ in range(count // batch):
        start = time.perf_counter()
        for _ in range(batch):
            f.request_bytes(REQUEST)
            f.response_bytes(ANSWER)
        per.append((time.perf_counter() - start) / batch * 1e6)
    return per


def bulk(mib: int, chunk_kib: int) -> float:
    """CPU seconds per GiB for the peek at one ``mib`` MiB answer."""
    f = follower()
    size = mib << 20
    f.request_bytes(b"GET /download HTTP/1.1\r\nHost: plc\r\n\r\n")
    f.response_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
    chunk = b"y" * (chunk_kib << 10)
    pieces = size // len(chunk)
    start = time.process_time()
    for _ in range(pieces):
        f.response_bytes(chunk)
    spent = time.process_time() - start
    return spent / (pieces * len(chunk) / (1 << 30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=20_000)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    args = parser.parse_args()
    round_trips(1000)  # warm up
    per = sorted(round_trips(args.round_trips))
    p50 = statistics.median(per)
    p99 = per[min(len(per) - 1, int(len(per) * 0.99))]
    print(f"round trip: +{p50:.1f} us p50, +{p99:.1f} us p99 per request and answer")
    cpu = bulk(args.mib, args.chunk_kib)
    print(f"bulk: {cpu * 1000:.2f} ms CPU per GiB peeked ({args.chunk_kib} KiB reads)")


if __name__ == "__main__":
    main()
