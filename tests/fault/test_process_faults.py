"""Process faults: relay and gateway killed mid-transfer, processors that hang or reset, a slow
engineer, and stopping on SIGTERM.

One stack serves the module (relay, gateway, demo processor, an engineer client) plus two raw
processors run by the test itself: ``hang`` accepts and never answers, ``reset`` accepts and resets.
Tests that kill a process start it again; every test ends with all processes alive.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fault import (
    IDLE,
    RECOVERY_BOUND,
    Download,
    MiB,
    assert_all_alive,
    connects,
    gateway_metric,
    page_works,
    relay_metric,
    stop_quickly,
    streams,
    wait_streams,
)
from tests.helpers.clients import download_and_verify, websocket_echo
from tests.helpers.processes import Proc, Stack, make_stack, wait_until

pytestmark = pytest.mark.e2e

GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class RawProcessor:
    """A processor that misbehaves: ``hang`` accepts and never answers (nor reads, nor closes),
    ``reset`` accepts and aborts at once (SO_LINGER 0)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.2)
        self.port: int = self.server.getsockname()[1]
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"raw-{mode}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            else:
                self._conns.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()
        for conn in self._conns:
            conn.close()

    def target(self) -> str:
        return f'[[target]]\nname = "{self.mode}"\naddress = "127.0.0.1:{self.port}"\n'


@pytest.fixture(scope="module")
def hang() -> Iterator[RawProcessor]:
    server = RawProcessor("hang")
    yield server
    server.close()


@pytest.fixture(scope="module")
def resetter() -> Iterator[RawProcessor]:
    server = RawProcessor("reset")
    yield server
    server.close()


@pytest.fixture(scope="module")
def stack(hang: RawProcessor, resetter: RawProcessor) -> Iterator[Stack]:
    s, tmp = make_stack()
    try:
        s.write_configs(extra_targets=hang.target() + resetter.target())
        s.start_processor()
        s.start_relay()
        s.start_gateway()
        s.start_connect()
        yield s
    finally:
        stop_quickly(s)
        tmp.cleanup()


@pytest.fixture(autouse=True)
def running(stack: Stack) -> Iterator[None]:
    """Each test starts with the tunnel up and the engineer's forward working, and ends with every
    process alive."""
    stack.wait_tunnel_up(deadline=RECOVERY_BOUND + 10)
    wait_until("the engineer's forward to work", lambda: page_works(stack.ports["forward"]))
    wait_streams(stack, IDLE, "before the test")
    yield
    assert_all_alive(stack)


def _stop_extra(s: Stack, name: str) -> None:
    """An extra engineer client is done: SIGKILL it (see ``stop_quickly``) and forget it."""
    s.procs.pop(name).stop(signal.SIGKILL)


def _connect(s: Stack, name: str, target: str, port_key: str) -> Proc:
    return s.start_connect(name, target=target, port_key=port_key)


# -- a slow engineer -------------------------------------------------------------------------------
# First in the module: fresh processes give the strictest memory baseline.


def test_slow_engineer_keeps_relay_and_gateway_memory_bounded(stack: Stack) -> None:
    s = stack
    rss = "process_resident_memory_bytes"
    base_gw, base_relay = gateway_metric(s, rss), relay_metric(s, rss)
    assert base_gw and base_relay
    from_target = 'gateway_stream_bytes_total{direction="from_target"}'
    base_from = gateway_metric(s, from_target) or 0.0
    size = 1024 * MiB
    rate = 10_000
    download = Download(s.ports["forward"], size, rate=rate, timeout=30, rcvbuf=64 * 1024).start()
    peak_gw = peak_relay = 0.0
    mid: tuple[float, int] | None = None
    started = time.monotonic()
    try:
        while time.monotonic() - started < 20:  # a measurement window, not a readiness wait
            assert not download.done, f"slow download ended: {download.outcome} {download.detail}"
            peak_gw = max(peak_gw, gateway_metric(s, rss) or 0.0)
            peak_relay = max(peak_relay, relay_metric(s, rss) or 0.0)
            if mid is None and time.monotonic() - started >= 10:
                mid = (gateway_metric(s, from_target) or 0.0, download.received)
            time.sleep(0.5)  # allowed: sampling period of the measurement window
        end_from = gateway_metric(s, from_target) or 0.0
        end_received = download.received
        [shown] = [c["bytes_from_target"] for c in s.status()["connections"]]
    finally:
        download.stop()
    download.join(10)
    assert download.outcome == "stopped", f"{download.outcome} {download.detail}"
    assert mid is not None
    held = end_from - base_from - end_received
    grew_late = (end_from - mid[0]) - (end_received - mid[1])
    print(
        f"slow engineer: read {end_received} B in 20 s; processor sent {end_from - base_from:.0f} B"
        f" ({held / MiB:.1f} MiB held in between, +{grew_late / MiB:.2f} MiB in the last 10 s);"
        f" RSS gateway +{(peak_gw - base_gw) / MiB:.1f} MiB,"
        f" relay +{(peak_relay - base_relay) / MiB:.1f} MiB; the status page showed"
        f" {shown} B delivered"
    )
    # The status page counts what reached the engineer's client, not what the processor poured
    # into the tunnel's windows: within the client's own socket buffers of what was read.
    assert end_received - MiB <= shown <= end_received + 4 * MiB, (shown, end_received, held)
    assert end_received <= rate * 21 and end_received >= rate * 10
    assert held < 64 * MiB, f"{held / MiB:.0f} MiB left the processor but not reached the engineer"
    assert grew_late < 2 * MiB, "the processor was not held back: bytes kept flowing in"
    assert peak_gw - base_gw < 64 * MiB, f"gateway RSS grew {(peak_gw - base_gw) / MiB:.0f} MiB"
    assert peak_relay - base_relay < 64 * MiB, (
        f"relay RSS grew {(peak_relay - base_relay) / MiB:.0f} MiB"
    )
    wait_streams(s, IDLE, "the slow engineer left")


# -- relay and gateway killed mid-transfer ---------------------------------------------------------


def test_relay_killed_mid_transfer_fails_it_cleanly_and_the_tunnel_returns(stack: Stack) -> None:
    s = stack
    before = connects(s)
    size = 64 * MiB
    download = Download(s.ports["forward"], size, hold_at=4 * MiB, timeout=20).start()
    try:
        download.wait_received(4 * MiB)
        s.procs["relay"].kill()
    finally:
        download.release()
    download.join(30)
    download.assert_failed_cleanly()
    wait_until("the gateway to notice", lambda: s.tunnel_state() != "up", deadline=10)
    wait_until(
        "the gateway to let go of the processor",
        lambda: gateway_metric(s, "gateway_streams_active") == 0.0,
        deadline=10,
    )
    s.start_relay()
    restarted = time.monotonic()
    s.wait_tunnel_up(deadline=RECOVERY_BOUND + 5)
    took = time.monotonic() - restarted
    assert took <= RECOVERY_BOUND, (
        f"tunnel back {took:.1f}s after the relay (bound {RECOVERY_BOUND:g}s)"
    )
    assert connects(s) > before
    wait_until("a new engineer connection to work", lambda: page_works(s.ports["forward"]))
    assert download_and_verify(s.ports["forward"], size) == size
    print(
        f"relay kill: download {download.outcome} after {download.received} B; back in {took:.1f}s"
    )


def test_gateway_killed_mid_transfer_fails_it_cleanly_and_a_restart_serves(stack: Stack) -> None:
    s = stack
    size = 64 * MiB
    download = Download(s.ports["forward"], size, hold_at=4 * MiB, timeout=20).start()
    try:
        download.wait_received(4 * MiB)
        s.procs["gateway"].kill()
    finally:
        download.release()
    download.join(30)
    download.assert_failed_cleanly()
    wait_until(
        "the relay to drop the dead gateway and its streams",
        lambda: (
            relay_metric(s, "relay_gateways_connected") == 0.0
            and relay_metric(s, "relay_streams_active") == 0.0
        ),
        deadline=10,
    )
    restarted = time.monotonic()
    s.start_gateway()
    took = time.monotonic() - restarted
    assert took <= RECOVERY_BOUND, f"tunnel up {took:.1f}s after the gateway started"
    wait_until("a new engineer connection to work", lambda: page_works(s.ports["forward"]))
    assert download_and_verify(s.ports["forward"], size) == size
    print(
        f"gateway kill: download {download.outcome} after {download.received} B; up in {took:.1f}s"
    )


# -- processors that misbehave ---------------------------------------------------------------------


def test_processor_that_never_answers_holds_only_its_own_stream(
    stack: Stack, hang: RawProcessor
) -> None:
    s = stack
    proc = _connect(s, "connect-hang", "hang", "forward2")
    try:
        accepted = hang.accepted
        with socket.create_connection(("127.0.0.1", s.ports["forward2"]), timeout=5) as sock:
            sock.sendall(GET)
            wait_until("the hanging processor to be reached", lambda: hang.accepted > accepted)
            wait_until(
                "the hanging stream to be counted",
                lambda: all((n or 0.0) >= 1.0 for n in streams(s)),
            )
            # Meanwhile, the same tunnel carries everything else.
            assert download_and_verify(s.ports["forward"], 16 * MiB) == 16 * MiB
            messages: list[str | bytes] = ["still here", b"\x00" * 5000]
            assert websocket_echo(s.ports["forward"], messages) == messages
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(100)  # and the hanging one has had no answer all along
        # The engineer closed its connection (a FIN, as a browser closing a tab does): relay and
        # gateway forget the stream (and the probe connection ``start_connect`` made).
        wait_streams(s, IDLE, "the engineer closed its connection to the hanging processor")
    finally:
        _stop_extra(s, proc.name)


def test_processor_that_resets_ends_the_engineer_connection_with_an_error(
    stack: Stack, resetter: RawProcessor
) -> None:
    s = stack
    proc = _connect(s, "connect-reset", "reset", "forward3")
    try:
        for _ in range(3):
            accepted = resetter.accepted
            with socket.create_connection(("127.0.0.1", s.ports["forward3"]), timeout=10) as sock:
                sock.sendall(GET)
                received, ended = b"", "clean"
                try:
                    while chunk := sock.recv(65536):
                        received += chunk
                except ConnectionError:
                    ended = "reset"
            # Either the reset travels as one, or (the stream refused before it opened) the
            # browser is told in a 502 page: never a clean end that looks like an answer.
            assert ended == "reset" or received.startswith(b"HTTP/1.1 502 "), (ended, received)
            assert resetter.accepted > accepted
        assert download_and_verify(s.ports["forward"], 4 * MiB) == 4 * MiB
        wait_streams(s, IDLE, "the reset connections ended")
    finally:
        _stop_extra(s, proc.name)


# -- stopping --------------------------------------------------------------------------------------


@pytest.fixture
def own_stack() -> Iterator[Stack]:
    s, tmp = make_stack()
    try:
        yield s
    finally:
        stop_quickly(s)
        tmp.cleanup()


def test_sigterm_stops_the_engineer_client_and_the_idle_gateway_promptly(own_stack: Stack) -> None:
    """A graceful stop with nothing open is quick: the engineer client at once, the gateway well
    within its drain timeout (2 s here), each with exit code 0."""
    s = own_stack
    s.start_relay()
    s.start_gateway()
    connect = s.start_connect()
    wait_until("the engineer client to check the gateway", lambda: "is online" in connect.text())
    timings: dict[str, float] = {}
    for name in ("connect", "gateway"):
        started = time.monotonic()
        with contextlib.suppress(Exception):
            s.procs[name].popen.send_signal(signal.SIGTERM)
            s.procs[name].popen.wait(10)
        timings[name] = time.monotonic() - started
    print(f"SIGTERM: {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}")
    codes = {name: s.procs[name].popen.poll() for name in ("connect", "gateway")}
    assert codes == {"connect": 0, "gateway": 0}, f"exit codes {codes} after {timings}"
    assert timings["connect"] < 3.0, f"engineer client took {timings['connect']:.1f}s to stop"
    assert timings["gateway"] < 3.0, f"idle gateway took {timings['gateway']:.1f}s to stop"
