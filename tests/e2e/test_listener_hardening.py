"""The gateway's status and metrics listeners under abuse, with the real gateway process.

The gateway runs with 512 descriptors (what an attacker on the plant network would try to use
up): 500 slow-header connections stay bounded in number and time while the tunnel still forwards
and the status page still answers; a 300 MB POST is refused at once with nothing written to disk;
a foreign ``Host`` is refused on both listeners.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.clients import get
from tests.helpers.processes import Stack, fresh_stack, wait_until

pytestmark = pytest.mark.e2e

NOFILE = 512


@pytest.fixture(scope="module")
def tmpdir_of_gateway() -> Iterator[Path]:
    tmp = tempfile.mkdtemp(prefix="gw-e2e-tmpdir-")
    yield Path(tmp)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(tmpdir_of_gateway: Path) -> Iterator[Stack]:
    with fresh_stack() as s:
        s.start_processor()
        s.start_relay()
        s.start_gateway(nofile=NOFILE, env={"TMPDIR": str(tmpdir_of_gateway)})
        s.start_connect()
        yield s


def gateway_descriptors(stack: Stack) -> int:
    return len(os.listdir(f"/proc/{stack.procs['gateway'].pid}/fd"))


def still_open(sock: socket.socket) -> bool:
    """Whether the gateway has not closed ``sock`` (an answer followed by EOF, or a reset)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_500_slow_header_connections_are_bounded_and_the_gateway_keeps_working(
    stack: Stack,
) -> None:
    port = stack.ports["status"]
    before = gateway_descriptors(stack)
    started = time.monotonic()
    slow: list[socket.socket] = []
    try:
        for _ in range(500):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            slow.append(sock)
        # While they hang on: the gateway holds at most its 64, a forward works, the page answers.
        wait_until(
            "the gateway to shed the extra connections",
            lambda: gateway_descriptors(stack) <= before + 64 + 8,
            deadline=10,
        )
        status, body = get(stack.ports["forward"], "/headers")
        assert status == 200, body
        assert stack.status()["tunnel"]["state"] == "up"
        held = sum(still_open(s) for s in slow)
        assert held <= 64, held
        # And none outlives the request deadline (10 s from its first byte).
        wait_until(
            "every slow connection closed", lambda: not any(map(still_open, slow)), deadline=20
        )
        assert time.monotonic() - started < 25
    finally:
        for sock in slow:
            sock.close()
    assert stack.status()["tunnel"]["state"] == "up"
    log = stack.procs["gateway"].text()
    assert "unreachable: 24" not in log  # "too many open files" never reached a forward
    refusals = [line for line in log.splitlines() if "status listener:" in line]
    assert len(refusals) <= 10, refusals  # once a minute per kind, not one per connection


def test_a_300_mb_post_is_refused_at_once_and_nothing_reaches_the_disk(
    stack: Stack, tmpdir_of_gateway: Path
) -> None:
    free_before = shutil.disk_usage(tmpdir_of_gateway).free
    sock = socket.create_connection(("127.0.0.1", stack.ports["status"]), timeout=5)
    try:
        started = time.monotonic()
        sock.sendall(
            b"POST /api/status HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (300 * 1024 * 1024)
        )
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413 "), answer
        assert time.monotonic() - started < 2
        # A client that sends its body anyway: the gateway reads no more of it.
        sock.settimeout(2)
        sent, chunk = 0, b"x" * (1 << 20)
        try:
            while sent < 300 * (1 << 20):
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        assert sent < 64 * (1 << 20), sent
    finally:
        sock.close()
    assert list(tmpdir_of_gateway.iterdir()) == []
    assert free_before - shutil.disk_usage(tmpdir_of_gateway).free < 64 * (1 << 20)
    chunked = exchange(
        stack.ports["status"],
        b"POST /api/status HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"10000\r\n" + b"y" * 0x10000 + b"\r\n") * 4,
    )
    assert chunked.startswith(b"HTTP/1.1 413 "), chunked[:200]
    assert list(tmpdir_of_gateway.iterdir()) == []
    assert stack.status()["tunnel"]["state"] == "up"


@pytest.mark.parametrize(
    ("listener", "path"), [("status", "/api/status"), ("gw_metrics", "/metrics")]
)
def test_a_foreign_host_is_refused_and_the_own_names_answered(
    stack: Stack, listener: str, path: str
) -> None:
    port = stack.ports[listener]
    for host, expected in [
        (f"rebind.attacker.example:{port}", b"421"),
        (f"localhost:{port}", b"200"),
        (f"127.0.0.1:{port}", b"200"),
    ]:
        answer = exchange(
            port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        head = answer.partition(b"\r\n\r\n")[0].lower()
        assert head.split(b" ")[1] == expected, (host, head)
        for header in (b"x-content-type-options: nosniff", b"x-frame-options: deny"):
            assert header in head, (host, head)
