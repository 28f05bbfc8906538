"""Network faults between gateway and relay, through a userspace fault proxy.

The gateway dials the proxy, the proxy forwards to the relay (the relay's certificate names
127.0.0.1, so TLS checks are unchanged).  Each test breaks the link in one way, then checks what
plant networks need from the tunnel: the fault is noticed by the heartbeat within
``heartbeat_interval + heartbeat_timeout``, the tunnel comes back by itself within the reconnect
bounds once the link passes traffic again, no transfer ever completes with a wrong byte, and no
process dies.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from attrs import define

from tests.fault import (
    DETECT_BOUND,
    HEARTBEAT_TIMEOUT,
    IDLE,
    RECONNECT_CAP,
    RECOVERY_BOUND,
    Download,
    MiB,
    assert_all_alive,
    connects,
    gateway_metric,
    page_works,
    relay_metric,
    stop_quickly,
    wait_streams,
)
from tests.helpers.clients import download_and_verify, sha256, upload, websocket_echo
from tests.helpers.faultproxy import DOWN, UP, FaultProxy
from tests.helpers.processes import Stack, make_stack, wait_until

pytestmark = pytest.mark.e2e

CONNECT_TIMEOUT = 3.0
"""The gateway's ``[relay] connect_timeout`` here.  A dial that lands in a blackhole waits for
``connect_timeout + heartbeat_timeout`` before it is abandoned (the handshake timeout), so the
recovery bound below depends on it; the default of 10 s would allow 13 s for that alone."""


@define
class Net:
    stack: Stack
    proxy: FaultProxy


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    stack, tmp = make_stack()
    proxy = FaultProxy(("127.0.0.1", stack.ports["relay_gw"]))
    try:
        config = stack.workdir / "gateway.toml"
        relay_line = f'address = "127.0.0.1:{stack.ports["relay_gw"]}"'
        text = config.read_text()
        assert text.count(relay_line) == 1
        config.write_text(
            text.replace(
                relay_line,
                f'address = "127.0.0.1:{proxy.port}"\nconnect_timeout = {CONNECT_TIMEOUT:g}',
            )
        )
        stack.start_processor()
        stack.start_relay()
        stack.start_gateway()
        stack.start_connect()
        assert proxy.accepted >= 1, "the gateway must dial the relay through the proxy"
        yield Net(stack, proxy)
    finally:
        stop_quickly(stack)
        proxy.close()
        tmp.cleanup()


@pytest.fixture(autouse=True)
def healthy_link(net: Net) -> Iterator[None]:
    """Each test starts on a clean link with the tunnel up, and leaves every process alive."""
    net.proxy.pass_through()
    net.stack.wait_tunnel_up(deadline=RECOVERY_BOUND + 10)
    wait_streams(net.stack, IDLE, "before the test")
    yield
    net.proxy.pass_through()
    assert_all_alive(net.stack)


def _wait_down(net: Net, started: float, fault: str) -> float:
    """Wait for the gateway to leave "up"; returns how long that took after ``started``."""
    wait_until(
        f"the gateway to notice the {fault}",
        lambda: net.stack.tunnel_state() != "up",
        deadline=DETECT_BOUND + 2,
        proc=net.stack.procs["gateway"],
    )
    took = time.monotonic() - started
    assert took <= DETECT_BOUND, f"{fault} noticed after {took:.1f}s (bound {DETECT_BOUND:g}s)"
    return took


def _wait_recovered(net: Net, before: int, healed: float) -> float:
    """Wait for a new tunnel (connects above ``before``) that the relay also counts."""
    s = net.stack
    wait_until(
        "the tunnel to come back by itself",
        lambda: (
            s.tunnel_state() == "up"
            and connects(s) > before
            and relay_metric(s, "relay_gateways_connected") == 1.0
        ),
        deadline=RECOVERY_BOUND + 5,
        proc=s.procs["gateway"],
    )
    took = time.monotonic() - healed
    assert took <= RECOVERY_BOUND, f"recovered after {took:.1f}s (bound {RECOVERY_BOUND:g}s)"
    counter = gateway_metric(s, "gateway_tunnel_connects_total")
    assert counter is not None and counter > before
    return took


def _heartbeat_drops(net: Net) -> int:
    """Tunnels the gateway dropped for a missing PING ack."""
    return net.stack.procs["gateway"].text().count("no heartbeat answer from relay")


def _any_heartbeat_drops(net: Net) -> int:
    """Tunnels either end dropped for a missing PING ack."""
    relay = net.stack.procs["relay"].text().count("no heartbeat answer from gateway")
    return _heartbeat_drops(net) + relay


# -- the proxy itself (no processes): what the faults below rely on --------------------------------


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()
    finally:
        stop.set()
        thread.join(5)
        server.close()


def _echo(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        got = bytearray()
        while data := sock.recv(1 << 20):
            got += data
        sender.join(timeout)
        return bytes(got)


def test_fault_proxy_delays_throttles_cuts_and_resets(echo_server: tuple[str, int]) -> None:
    payload = bytes(i % 251 for i in range(1_000_000))
    with FaultProxy(echo_server) as proxy:
        assert _echo(proxy.port, payload) == payload

        proxy.delay(0.05)
        started = time.monotonic()
        assert _echo(proxy.port, b"ping") == b"ping"
        assert time.monotonic() - started >= 0.1  # 50 ms each way

        proxy.pass_through()
        proxy.throttle(2_000_000)
        started = time.monotonic()
        assert _echo(proxy.port, payload) == payload
        assert time.monotonic() - started >= 0.4  # 1 MB each way at 2 MB/s, pipelined

        proxy.pass_through()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5) as sock:
            sock.sendall(b"a")
            assert sock.recv(10) == b"a"
            proxy.cut(UP)
            sock.sendall(b"lost")
            with pytest.raises(TimeoutError):
                sock.recv(10)
            proxy.pass_through()
            assert _echo(proxy.port, b"new connections pass again") == b"new connections pass again"
            assert proxy.reset_all() == 1
            with pytest.raises(ConnectionResetError):
                sock.recv(10)

        proxy.refuse()
        with (
            pytest.raises(ConnectionResetError),  # at connect or at the first read
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock,
        ):
            sock.recv(10)
        assert proxy.refused == 1
        proxy.pass_through()
        proxy.blackhole()
        with pytest.raises(TimeoutError):
            _echo(proxy.port, b"into the void", timeout=0.5)
        assert proxy.dropped[UP] > 0


# -- faults on the tunnel --------------------------------------------------------------------------


def test_blackholed_tunnel_is_noticed_by_heartbeat_and_recovers(net: Net) -> None:
    s = net.stack
    before, drops = connects(s), _heartbeat_drops(net)
    started = time.monotonic()
    net.proxy.blackhole()
    detected = _wait_down(net, started, "blackhole")
    wait_until("the heartbeat to be named", lambda: _heartbeat_drops(net) > drops)
    assert connects(s) == before, "nothing gets through a blackhole"
    healed = time.monotonic()
    net.proxy.pass_through()
    recovered = _wait_recovered(net, before, healed)
    # The engineer's client resumes its session over the new tunnel within moments.
    wait_until(
        "a new engineer connection to work", lambda: page_works(s.ports["forward"]), deadline=10
    )
    assert download_and_verify(s.ports["forward"], 4 * MiB) == 4 * MiB
    print(f"blackhole: detected in {detected:.1f}s, recovered in {recovered:.1f}s")


def test_50ms_of_latency_keeps_every_transfer_byte_exact(net: Net) -> None:
    s = net.stack
    before = connects(s)
    net.proxy.delay(0.05)
    wait_until(
        "the heartbeat to measure the added latency",
        lambda: (gateway_metric(s, "gateway_tunnel_rtt_seconds") or 0.0) >= 0.09,
        deadline=10,
    )
    assert download_and_verify(s.ports["forward"], 16 * MiB) == 16 * MiB
    body = bytes(range(256)) * 8192
    status, answer = upload(s.ports["forward"], body)
    assert status == 200
    assert json.loads(answer) == {"bytes": len(body), "sha256": sha256(body)}
    messages: list[str | bytes] = ["hello", b"\x00\xff" * 1000]
    assert websocket_echo(s.ports["forward"], messages) == messages
    assert connects(s) == before, "latency alone must not drop the tunnel"


@pytest.mark.parametrize(
    ("rate", "size"), [(2_000_000, 8 * MiB), (750_000, 4 * MiB)], ids=["2MBps", "750kBps"]
)
def test_throttled_link_carries_a_download_without_a_false_heartbeat_timeout(
    net: Net, rate: int, size: int
) -> None:
    """A slow uplink is not a dead one: the heartbeat must not drop a tunnel that is busy."""
    s = net.stack
    before, drops = connects(s), _any_heartbeat_drops(net)
    net.proxy.throttle(rate)
    started = time.monotonic()
    rtt_metric = "gateway_tunnel_rtt_seconds"
    stale_rtt = gateway_metric(s, rtt_metric)  # the gauge keeps its value until the next ack
    download = Download(s.ports["forward"], size, timeout=30).start()
    worst_rtt = 0.0
    while not download.done and time.monotonic() - started < 3 * size / rate:
        rtt = gateway_metric(s, rtt_metric)
        if rtt is not None and rtt != stale_rtt:
            worst_rtt = max(worst_rtt, rtt)
        time.sleep(0.25)  # allowed: a sampling period, not a readiness wait
    download.join(5)
    took = time.monotonic() - started
    net.proxy.pass_through()
    s.wait_tunnel_up(deadline=RECOVERY_BOUND)  # so that a drop shows in the counts below
    redials, dropped = connects(s) - before, _any_heartbeat_drops(net) - drops
    summary = (
        f"{size / MiB:g} MiB at {rate / 1e6:g} MB/s: {download.outcome} {download.detail} after"
        f" {took:.1f}s, worst heartbeat rtt {worst_rtt:.1f}s (timeout {HEARTBEAT_TIMEOUT:g}s),"
        f" {dropped} heartbeat drops, {redials} redials"
    )
    if dropped:
        logs = s.procs["gateway"].text() + s.procs["relay"].text()
        summary += "; " + [line for line in logs.splitlines() if "no heartbeat" in line][-1]
    print(f"throttle: {summary}")
    assert (download.outcome, dropped, redials) == ("complete", 0, 0), summary
    assert took >= 0.8 * size / rate, f"the throttle was not in effect: {summary}"


@pytest.mark.parametrize("direction", [UP, DOWN])
def test_one_way_cut_is_noticed_by_heartbeat_and_recovers(net: Net, direction: str) -> None:
    s = net.stack
    before = connects(s)
    started = time.monotonic()
    net.proxy.cut(direction)
    detected = _wait_down(net, started, f"{direction} cut")
    healed = time.monotonic()
    net.proxy.pass_through()
    recovered = _wait_recovered(net, before, healed)
    assert download_and_verify(s.ports["forward"], 4 * MiB) == 4 * MiB
    print(f"cut {direction}: detected in {detected:.1f}s, recovered in {recovered:.1f}s")


def test_reset_mid_download_fails_that_download_and_the_tunnel_recovers(net: Net) -> None:
    s = net.stack
    before = connects(s)
    size = 64 * MiB
    download = Download(s.ports["forward"], size, hold_at=4 * MiB, timeout=20).start()
    try:
        download.wait_received(4 * MiB)
        # The engineer stopped reading: the rest is in flight or held back, not delivered yet.
        assert net.proxy.reset_all() >= 1
        healed = time.monotonic()
    finally:
        download.release()
    download.join(30)
    download.assert_failed_cleanly()
    recovered = _wait_recovered(net, before, healed)
    wait_streams(s, IDLE, "the cut download is forgotten")
    assert download_and_verify(s.ports["forward"], size) == size
    print(
        f"reset: download ended {download.outcome} after {download.received} bytes,"
        f" recovered in {recovered:.1f}s"
    )


def test_refused_redials_back_off_and_recover(net: Net) -> None:
    s = net.stack
    before = connects(s)
    net.proxy.refuse()
    accepted = net.proxy.accepted
    net.proxy.reset_all()
    wait_until("the gateway to notice the reset", lambda: s.tunnel_state() != "up", deadline=5)
    wait_until(
        "two refused redials", lambda: net.proxy.refused >= 2, deadline=3 * RECONNECT_CAP + 5
    )
    healed = time.monotonic()
    net.proxy.pass_through()
    _wait_recovered(net, before, healed)
    redials = net.proxy.accepted - accepted
    assert redials < 30, f"{redials} redials in a few seconds: the backoff is not backing off"
