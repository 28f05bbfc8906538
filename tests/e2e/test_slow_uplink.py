"""Over a slow, bufferbloated uplink (10 Mbit/s, a 400 ms modem queue, cubic; three network
namespaces, see tests/helpers/netns.py) a download from the processor arrives whole and its end
arrives, while a second connection's small round trips all come back.

Speed is the WAN benchmark's business (bench/wan.py); this test asserts completeness only, and
every wait in it is bounded.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    RejectConnection,
    Request,
    TextMessage,
)

from bench.netns import LINKS, in_netns
from tests.helpers.clients import expected
from tests.helpers.netns import UplinkStack, uplink_stack

pytestmark = pytest.mark.e2e

SIZE = 4 << 20
"""About 3.5 s at 10 Mbit/s: long enough to fill the modem's queue, short for a test."""
ROUND_TRIPS = 5
IO_TIMEOUT = 20.0
"""Per socket operation; the current tunnel needs up to ~3 s per round trip during a bulk."""
RESULT_TIMEOUT = 45.0


@pytest.fixture
def uplink() -> Iterator[UplinkStack]:
    with uplink_stack(LINKS["10mbit"]) as s:
        yield s


def download_to_eof(port: int, size: int, flowing: threading.Event) -> tuple[int, bytes, int]:
    """GET /download with `Connection: close`, read until the connection ends; returns the
    status, the headers and the body's length, having checked every byte of it."""
    deadline = time.monotonic() + RESULT_TIMEOUT
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.settimeout(IO_TIMEOUT)
        request = f"GET /download?size={size} HTTP/1.1\r\nHost: processor\r\nConnection: close\r\n"
        sock.sendall(request.encode() + b"\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed inside the headers: {head[:200]!r}")
            head += chunk
        head, body_start = head.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        got, offset = body_start, 0
        while True:
            if got:
                if got != expected(offset, len(got)):
                    raise AssertionError(f"wrong bytes in [{offset}, {offset + len(got)})")
                offset += len(got)
                if offset >= 1 << 20:
                    flowing.set()
            if time.monotonic() > deadline:
                raise AssertionError(f"no end of the download within {RESULT_TIMEOUT:g} s")
            got = sock.recv(1 << 20)  # b"" is the end: the tunnel passed the processor's close on
            if not got:
                return status, head, offset


def websocket_round_trips(port: int, count: int, flowing: threading.Event) -> list[str]:
    """Once the download flows: `count` small WebSocket messages on a connection of their own,
    each sent after the previous echo came back (a user's clicks)."""
    if not flowing.wait(RESULT_TIMEOUT):
        raise AssertionError("the download never got going")
    echoes: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.settimeout(IO_TIMEOUT)
        ws = WSConnection(ConnectionType.CLIENT)

        def events() -> list[Event]:
            data = sock.recv(65536)
            if not data:
                raise AssertionError(f"WebSocket closed after {len(echoes)} echoes")
            ws.receive_data(data)
            found = list(ws.events())
            for event in found:
                if isinstance(event, CloseConnection | RejectConnection):
                    raise AssertionError(f"WebSocket refused or closed by the server: {event}")
            return found

        sock.sendall(ws.send(Request(host="processor", target="/ws")))
        while not any(isinstance(e, AcceptConnection) for e in events()):
            pass
        for i in range(count):
            sock.sendall(ws.send(TextMessage(data=f"click {i}")))
            parts: list[str] = []
            while len(echoes) <= i:
                for event in events():
                    if isinstance(event, TextMessage):
                        parts.append(event.data)
                        if event.message_finished:
                            echoes.append("".join(parts))
                            parts = []
        sock.sendall(ws.send(CloseConnection(code=1000)))
    return echoes


def fetch(port: int, flowing: threading.Event) -> tuple[int, bytes, int]:
    try:
        return download_to_eof(port, SIZE, flowing)
    finally:
        flowing.set()  # a failed download must not leave the clicks waiting


def test_download_over_a_slow_uplink_ends_whole_while_clicks_get_through(
    uplink: UplinkStack,
) -> None:
    port, vendor = uplink.ports.forward, uplink.topo.vendor
    flowing = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        download = pool.submit(in_netns, vendor, lambda: fetch(port, flowing), RESULT_TIMEOUT)
        clicks = pool.submit(
            in_netns,
            vendor,
            lambda: websocket_round_trips(port, ROUND_TRIPS, flowing),
            RESULT_TIMEOUT,
        )
        echoes = clicks.result(timeout=RESULT_TIMEOUT + 5)
        status, head, length = download.result(timeout=RESULT_TIMEOUT + 5)
    assert status == 200, head
    assert f"content-length: {SIZE}".encode() in head.lower(), head
    assert length == SIZE
    assert echoes == [f"click {i}" for i in range(ROUND_TRIPS)]
    for name, proc in uplink.procs.items():
        assert proc.popen.poll() is None, f"{name} exited:\n{proc.tail()}"
