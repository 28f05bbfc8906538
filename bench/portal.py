"""The browser's way in for the benchmark: log in to the relay's engineer portal over HTTPS and
obtain a target origin's pass, as a browser does on Open (`gateway.relay.portal`).

1. ``POST /login`` on the portal's origin (name and password, the portal's own ``Origin``): the
   answer sets the login cookie (``__Host-portal``).
2. ``GET /open?gateway=G&target=T`` with it: a ``303`` to the target's origin,
   ``https://T--G.<domain>:PORT/.portal/ticket?t=...`` (a one-time ticket).
3. That URL on the target's origin: a ``303`` that sets the origin pass (``__Host-portal-pass``).

The load generator then sends the pass as its ``Cookie`` and the target origin as its ``Host``.
Every connection verifies the portal's certificate against the benchmark's CA and the host name
it is for; nothing here switches verification off.  Standard library only.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from http.client import HTTPResponse
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from bench.procs import BenchError

LOGIN_COOKIE = "__Host-portal"
PASS_COOKIE = "__Host-portal-pass"
TIMEOUT = 10.0


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def cookie(self, name: str) -> str | None:
        """The value a ``Set-Cookie`` of this answer gives cookie ``name`` (None: not set)."""
        return set_cookie_value(self.headers, name)


def set_cookie_value(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() != "set-cookie":
            continue
        first = value.split(";", 1)[0]
        k, sep, v = first.partition("=")
        if sep and k.strip() == name and v.strip():
            return v.strip()
    return None


def ticket_url(location: str | None, origin_host: str, port: int) -> str:
    """The path and query of the ticket link ``/open`` redirected to, checked to be the target
    origin's (``https://<origin_host>:<port>/.portal/ticket?t=...``)."""
    if not location:
        raise BenchError("portal: /open did not redirect to the target's origin")
    parts = urlsplit(location)
    if (parts.scheme, parts.hostname, parts.port) != ("https", origin_host, port):
        raise BenchError(f"portal: /open redirected to {location!r}, not to {origin_host}:{port}")
    if parts.path != "/.portal/ticket" or "t=" not in parts.query:
        raise BenchError(f"portal: /open redirected to {location!r}, not to a ticket")
    return f"{parts.path}?{parts.query}"


def context(ca: Path) -> ssl.SSLContext:
    """Verifies the chain against the bench CA and the host name (the defaults; kept on)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def request(
    ctx: ssl.SSLContext,
    port: int,
    host: str,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> Answer:
    """One HTTPS request to 127.0.0.1:port for ``host`` (its server name and ``Host``), on a
    connection of its own."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(head + body)
            answer = HTTPResponse(tls, method=method)
            answer.begin()
            data = answer.read()
            return Answer(answer.status, answer.getheaders(), data)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise BenchError(f"portal: {method} https://{host}:{port}{target}: {e}") from e


def log_in(
    ca: Path, port: int, domain: str, gateway: str, target: str, name: str, password: str
) -> str:
    """The target origin's pass for (gateway, target), after logging in as ``name``."""
    ctx = context(ca)
    origin = f"https://{domain}:{port}"
    form = urlencode({"name": name, "password": password, "next": "/"}).encode()
    login = request(
        ctx,
        port,
        domain,
        "POST",
        "/login",
        headers={"Origin": origin, "Content-Type": "application/x-www-form-urlencoded"},
        body=form,
    )
    session = login.cookie(LOGIN_COOKIE)
    if login.status != 303 or session is None:
        raise BenchError(f"portal: login answered {login.status} without a login cookie")
    cookie = {"Cookie": f"{LOGIN_COOKIE}={session}"}
    opened = request(
        ctx,
        port,
        domain,
        "GET",
        "/open?" + urlencode({"gateway": gateway, "target": target}),
        headers=cookie,
    )
    origin_host = f"{target}--{gateway}.{domain}"
    if opened.status != 303:
        raise BenchError(f"portal: /open answered {opened.status}")
    ticket = ticket_url(opened.header("Location"), origin_host, port)
    exchanged = request(ctx, port, origin_host, "GET", ticket)
    token = exchanged.cookie(PASS_COOKIE)
    if exchanged.status != 303 or token is None:
        raise BenchError(f"portal: the ticket answered {exchanged.status} without an origin pass")
    return token


def echo_probe(ca: Path, port: int, host: str, token: str, body: bytes = b"probe") -> bool:
    """One verified ``POST /echo`` through the portal with the origin pass."""
    try:
        answer = request(
            context(ca),
            port,
            host,
            "POST",
            "/echo",
            headers={"Cookie": f"{PASS_COOKIE}={token}"},
            body=body,
        )
    except BenchError:
        return False
    return answer.status == 200 and answer.body == body
