"""A userspace TCP fault proxy: sits between two peers (gateway and relay) and breaks the link on
demand, the way plant networks, firewalls and proxies do.

It runs in a background thread of the test process (one ``selectors`` loop, stdlib only) and is
steered at runtime; every control call returns once the loop has applied it, so a test knows the
fault is in effect.  "Up" is the direction client -> upstream (gateway -> relay), "down" the other.

Faults:

* ``blackhole()``: accept and keep connections but drop every byte both ways; existing connections
  go silent too (a firewall that forgot the flow).  Nobody is told: no FIN, no RST.
* ``cut(UP | DOWN)``: drop one direction only, for current and new connections.
* ``delay(s)``: every chunk is held ``s`` seconds before it is passed on (latency, not loss).
* ``throttle(bytes_per_s)``: a token bucket per direction; the proxy then buffers little, like a
  slow link with a short queue rather than a bufferbloated one.
* ``reset_all()``: abort every current connection with an RST to both ends (SO_LINGER 0).
* ``refuse()``: new connections are accepted and reset at once (what a client sees when nothing
  listens: an immediate failure).
* ``pass_through()``: clear every fault for new bytes and connections.

Lost bytes are never healed: a direction that dropped data stays dead (its TLS stream has a hole),
and a close arriving on a dead direction is not passed on; the far end has to notice by itself,
which is what heartbeats are for.  ``close()`` aborts everything and joins the thread, bounded.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

UP = "up"
DOWN = "down"

CHUNK = 256 * 1024
QUEUE_LIMIT = 512 * 1024
"""Bytes the proxy holds per direction before it stops reading (without delay or throttle)."""
DELAY_BANDWIDTH = 64 * 1024 * 1024
"""With a delay, the queue may hold this many bytes per second of delay (bandwidth x delay)."""
THROTTLED_QUEUE = 64 * 1024
"""With a throttle, a short queue: a slow link, not a bufferbloated one."""

T = TypeVar("T")


def _abort(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _End:
    """One socket of a proxied connection."""

    def __init__(self, proxy: FaultProxy, sock: socket.socket, name: str) -> None:
        self.proxy = proxy
        self.sock = sock
        self.name = name
        self.closed = False

    def abort(self) -> None:
        """Close with an RST (unregistered first: a freed fd number is soon reused)."""
        if not self.closed:
            self.closed = True
            self.proxy._unregister(self)
            _abort(self.sock)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.proxy._unregister(self)
            with contextlib.suppress(OSError):
                self.sock.close()


class _Pipe:
    """One direction of one proxied connection: read from ``src``, queue, write to ``dst``."""

    def __init__(self, proxy: FaultProxy, src: _End, dst: _End, direction: str) -> None:
        self.proxy = proxy
        self.src, self.dst = src, dst
        self.direction = direction
        self.queue: deque[tuple[float, bytes]] = deque()  # (release time, bytes)
        self.queued = 0
        self.eof = False  # src sent a FIN
        self.shut = False  # the FIN was passed on
        self.dead = False  # this direction lost bytes: it never carries anything again
        self.write_blocked = False
        self.tokens = 0.0
        self.filled_at = time.monotonic()
        self.reverse: _Pipe | None = None

    def dropping(self) -> bool:
        return self.dead or self.proxy._cut.get(self.direction, False)

    def kill(self) -> None:
        """Lose this direction for good (its bytes and any FIN or RST that follows)."""
        self.dead = True
        self.queue.clear()
        self.queued = 0

    def limit(self) -> int:
        if self.proxy._rate is not None:
            return THROTTLED_QUEUE
        return max(QUEUE_LIMIT, int(DELAY_BANDWIDTH * self.proxy._delay))

    def wants_read(self) -> bool:
        if self.src.closed or self.eof:
            return False
        return self.dropping() or self.dst.closed or self.queued < self.limit()

    def wants_write(self) -> bool:
        return bool(self.queue) and not self.dst.closed

    def read(self) -> None:
        size = CHUNK
        if not (self.dropping() or self.dst.closed):
            size = max(4096, min(CHUNK, self.limit() - self.queued))
        try:
            data = self.src.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.proxy._src_reset(self)
            return
        if not data:
            self.eof = True
            self.proxy._maybe_pass_eof(self)
            return
        self.proxy.bytes[self.direction] += len(data)
        if self.dropping():
            self.kill()
            self.proxy.dropped[self.direction] += len(data)
            return
        if self.dst.closed:
            return
        self.queue.append((time.monotonic() + self.proxy._delay, data))
        self.queued += len(data)

    def next_due(self, now: float) -> float | None:
        """When this pipe next has something it may write (``now`` if it may write now)."""
        if not self.wants_write() or self.write_blocked:
            return None
        due = self.queue[0][0]
        rate = self.proxy._rate
        if rate is not None:
            self._fill(now, rate)
            need = min(4096, self.queue[0][1].__len__())
            if self.tokens < need:
                due = max(due, now + (need - self.tokens) / rate)
        return max(due, now)

    def _fill(self, now: float, rate: float) -> None:
        burst = max(16384.0, rate * 0.02)
        self.tokens = min(burst, self.tokens + (now - self.filled_at) * rate)
        self.filled_at = now

    def write(self, now: float) -> None:
        rate = self.proxy._rate
        while self.queue and not self.dst.closed:
            release, data = self.queue[0]
            if release > now:
                return
            size = len(data)
            if rate is not None:
                self._fill(now, rate)
                size = min(size, int(self.tokens))
                if size < min(4096, len(data)):
                    return
            try:
                sent = self.dst.sock.send(data[:size])
            except (BlockingIOError, InterruptedError):
                self.write_blocked = True
                return
            except OSError:
                self.proxy._dst_failed(self)
                return
            if rate is not None:
                self.tokens -= sent
            self.queued -= sent
            if sent == len(data):
                self.queue.popleft()
            else:
                self.queue[0] = (release, data[sent:])
                if sent < size:
                    self.write_blocked = True
                    return
        self.proxy._maybe_pass_eof(self)


class _Connection:
    def __init__(self, proxy: FaultProxy, client: _End, upstream: _End | None) -> None:
        self.client = client
        self.upstream = upstream if upstream is not None else client
        self.pipes: list[_Pipe] = []
        if upstream is None:
            # Blackholed from the start: never dialled upstream, everything is dropped.
            sink = _Pipe(proxy, client, client, UP)
            sink.kill()
            self.pipes = [sink]
        else:
            up = _Pipe(proxy, client, upstream, UP)
            down = _Pipe(proxy, upstream, client, DOWN)
            up.reverse, down.reverse = down, up
            self.pipes = [up, down]

    def ends(self) -> list[_End]:
        return [self.client] if self.upstream is self.client else [self.client, self.upstream]

    def finished(self) -> bool:
        return all(end.closed for end in self.ends())


class FaultProxy:
    """Listen on 127.0.0.1:``port`` and forward to ``upstream``, with faults switched at runtime."""

    def __init__(self, upstream: tuple[str, int], *, sockbuf: int | None = 256 * 1024) -> None:
        self.upstream = upstream
        self._sockbuf = sockbuf
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._commands: deque[tuple[Callable[[], object], _Result]] = deque()
        self._lock = threading.Lock()
        self._stopping = False
        self._connections: list[_Connection] = []
        self._registered: dict[socket.socket, int] = {}
        # Fault state (only touched in the loop thread).
        self._blackhole = False
        self._refuse = False
        self._cut: dict[str, bool] = {UP: False, DOWN: False}
        self._delay = 0.0
        self._rate: float | None = None
        # Counters (read from any thread; ints are updated atomically enough for tests).
        self.accepted = 0
        self.refused = 0
        self.bytes: dict[str, int] = {UP: 0, DOWN: 0}
        self.dropped: dict[str, int] = {UP: 0, DOWN: 0}
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name=f"faultproxy:{self.port}")
        self._thread.daemon = True
        self._thread.start()

    # -- control (any thread) ---------------------------------------------------------------------

    def pass_through(self) -> None:
        """Clear every fault; directions that already lost bytes stay dead."""

        def apply() -> None:
            self._blackhole = self._refuse = False
            self._cut = {UP: False, DOWN: False}
            self._delay, self._rate = 0.0, None
            for conn in self._connections:
                for end in conn.ends():
                    self._set_rcvbuf(end)

        self._call(apply)

    def blackhole(self, *, existing: bool = True, new: bool = True) -> None:
        def apply() -> None:
            self._blackhole = new
            if existing:
                for conn in self._connections:
                    for pipe in conn.pipes:
                        pipe.kill()

        self._call(apply)

    def cut(self, direction: str) -> None:
        """Drop ``direction`` (UP: client -> upstream, DOWN: upstream -> client) from now on."""
        if direction not in (UP, DOWN):
            raise ValueError(direction)

        def apply() -> None:
            self._cut[direction] = True
            for conn in self._connections:
                for pipe in conn.pipes:
                    if pipe.direction == direction and pipe.queue:
                        pipe.kill()

        self._call(apply)

    def delay(self, seconds: float) -> None:
        def apply() -> None:
            self._delay = seconds

        self._call(apply)

    def throttle(self, bytes_per_second: float | None) -> None:
        """Cap each direction of every connection at ``bytes_per_second`` (None: no cap).

        Receive buffers shrink to the short queue too, so the link holds ~0.1 MB, not megabytes.
        """

        def apply() -> None:
            self._rate = bytes_per_second
            now = time.monotonic()
            for conn in self._connections:
                for pipe in conn.pipes:
                    pipe.tokens, pipe.filled_at = 0.0, now
                for end in conn.ends():
                    self._set_rcvbuf(end)

        self._call(apply)

    def refuse(self, on: bool = True) -> None:
        def apply() -> None:
            self._refuse = on

        self._call(apply)

    def reset_all(self) -> int:
        """Abort every current connection (RST both ways); returns how many there were."""

        def apply() -> int:
            conns, self._connections = self._connections, []
            for conn in conns:
                for end in conn.ends():
                    end.abort()
            return len(conns)

        return self._call(apply)

    def active(self) -> int:
        """Connections with at least one end still open."""
        return self._call(lambda: len(self._connections))

    def close(self, timeout: float = 5.0) -> None:
        """Abort everything and stop the thread; raises if the loop hit an unexpected error."""
        with self._lock:
            self._stopping = True
        self._wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("fault proxy thread did not stop")
        if self.errors:
            raise AssertionError(f"fault proxy loop failed: {self.errors[0]!r}") from self.errors[0]

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        result: _Result = _Result()
        with self._lock:
            if self._stopping or not self._thread.is_alive():
                raise RuntimeError("fault proxy is closed")
            self._commands.append((fn, result))
        self._wake()
        if not result.done.wait(timeout):
            raise AssertionError("fault proxy did not apply a command in time")
        if result.error is not None:
            raise result.error
        value: T = result.value  # type: ignore[assignment]
        return value

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- the loop (proxy thread only) -------------------------------------------------------------

    def _run(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while True:
                with self._lock:
                    stopping = self._stopping
                    commands, self._commands = self._commands, deque()
                if stopping:
                    break
                for fn, result in commands:
                    try:
                        result.value = fn()
                    except BaseException as e:
                        result.error = e
                    result.done.set()
                self._turn()
        except BaseException as e:
            self.errors.append(e)
        finally:
            self._shutdown()

    def _turn(self) -> None:
        now = time.monotonic()
        due: float | None = None
        for conn in self._connections:
            for pipe in conn.pipes:
                self._update_interest(pipe.src)
                self._update_interest(pipe.dst)
                when = pipe.next_due(now)
                if when is not None:
                    due = when if due is None else min(due, when)
        timeout = None if due is None else max(0.0, due - now)
        events = self._selector.select(timeout)
        ready: dict[socket.socket, int] = {}
        for key, mask in events:
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is self._listener:
                self._accept()
            elif sock is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            else:
                ready[sock] = mask
        now = time.monotonic()
        for conn in list(self._connections):
            for pipe in conn.pipes:
                mask = ready.get(pipe.src.sock, 0) if not pipe.src.closed else 0
                if mask & selectors.EVENT_READ and pipe.wants_read():
                    pipe.read()
                wmask = ready.get(pipe.dst.sock, 0) if not pipe.dst.closed else 0
                if wmask & selectors.EVENT_WRITE:
                    pipe.write_blocked = False
                if pipe.wants_write() and not pipe.write_blocked:
                    pipe.write(now)
            if conn.finished():
                self._connections.remove(conn)
                for end in conn.ends():
                    self._unregister(end)

    def _update_interest(self, end: _End) -> None:
        if end.closed:
            self._unregister(end)
            return
        mask = 0
        for conn in self._connections:
            for pipe in conn.pipes:
                if pipe.src is end and pipe.wants_read():
                    mask |= selectors.EVENT_READ
                if pipe.dst is end and pipe.wants_write() and pipe.write_blocked:
                    mask |= selectors.EVENT_WRITE
        current = self._registered.get(end.sock)
        if mask == current:
            return
        if mask == 0:
            self._unregister(end)
        elif current is None:
            self._selector.register(end.sock, mask)
            self._registered[end.sock] = mask
        else:
            self._selector.modify(end.sock, mask)
            self._registered[end.sock] = mask

    def _unregister(self, end: _End) -> None:
        if self._registered.pop(end.sock, None) is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(end.sock)

    def _tune(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._sockbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._sockbuf)
        rcvbuf = THROTTLED_QUEUE if self._rate is not None else self._sockbuf
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)

    def _set_rcvbuf(self, end: _End) -> None:
        size = THROTTLED_QUEUE if self._rate is not None else self._sockbuf
        if size is not None and not end.closed:
            with contextlib.suppress(OSError):
                end.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self.accepted += 1
        if self._refuse:
            self.refused += 1
            _abort(sock)
            return
        self._tune(sock)
        sock.setblocking(False)
        client = _End(self, sock, "client")
        if self._blackhole:
            self._connections.append(_Connection(self, client, None))
            return
        upstream_sock = socket.socket()
        try:
            self._tune(upstream_sock)
            upstream_sock.settimeout(2.0)
            upstream_sock.connect(self.upstream)
        except OSError:
            # Upstream not listening: the client sees its connection reset at once.
            self.refused += 1
            _abort(upstream_sock)
            client.abort()
            return
        upstream_sock.setblocking(False)
        conn = _Connection(self, client, _End(self, upstream_sock, "upstream"))
        for pipe in conn.pipes:
            if self._cut[pipe.direction]:
                pipe.kill()
        self._connections.append(conn)

    def _maybe_pass_eof(self, pipe: _Pipe) -> None:
        """A FIN travels once everything before it was delivered, unless the direction is dead."""
        if not pipe.eof or pipe.shut or pipe.queue or pipe.dead:
            return
        pipe.shut = True
        if not pipe.dst.closed:
            with contextlib.suppress(OSError):
                pipe.dst.sock.shutdown(socket.SHUT_WR)
        reverse = pipe.reverse
        if reverse is None or reverse.shut or reverse.dst.closed:
            pipe.src.close()
            pipe.dst.close()

    def _src_reset(self, pipe: _Pipe) -> None:
        """``pipe.src`` was reset: close it, and pass the RST on unless that direction is dead."""
        pipe.src.abort()
        if not pipe.dead and not pipe.dst.closed:
            pipe.dst.abort()

    def _dst_failed(self, pipe: _Pipe) -> None:
        """Writing to ``pipe.dst`` failed: it is gone; tell the source, if the way back lives."""
        pipe.dst.abort()
        pipe.queue.clear()
        pipe.queued = 0
        reverse = pipe.reverse
        if reverse is not None and not reverse.dead and not pipe.src.closed:
            pipe.src.abort()

    def _shutdown(self) -> None:
        for conn in self._connections:
            for end in conn.ends():
                end.abort()
        self._connections.clear()
        with contextlib.suppress(OSError):
            self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()
        with self._lock:
            self._stopping = True
            pending, self._commands = self._commands, deque()
        for _, result in pending:
            result.error = RuntimeError("fault proxy is closed")
            result.done.set()


class _Result:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: object = None
        self.error: BaseException | None = None
