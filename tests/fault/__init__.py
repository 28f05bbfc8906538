"""Fault suite: the tunnel under broken links, dying processes and misbehaving peers.

Shared helpers for both fault modules: the recovery bounds derived from the test configuration, a
metrics reader, and ``Download``, an engineer that verifies every byte as it arrives and reports
how its transfer ended, so that a fault can be judged by one rule: a transfer either completes
byte-exact or fails visibly (reset or short), never with wrong bytes, and never hangs.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time

from gateway.demo.stack import PROBE_ERRORS, scrape
from tests.helpers import processes
from tests.helpers.clients import PERIOD, expected, get
from tests.helpers.processes import Stack, port_open, wait_until

HEARTBEAT_INTERVAL = float(processes.HEARTBEAT_INTERVAL)
HEARTBEAT_TIMEOUT = float(processes.HEARTBEAT_TIMEOUT)
RECONNECT_CAP = float(processes.RECONNECT_CAP)
"""As ``Stack.write_configs`` sets them (heartbeat interval and timeout, reconnect cap)."""
SLACK = 3.0
"""For a loaded 2-core machine shared with other test runs."""
DETECT_BOUND = HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT + SLACK
"""A silent relay is noticed within one PING interval plus the ack timeout."""
RECOVERY_BOUND = 15.0
"""From the moment the link or the relay is back until the tunnel is up again."""

MiB = 1024 * 1024


def metric(url: str, name: str) -> float | None:
    """``name`` (a metric, or an exact series with its labels) from a /metrics page; None when
    it is absent or the page does not answer."""
    try:
        return scrape(url, name)
    except PROBE_ERRORS:
        return None


def gateway_metric(stack: Stack, name: str) -> float | None:
    return metric(stack.url("gw_metrics", "/metrics"), name)


def relay_metric(stack: Stack, name: str) -> float | None:
    return metric(stack.url("relay_metrics", "/metrics"), name)


def connects(stack: Stack) -> int:
    """Tunnels the gateway has established so far (status JSON, the same as the counter)."""
    return int(stack.status()["tunnel"]["connects"])


IDLE = (0.0, 0.0)
"""(gateway_streams_active, relay_streams_active) with no engineer connection open."""


def streams(stack: Stack) -> tuple[float | None, float | None]:
    """Open streams as (gateway, relay) count them."""
    return gateway_metric(stack, "gateway_streams_active"), relay_metric(
        stack, "relay_streams_active"
    )


def wait_streams(
    stack: Stack, expected: tuple[float | None, float | None], why: str, deadline: float = 10.0
) -> None:
    seen: list[tuple[float | None, float | None]] = []

    def check() -> bool:
        seen.append(streams(stack))
        return seen[-1] == expected

    try:
        wait_until(f"{why}: (gateway, relay) streams at {expected}", check, deadline=deadline)
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen {seen[-1]}") from None


def page_works(port: int) -> bool:
    """A new engineer connection gets the processor's page (False instead of raising)."""
    if not port_open(port):
        return False
    try:
        return get(port, "/", timeout=5)[0] == 200
    except OSError:
        return False


def assert_all_alive(stack: Stack) -> None:
    """No process of the stack died (a fault may end connections, never a process)."""
    for name, proc in stack.procs.items():
        code = proc.popen.poll()
        assert code is None, f"{name} exited with {code}:\n{proc.tail()}"


def stop_quickly(stack: Stack) -> None:
    """Teardown by SIGKILL: stopping on SIGTERM is a test of its own, not every teardown's cost."""
    for proc in reversed(list(stack.procs.values())):
        proc.stop(signal.SIGKILL)


class Download:
    """``GET /download?size=N`` from a thread, verifying every byte as it arrives.

    ``hold_at``: stop reading once that many body bytes arrived, until ``release()`` (the transfer
    is then certainly still in flight when a fault strikes).  ``rate``: read at most that many
    bytes per second (a slow engineer).  ``outcome`` ends as ``complete`` (all bytes, all right),
    ``reset`` (an error such as ECONNRESET), ``short`` (EOF before Content-Length), ``stalled``
    (nothing for ``timeout`` seconds: a hang, never acceptable after a fault), ``stopped``
    (``stop()`` called) or ``wrong`` (a byte differs from the pattern: never acceptable).
    """

    def __init__(
        self,
        port: int,
        size: int,
        *,
        hold_at: int | None = None,
        rate: float | None = None,
        timeout: float = 30.0,
        rcvbuf: int | None = None,
    ) -> None:
        self.port, self.size = port, size
        self.hold_at, self.rate, self.timeout, self.rcvbuf = hold_at, rate, timeout, rcvbuf
        self.received = 0
        self.outcome = "running"
        self.detail = ""
        self.status_line = b""
        self._release = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"download:{port}", daemon=True)

    def start(self) -> Download:
        self._thread.start()
        return self

    def release(self) -> None:
        self._release.set()

    def stop(self) -> None:
        self._stop.set()
        self._release.set()

    def join(self, timeout: float) -> Download:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(
                f"download thread still running after {timeout:g}s ({self.received} bytes)"
            )
        return self

    @property
    def done(self) -> bool:
        return self.outcome != "running"

    def _run(self) -> None:
        try:
            self._transfer()
        except TimeoutError as e:
            self.outcome, self.detail = "stalled", repr(e)
        except OSError as e:
            self.outcome, self.detail = "reset", repr(e)
        except Exception as e:  # report, never lose, an unexpected failure
            self.outcome, self.detail = "error", repr(e)

    def _transfer(self) -> None:
        sock = socket.socket()
        if self.rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.settimeout(self.timeout)
        with contextlib.closing(sock):
            sock.connect(("127.0.0.1", self.port))
            request = f"GET /download?size={self.size} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            sock.sendall(request.encode())
            head = b""
            while b"\r\n\r\n" not in head:
                data = sock.recv(65536)
                if not data:
                    self.outcome, self.detail = "short", f"EOF in the response head: {head!r}"
                    return
                head += data
            head, body = head.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            self.status_line = lines[0]
            if b" 200 " not in lines[0] + b" ":
                self.outcome, self.detail = "error", f"answered {lines[0]!r}"
                return
            length = next(
                int(line.split(b":", 1)[1])
                for line in lines
                if line.lower().startswith(b"content-length:")
            )
            if length != self.size:
                self.outcome, self.detail = "wrong", f"Content-Length {length} != {self.size}"
                return
            self._check(body)
            started, budget_used = time.monotonic(), len(body)
            while self.received < self.size:
                if self.outcome != "running":
                    return
                if self.hold_at is not None and self.received >= self.hold_at:
                    self._release.wait()
                    self.hold_at = None
                if self._stop.is_set():
                    self.outcome = "stopped"
                    return
                want = min(1 << 20, self.size - self.received)
                if self.rate is not None:
                    allowed = int((time.monotonic() - started) * self.rate) - budget_used
                    if allowed <= 0:
                        time.sleep(0.02)
                        continue
                    want = min(want, allowed)
                data = sock.recv(want)
                if not data:
                    self.outcome = "short"
                    self.detail = f"EOF after {self.received} of {self.size} bytes"
                    return
                budget_used += len(data)
                self._check(data)
            if self.outcome == "running":
                self.outcome = "complete"

    def _check(self, data: bytes) -> None:
        if not data:
            return
        if self.received + len(data) > self.size:
            self.outcome = "wrong"
            self.detail = f"more than {self.size} bytes"
            return
        if data != expected(self.received, len(data)):
            bad = next(i for i, b in enumerate(data) if b != (self.received + i) % PERIOD)
            self.outcome, self.detail = "wrong", f"byte {self.received + bad} is wrong"
            return
        self.received += len(data)

    def wait_received(self, n: int, deadline: float = 30.0) -> None:
        end = time.monotonic() + deadline
        while self.received < n:
            if self.done:
                raise AssertionError(
                    f"download ended ({self.outcome} {self.detail}) before {n} bytes"
                )
            if time.monotonic() > end:
                raise AssertionError(
                    f"download got {self.received} bytes, not {n}, in {deadline:g}s"
                )
            time.sleep(0.02)

    def assert_failed_cleanly(self) -> None:
        """The transfer was cut by a fault: it must say so (reset or short), and every byte that
        did arrive was right."""
        assert self.outcome in ("reset", "short"), (
            f"a cut transfer must fail visibly, got {self.outcome} {self.detail}"
            f" after {self.received} of {self.size} bytes"
        )

    def assert_complete(self) -> None:
        assert self.outcome == "complete", (
            f"download {self.outcome} {self.detail} after {self.received} of {self.size} bytes"
        )
