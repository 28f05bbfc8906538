"""Blocking clients for end-to-end tests: HTTP download with pattern check, WebSocket echo."""

from __future__ import annotations

import hashlib
import http.client
import socket

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Request,
    TextMessage,
)

PERIOD = 251
_BLOCK = bytes(i % PERIOD for i in range(PERIOD * 4096 + (1 << 20)))


def expected(offset: int, length: int) -> bytes:
    """Bytes ``offset .. offset+length`` of the demo processor's download pattern."""
    start = offset % PERIOD
    if length <= len(_BLOCK) - start:
        return _BLOCK[start : start + length]
    return bytes((offset + i) % PERIOD for i in range(length))


def download_and_verify(port: int, size: int, *, timeout: float = 120.0) -> int:
    """GET /download?size=N through ``port``; returns bytes that matched (raises on mismatch)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", f"/download?size={size}")
        response = conn.getresponse()
        if response.status != 200:
            raise AssertionError(f"download answered {response.status}: {response.read()[:200]!r}")
        if int(response.headers["Content-Length"]) != size:
            raise AssertionError(f"Content-Length {response.headers['Content-Length']} != {size}")
        offset = 0
        while True:
            chunk = response.read(1 << 20)
            if not chunk:
                break
            if chunk != expected(offset, len(chunk)):
                bad = next(i for i, b in enumerate(chunk) if b != (offset + i) % PERIOD)
                raise AssertionError(f"byte {offset + bad} is wrong")
            offset += len(chunk)
        if offset != size:
            raise AssertionError(f"got {offset} bytes, expected {size}")
        return offset
    finally:
        conn.close()


def get(port: int, path: str = "/", *, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def upload(port: int, body: bytes, *, timeout: float = 60.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/upload", body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def websocket_echo(
    port: int, messages: list[str | bytes], *, timeout: float = 10.0
) -> list[str | bytes]:
    """Open ws://127.0.0.1:port/ws, send each message, return the echoes in order."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    ws = WSConnection(ConnectionType.CLIENT)
    try:
        sock.sendall(ws.send(Request(host=f"127.0.0.1:{port}", target="/ws")))
        echoes: list[str | bytes] = []
        accepted = False
        sent = False
        text_parts: list[str] = []
        byte_parts: list[bytes] = []
        while len(echoes) < len(messages):
            data = sock.recv(65536)
            if not data:
                raise AssertionError("connection closed before all echoes arrived")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    accepted = True
                elif isinstance(event, TextMessage):
                    text_parts.append(event.data)
                    if event.message_finished:
                        echoes.append("".join(text_parts))
                        text_parts = []
                elif isinstance(event, BytesMessage):
                    byte_parts.append(bytes(event.data))
                    if event.message_finished:
                        echoes.append(b"".join(byte_parts))
                        byte_parts = []
                elif isinstance(event, CloseConnection):
                    raise AssertionError(f"server closed the WebSocket: {event.reason}")
            if accepted and not sent:
                out = b"".join(ws.send(_message(m)) for m in messages)
                sock.sendall(out)
                sent = True
        sock.sendall(ws.send(CloseConnection(code=1000)))
        return echoes
    finally:
        sock.close()


def _message(m: str | bytes) -> TextMessage | BytesMessage:
    return TextMessage(data=m) if isinstance(m, str) else BytesMessage(data=m)
