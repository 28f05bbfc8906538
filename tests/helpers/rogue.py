"""Hostile and hand-driven peers for the fault tests.

* raw HTTP/2 frame builders: well-formed frames, structurally broken ones, seeded fuzz;
* TLS byte sequences that are not TLS or stop half-way (a genuine ClientHello cut short);
* ``H2Client``: a blocking HTTP/2 client on one TLS socket (the ``h2`` library), to drive the
  relay's engineer listener with thousands of pipelined streams;
* ``RogueRelay``: a TLS server in a thread that holds the relay's certificate (so the real gateway
  trusts it) and answers each gateway connection with one misbehaviour.

Everything is blocking Python sockets on loopback, so the daemons under test are the only Twisted
code in play.
"""

from __future__ import annotations

import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import h2.events as ev
from attrs import define, field, frozen
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import StreamClosedError
from hpack import Encoder

from gateway.demo.stack import http_get
from gateway.promtext import samples

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20


# -- HTTP/2 frames --------------------------------------------------------------------------------


def frame(
    ftype: int, flags: int, stream_id: int, payload: bytes = b"", *, length: int | None = None
) -> bytes:
    """One frame; ``length`` overrides the declared payload length (to lie about it)."""
    size = len(payload) if length is None else length
    return (
        struct.pack(">I", size)[1:]
        + bytes([ftype, flags])
        + struct.pack(">I", stream_id)
        + (payload)
    )


def settings(pairs: Iterable[tuple[int, int]] = (), *, ack: bool = False) -> bytes:
    body = b"".join(struct.pack(">HI", k, v) for k, v in pairs)
    return frame(SETTINGS, ACK if ack else 0, 0, body)


def hpack_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    encoded: bytes = Encoder().encode(headers)
    return encoded


CONNECT_WEB = [(b":method", b"CONNECT"), (b":authority", b"web")]

BAD_HPACK = {
    # An indexed field far past the static and (empty) dynamic table.
    "index-out-of-table": b"\xff\xff\xff\x7f",
    # Index 0 is never valid (RFC 7541 section 6.1).
    "index-zero": b"\x80",
    # A literal whose string claims 5 bytes and carries 2.
    "truncated-literal": b"\x00\x05ab",
    # An integer that never ends (continuation bit set on every byte).
    "endless-integer": b"\x7f" + b"\xff" * 12,
    # A Huffman string that is all 1-bits: decodes to EOS, which is forbidden.
    "huffman-eos": b"\x00\x84\xff\xff\xff\xff\x01a",
    # A dynamic table size update above the advertised maximum.
    "table-size-too-big": b"\x3f\xe1\xff\xff\x0f",
}


def broken_frames() -> dict[str, bytes]:
    """Structurally broken frames, each on its own a connection error for a correct peer.

    Sent after a valid SETTINGS frame, so the receiver is past the preface and must reject the
    frame itself.
    """
    cases = {
        "settings-length-not-multiple-of-6": frame(SETTINGS, 0, 0, b"\x00\x04\x00\x00\x10"),
        "settings-on-a-stream": frame(SETTINGS, 0, 1, struct.pack(">HI", 4, 65535)),
        "settings-ack-with-payload": frame(SETTINGS, ACK, 0, struct.pack(">HI", 4, 65535)),
        "settings-window-too-large": settings([(4, 2**31)]),
        "settings-frame-size-too-small": settings([(5, 100)]),
        "settings-enable-push-2": settings([(2, 2)]),
        "window-update-zero-on-connection": frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"),
        "window-update-wrong-length": frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"),
        "window-update-overflow": frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)) * 2,
        "ping-wrong-length": frame(PING, 0, 0, b"\x00" * 7),
        "ping-on-a-stream": frame(PING, 0, 3, b"\x00" * 8),
        "data-on-stream-0": frame(DATA, 0, 0, b"hello"),
        "rst-stream-on-stream-0": frame(RST_STREAM, 0, 0, b"\x00\x00\x00\x08"),
        "goaway-too-short": frame(GOAWAY, 0, 0, b"\x00\x00"),
        "continuation-without-headers": frame(CONTINUATION, END_HEADERS, 1, b"\x82"),
        "push-promise-while-disabled": frame(PUSH_PROMISE, END_HEADERS, 1, b"\x00\x00\x00\x02\x82"),
        "padding-longer-than-frame": frame(DATA, PADDED, 1, b"\xff" + b"x" * 4),
        "frame-larger-than-max": frame(DATA, 0, 1, b"", length=(1 << 24) - 1),
        "priority-wrong-length": frame(PRIORITY, 0, 1, b"\x00\x00\x00"),
        "headers-depend-on-itself": frame(
            HEADERS, END_HEADERS | PRIORITY_FLAG, 1, struct.pack(">IB", 1, 16) + b"\x82"
        ),
    }
    for name, tail in BAD_HPACK.items():
        cases[f"headers-bad-hpack-{name}"] = frame(
            HEADERS, END_HEADERS, 1, hpack_block(CONNECT_WEB) + tail
        )
    return cases


FRAME_TYPES = [*range(10), 0x10, 0xFF]


def fuzz_frame(rng: random.Random) -> bytes:
    """A frame with a valid 9-byte header and random type, flags, length, stream id, payload;
    now and then the declared length lies."""
    ftype = rng.choice(FRAME_TYPES) if rng.random() < 0.9 else rng.randrange(256)
    flags = rng.randrange(256) if rng.random() < 0.5 else rng.choice([0, 1, 4, 5, 8, 0x20])
    stream_id = rng.choice([0, 1, 1, 3, 2, rng.randrange(1, 100), rng.randrange(2**32)])
    size = rng.choice([0, 1, 3, 4, 5, 6, 8, 9, 12, rng.randrange(64), rng.randrange(20000)])
    if ftype == HEADERS and rng.random() < 0.5:
        payload = hpack_block(CONNECT_WEB) + rng.randbytes(rng.randrange(8))
    else:
        payload = rng.randbytes(size)
    length = None
    if rng.random() < 0.05:
        length = rng.randrange(1 << 24)
    return frame(ftype, flags, stream_id, payload, length=length)


def fuzz_frames(rng: random.Random, count: int) -> bytes:
    return b"".join(fuzz_frame(rng) for _ in range(count))


# -- TLS records ----------------------------------------------------------------------------------


def client_hello(server_name: str = "localhost") -> bytes:
    """The first flight of a genuine TLS client (Python's ``ssl``), as bytes on the wire."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def tls_garbage(rng: random.Random) -> dict[str, bytes]:
    """Bytes for a TLS port that are not (or not all of) a TLS handshake."""
    hello = client_hello()
    return {
        "random-bytes": rng.randbytes(4096),
        "http1-request": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "cleartext-h2-preface": PREFACE + settings(),
        "half-a-client-hello": hello[: len(hello) // 2],
        "record-header-only": b"\x16\x03\x01\x02\x00",
        "record-longer-than-allowed": b"\x16\x03\x03\xff\xff" + rng.randbytes(512),
        "alert-record": b"\x15\x03\x03\x00\x02\x02\x28",
        "sslv2-hello": b"\x80\x2e\x01\x00\x02\x00\x15" + rng.randbytes(45),
        "client-hello-then-garbage": hello + rng.randbytes(1024),
    }


def tls_context(
    ca: Path, cert: Path | None = None, key: Path | None = None, *, alpn: bool = True
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if alpn:
        ctx.set_alpn_protocols(["h2"])
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def closed_by_peer(sock: socket.socket, deadline: float) -> bool:
    """Read (and discard) until the peer closes; False if it is still open after ``deadline``."""
    end = time.monotonic() + deadline
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(min(left, 1.0))
        try:
            if not sock.recv(65536):
                return True
        except (TimeoutError, ssl.SSLWantReadError):
            continue
        except (OSError, ssl.SSLError):
            return True


@frozen
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes


class FrameReader:
    """Splits what an HTTP/2 peer sent into frames (skipping a client's connection preface)."""

    def __init__(self, *, preface: bool) -> None:
        self.buffer = bytearray()
        self.preface_left = len(PREFACE) if preface else 0

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        if self.preface_left:
            taken = min(self.preface_left, len(self.buffer))
            del self.buffer[:taken]
            self.preface_left -= taken
        frames = []
        while len(self.buffer) >= 9:
            size = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + size:
                break
            ftype, flags = self.buffer[3], self.buffer[4]
            sid = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
            frames.append(Frame(ftype, flags, sid, bytes(self.buffer[9 : 9 + size])))
            del self.buffer[: 9 + size]
        return frames


def wait_for_frame(
    sock: socket.socket, reader: FrameReader, want: Callable[[Frame], bool], deadline: float
) -> Frame | None:
    """Read frames until one satisfies ``want``; None if the peer closed or time ran out."""
    end = time.monotonic() + deadline
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(min(left, 1.0))
        try:
            data = sock.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            continue
        except (OSError, ssl.SSLError):
            return None
        if not data:
            return None
        for f in reader.feed(data):
            if want(f):
                return f


def hangs_up(
    sock: socket.socket, *, preface: bool, deadline: float, reader: FrameReader | None = None
) -> str | None:
    """How an HTTP/2 peer ended our connection: ``"goaway"`` (it sent GOAWAY), ``"closed"``
    (EOF, reset or TLS alert without GOAWAY), or None if it was still open at ``deadline``."""
    reader = reader or FrameReader(preface=preface)
    end = time.monotonic() + deadline
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(min(left, 1.0))
        try:
            data = sock.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            continue
        except (OSError, ssl.SSLError):
            return "closed"
        if not data:
            return "closed"
        if any(f.type == GOAWAY for f in reader.feed(data)):
            return "goaway"


T = TypeVar("T")


def in_parallel(cases: Mapping[str, Callable[[], T]], workers: int = 16) -> dict[str, T]:
    """Run each case in a thread pool; results by name (an exception in a case propagates)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(case) for name, case in cases.items()}
        return {name: f.result() for name, f in futures.items()}


# -- metrics --------------------------------------------------------------------------------------


def metrics(url: str, timeout: float = 5.0) -> dict[str, float]:
    """A Prometheus exposition as ``{"name{labels}": value}``."""
    return samples(http_get(url, timeout)[1].decode())


# -- an HTTP/2 client -----------------------------------------------------------------------------


class PeerClosed(Exception):
    """The server closed the connection."""


@define
class StreamResult:
    status: int | None = None
    headers: dict[bytes, bytes] = field(factory=dict)
    body: bytearray = field(factory=bytearray)
    ended: bool = False
    reset: int | None = None

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class H2Client:
    """One TLS connection speaking HTTP/2 as a client, driven by hand (blocking socket)."""

    def __init__(self, port: int, ca: Path, *, timeout: float = 30.0) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = tls_context(ca).wrap_socket(raw, server_hostname="localhost")
        if self.sock.selected_alpn_protocol() != "h2":
            raise AssertionError(f"ALPN chose {self.sock.selected_alpn_protocol()!r}, not h2")
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.local_settings.initial_window_size = 1 << 20
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(1 << 30)
        self.streams: dict[int, StreamResult] = {}
        self.flush()

    def close(self) -> None:
        try:
            self.h2.close_connection()
            self.flush()
        except Exception:
            pass
        self.sock.close()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    @property
    def max_concurrent(self) -> int:
        value: int = self.h2.remote_settings.max_concurrent_streams
        return value

    def open(
        self, authority: str, headers: list[tuple[bytes, bytes]], *, method: str = "CONNECT"
    ) -> int:
        sid: int = self.h2.get_next_available_stream_id()
        request = [(b":method", method.encode()), (b":authority", authority.encode())]
        if method != "CONNECT":
            request += [(b":scheme", b"https"), (b":path", b"/v1/gateway")]
        self.h2.send_headers(sid, request + headers)
        self.streams[sid] = StreamResult()
        return sid

    def send(self, sid: int, data: bytes, *, end: bool = False) -> None:
        self.h2.send_data(sid, data, end_stream=end)

    def end(self, sid: int) -> None:
        self.h2.end_stream(sid)

    def reset(self, sid: int, code: int = 8) -> None:
        """RST_STREAM (default CANCEL); nothing if the stream is closed already."""
        try:
            self.h2.reset_stream(sid, code)
        except StreamClosedError:
            pass

    def finish(self, sid: int) -> StreamResult:
        """Forget a stream whose answer is in: close our side too if it is still open."""
        result = self.streams.pop(sid)
        if result.reset is None:
            self.reset(sid, 0 if result.ended else 8)
        return result

    def pump(self) -> None:
        """Read once and apply what arrived (answers PINGs and credits windows on the way)."""
        self.flush()
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            raise AssertionError("the server went quiet (read timed out)") from None
        if not data:
            raise PeerClosed("server closed the connection")
        for event in self.h2.receive_data(data):
            self._event(event)
        self.flush()

    def _event(self, event: ev.Event) -> None:
        if isinstance(event, ev.ConnectionTerminated):
            raise PeerClosed(f"server sent GOAWAY {event.error_code!r}")
        if isinstance(event, ev.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        sid = getattr(event, "stream_id", None)
        result = self.streams.get(sid) if sid is not None else None
        if result is None:
            return  # connection-level, or a stream already forgotten (e.g. a late RST_STREAM)
        if isinstance(event, ev.ResponseReceived):
            headers = dict(event.headers or [])
            result.status = int(headers[b":status"])
            result.headers = headers
        elif isinstance(event, ev.DataReceived):
            result.body += event.data or b""
        elif isinstance(event, ev.StreamEnded):
            result.ended = True
        elif isinstance(event, ev.StreamReset):
            result.reset = event.error_code

    def forget(self, sid: int) -> StreamResult:
        return self.streams.pop(sid)


# -- a rogue relay --------------------------------------------------------------------------------


@define
class Misbehaviour:
    """What the rogue does to one gateway connection. ``act`` gets the socket (TLS or raw) after
    the handshake; with ``closes`` it hangs up itself, otherwise it waits for the gateway to."""

    name: str
    act: Callable[[socket.socket], None]
    tls: bool = True
    closes: bool = False


@define
class Round:
    name: str
    peer_closed: bool
    seconds: float
    received: int
    error: str = ""


class RogueRelay:
    """Listens on the relay's gateway port and plays one ``Misbehaviour`` per gateway connection,
    in order; then stops accepting. ``rounds`` records how each went."""

    def __init__(
        self,
        port: int,
        *,
        cert: Path,
        key: Path,
        ca: Path,
        script: list[Misbehaviour],
        close_deadline: float = 20.0,
    ) -> None:
        self.port = port
        self.script = list(script)
        self.close_deadline = close_deadline
        self.rounds: list[Round] = []
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.ctx.load_verify_locations(str(ca))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.set_alpn_protocols(["h2"])
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="rogue-relay", daemon=True)

    def start(self) -> RogueRelay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.close_deadline + 10)
        self.listener.close()

    @property
    def finished(self) -> bool:
        return len(self.rounds) == len(self.script)

    def _serve(self) -> None:
        for misbehaviour in self.script:
            conn = self._accept()
            if conn is None:
                return
            self.rounds.append(self._play(misbehaviour, conn))

    def _accept(self) -> socket.socket | None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
                return conn
            except TimeoutError:
                continue
        return None

    def _play(self, misbehaviour: Misbehaviour, raw: socket.socket) -> Round:
        started = time.monotonic()
        sock: socket.socket = raw
        try:
            raw.settimeout(10)
            if misbehaviour.tls:
                sock = self.ctx.wrap_socket(raw, server_side=True)
            misbehaviour.act(sock)
            if misbehaviour.closes:
                return Round(misbehaviour.name, False, time.monotonic() - started, 0)
            received = 0
            end = started + self.close_deadline
            closed = False
            while time.monotonic() < end and not self._stop.is_set():
                sock.settimeout(0.5)
                try:
                    data = sock.recv(65536)
                except (TimeoutError, ssl.SSLWantReadError):
                    continue
                except (OSError, ssl.SSLError):
                    closed = True
                    break
                if not data:
                    closed = True
                    break
                received += len(data)
            return Round(misbehaviour.name, closed, time.monotonic() - started, received)
        except (OSError, ssl.SSLError) as e:
            return Round(misbehaviour.name, True, time.monotonic() - started, 0, error=repr(e))
        finally:
            try:
                sock.close()
            except OSError:
                pass
