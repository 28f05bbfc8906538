"""A flood of idle connections from one address must not take the relay down (issue 14, item 1).

Without a token anyone can open TLS+HTTP/2 connections to the engineer port and keep them alive
by answering PINGs.  About 500 of them used to hold every descriptor of a relay started with a
service manager's limit, so that no gateway could connect.  Here the relay runs with 256
descriptors; a few hundred idle peers from 127.0.0.2 keep reconnecting for longer than the token
deadline, and meanwhile the gateway connects and an engineer (from 127.0.0.1) forwards a download.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
from attrs import define, field
from h2.config import H2Configuration
from h2.connection import H2Connection

from tests.helpers.clients import download_and_verify
from tests.helpers.processes import Stack, fresh_stack, wait_until
from tests.helpers.rogue import metrics, tls_context

pytestmark = pytest.mark.e2e

NOFILE = 256
PEERS = 300
"""Idle peers at once: more than the relay has descriptors."""
FLOOD_SECONDS = 25.0
"""Longer than two token deadlines (10 s): held connections must be dropped and retried."""
FLOODER = "127.0.0.2"


@define
class FloodStats:
    attempts: int = 0
    held: int = 0
    """Connections that got through TLS and HTTP/2 settings."""
    refused: int = 0
    closed_by_relay: int = 0
    lock: threading.Lock = field(factory=threading.Lock)

    def add(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)


def idle_peer(port: int, ctx: ssl.SSLContext, stop: threading.Event, stats: FloodStats) -> None:
    """Connect, speak HTTP/2, answer PINGs and nothing else; reconnect when dropped."""
    while not stop.is_set():
        stats.add("attempts")
        sock: socket.socket | None = None
        try:
            raw = socket.create_connection(
                ("127.0.0.1", port), timeout=5, source_address=(FLOODER, 0)
            )
            sock = ctx.wrap_socket(raw, server_hostname="localhost")
            h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
            h2.initiate_connection()
            sock.sendall(h2.data_to_send())
            sock.settimeout(0.5)
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("closed before its settings")
            h2.receive_data(data)
            sock.sendall(h2.data_to_send())
            stats.add("held")
            while not stop.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    stats.add("closed_by_relay")
                    break
                h2.receive_data(data)  # acks PINGs and SETTINGS by itself
                out = h2.data_to_send()
                if out:
                    sock.sendall(out)
        except (OSError, ssl.SSLError):
            stats.add("refused")
            stop.wait(0.05)  # a flood, not a busy loop on the test's own cores
        except Exception:  # h2 refusing what a closing relay sent
            stats.add("closed_by_relay")
        finally:
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass


@pytest.fixture
def stack() -> Iterator[Stack]:
    with fresh_stack() as s:
        s.start_processor()
        s.start_relay(nofile=NOFILE)
        yield s


def relay_sample(stack: Stack) -> dict[str, float]:
    try:
        return metrics(stack.url("relay_metrics", "/metrics"), timeout=10)
    except OSError:
        return {}


def test_idle_connections_from_one_address_cannot_lock_out_gateways_or_engineers(
    stack: Stack,
) -> None:
    ctx = tls_context(stack.pki.ca_cert)
    stop, stats = threading.Event(), FloodStats()
    peers = [
        threading.Thread(
            target=idle_peer, args=(stack.ports["relay_eng"], ctx, stop, stats), daemon=True
        )
        for _ in range(PEERS)
    ]
    for peer in peers:
        peer.start()
    started = time.monotonic()
    worst_fds = worst_unauthenticated = 0.0
    try:
        # The flood is on before the gateway and the engineer arrive.
        wait_until("the flood to reach the relay", lambda: stats.held >= 10, deadline=30)
        stack.start_gateway()
        stack.start_connect()
        assert download_and_verify(stack.ports["forward"], 8 << 20, timeout=60) == 8 << 20
        while time.monotonic() - started < FLOOD_SECONDS:
            sample = relay_sample(stack)
            worst_fds = max(worst_fds, sample.get("process_open_fds", 0))
            worst_unauthenticated = max(
                worst_unauthenticated,
                sample.get(
                    'relay_connections_open{listener="engineer",state="unauthenticated"}', 0
                ),
            )
            time.sleep(0.5)  # sampling interval of the flood's duration, not a synchronisation
        # Still forwarding, under the flood.
        assert download_and_verify(stack.ports["forward"], 8 << 20, timeout=60) == 8 << 20
        assert stack.relay_metric("relay_gateways_connected") == 1.0
    finally:
        stop.set()
        for peer in peers:
            peer.join(10)
    relay = stack.procs["relay"]
    assert relay.popen.poll() is None, relay.tail()
    after = relay_sample(stack)
    print(
        f"\nflood: {stats.attempts} attempts, {stats.held} held, {stats.refused} refused, "
        f"{stats.closed_by_relay} closed by the relay; relay at most {worst_fds:g} fds, "
        f"{worst_unauthenticated:g} unauthenticated engineer connections"
    )
    refused = after.get(
        'relay_connections_refused_total{listener="engineer",reason="unauthenticated-per-source"}',
        0,
    )
    assert refused > 0, "no connection was refused at accept time"
    assert stats.attempts > PEERS
    # Each address holds at most 16 unauthenticated connections, each for at most 10 s.
    assert worst_unauthenticated <= 16
    assert worst_fds < NOFILE - 64, f"the relay held {worst_fds:g} of its {NOFILE} descriptors"
    assert (
        after.get('relay_connections_closed_total{listener="engineer",reason="auth-timeout"}', 0)
        > 0
    ), "no idle connection was closed for want of a token"
    text = relay.text()
    assert "Traceback" not in text
    assert "Could not accept new connection" not in text  # EMFILE never reached
    # The refusals are logged, but rate-limited: a burst, then a count of the rest, written at
    # the end of the minute or, as here, when the relay stops.
    refusal_lines = [line for line in text.splitlines() if "refused at once" in line]
    assert 0 < len(refusal_lines) <= 3 * 20, len(refusal_lines)
    assert relay.stop() == 0, relay.tail()
    assert "similar lines suppressed" in relay.text(), relay.tail()
