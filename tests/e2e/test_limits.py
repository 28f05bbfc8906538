"""Stream limits on the gateway with real processes: 40 connections at once through
``gateway connect`` to a target limited to 10 get exactly 10 through; the rest are refused with
the reason naming the limit, counted, and the 10 carry on; a slot comes back once its
connection closes."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from gateway.promtext import metric_value
from tests.helpers.processes import Stack, fresh_stack, http_get, wait_until

pytestmark = pytest.mark.e2e

LIMIT = 10


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with fresh_stack() as s:
        s.write_configs(limits={"streams_per_target": LIMIT})
        s.start_processor()
        s.start_relay()
        s.start_gateway()
        s.start_connect()
        # The readiness probe's own stream holds a slot until its processor connection is gone
        # (a stream leaves the status a moment before that).
        wait_until("the gateway to see the probe's stream", lambda: streams_decided(s) >= 1)
        wait_until("the probe's stream to end", lambda: not s.status()["connections"])
        wait_until("the probe's slot to come back", lambda: processor_connections(s) == 0)
        yield s


def streams_decided(stack: Stack) -> float:
    """Streams the gateway has decided on, whatever the result (gateway_streams_total)."""
    text = http_get(stack.url("gw_metrics", "/metrics")).decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_streams_total{")
    )


def processor_connections(stack: Stack) -> int:
    """TCP connections open to the demo processor (the gateway's side of each stream)."""
    port = stack.ports["processor"]
    listing = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( dport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(listing.splitlines())


ANSWERS: dict[socket.socket, bytes] = {}
"""What each local connection was told before it was closed (a refusal's page)."""


def closed_by_peer(sock: socket.socket) -> bool:
    """Closed by ``gateway connect``, after whatever page it was given (kept in ANSWERS)."""
    sock.setblocking(False)
    try:
        while chunk := sock.recv(65536):
            ANSWERS[sock] = ANSWERS.get(sock, b"") + chunk
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def ask(sock: socket.socket) -> bytes:
    sock.setblocking(True)
    sock.settimeout(10)
    sock.sendall(b"GET /headers HTTP/1.1\r\nHost: processor\r\n\r\n")
    return sock.recv(65536)


def limit_refusals(stack: Stack) -> float:
    text = http_get(stack.url("gw_metrics", "/metrics")).decode()
    return metric_value(text, "gateway_streams_total", {"result": "limit-reached"}) or 0.0


def connections(stack: Stack, count: int) -> list[socket.socket]:
    return [
        socket.create_connection(("127.0.0.1", stack.ports["forward"]), timeout=10)
        for _ in range(count)
    ]


def test_40_connections_to_a_target_limited_to_10(stack: Stack) -> None:
    socks = connections(stack, 40)
    try:
        # The gateway decides as each stream arrives: 30 are refused and their local
        # connections closed, 10 stay open and reach the processor.
        wait_until("30 refusals", lambda: limit_refusals(stack) >= 30, proc=stack.procs["gateway"])
        wait_until(
            "the refused connections closed",
            lambda: sum(map(closed_by_peer, socks)) == 30,
            deadline=10,
        )
        admitted = [s for s in socks if not closed_by_peer(s)]
        assert len(admitted) == LIMIT
        # web is an http target: the refused ones were told why in a page, not just cut.
        told = [ANSWERS.get(s, b"") for s in socks if s not in admitted]
        assert all(t.startswith(b"HTTP/1.1 429 Too Many Requests") for t in told), told[:2]
        for sock in admitted:
            answer = ask(sock)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
        assert limit_refusals(stack) == 30  # all 40 decided by now: exactly 30 refused
        log = stack.procs["connect"].text()
        assert "limits.streams_per_target" in log
        assert f"target 'web' already has {LIMIT} streams open" in log
    finally:
        for sock in socks:
            sock.close()
    # Slots come back with their connections: a new round gets its 10 again.
    wait_until("the streams to end", lambda: not stack.status()["connections"], deadline=15)
    wait_until("their slots to come back", lambda: processor_connections(stack) == 0, deadline=15)
    again = connections(stack, LIMIT)
    try:
        for sock in again:
            assert ask(sock).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in again:
            sock.close()
    assert limit_refusals(stack) == 30
