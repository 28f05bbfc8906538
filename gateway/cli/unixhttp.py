"""A small synchronous HTTP/1.1 client over a Unix socket, for the control commands.

A control command asks the running daemon one thing and exits, so it needs no reactor: the
standard library's ``http.client`` over an ``AF_UNIX`` socket is enough, and keeps ``gateway
access`` as quick to start as ``gateway --help``.  Every way of not reaching the daemon becomes a
`NoAnswer` with its kind, for the command to word (not running, permission, too slow).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any

from attrs import frozen

__all__ = ["TIMEOUT", "Answer", "NoAnswer", "UnixHTTPConnection", "call"]

TIMEOUT = 15.0
"""Seconds to wait for the daemon; it answers at once unless it is stuck."""
MAX_ANSWER = 4 * 1024 * 1024


class NoAnswer(Exception):
    """The daemon could not be asked.  ``kind``: ``absent`` (no socket or nobody listening),
    ``permission`` (the socket's mode or folder keeps us out), ``timeout``, ``broken`` (it
    closed or sent something that is not HTTP)."""

    def __init__(self, kind: str, path: Path, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.path = path
        self.detail = detail


@frozen
class Answer:
    status: int
    body: Any
    """The JSON answer (None if the body was not JSON)."""


def _connect_unix(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(os.fsencode(path))
    except BaseException:
        sock.close()
        raise
    return sock


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` with its TCP connect replaced by a Unix socket's."""

    def __init__(self, path: Path, timeout: float = TIMEOUT) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = _connect_unix(self.path, self.timeout or TIMEOUT)


def call(path: Path, method: str, url: str, body: Any = None, timeout: float = TIMEOUT) -> Answer:
    """One request to the daemon on ``path``; raises `NoAnswer`."""
    headers = {"accept": "application/json", "connection": "close"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    connection = UnixHTTPConnection(path, timeout)
    try:
        connection.request(method, url, body=payload, headers=headers)
        response = connection.getresponse()
        raw = response.read(MAX_ANSWER)
        status = response.status
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
        raise NoAnswer("absent", path, e.strerror or str(e)) from None
    except PermissionError as e:
        raise NoAnswer("permission", path, e.strerror or str(e)) from None
    except TimeoutError:
        raise NoAnswer("timeout", path, f"no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as e:
        said = " ".join(str(e).split())[:200]  # one line, whatever came back
        raise NoAnswer("broken", path, said or type(e).__name__) from None
    finally:
        connection.close()
    try:
        decoded = json.loads(raw) if raw.strip() else None
    except ValueError:
        decoded = None
    return Answer(status, decoded)
