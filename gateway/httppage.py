"""The small HTTP answers the product gives a browser itself, instead of cutting its connection.

Two places answer a browser on a processor's behalf: the gateway, when a request on an ``http``
target is refused (view-only), and ``gateway connect``, when the whole stream is refused or
cannot be opened (no session, processor unreachable, gateway offline).  Both say the same
one-line reason the engineer's client prints, in one short page (JSON for a client that asked
for JSON), marked ``x-gateway-refused`` with the refusal's token so tools can tell it from the
processor's own answers.  No Twisted here: plain bytes.
"""

from __future__ import annotations

import html
import json

PHRASES: dict[int, str] = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    410: "Gone",
    429: "Too Many Requests",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def error_page(
    status: int,
    token: str,
    reason: str,
    *,
    wants_json: bool = False,
    head_only: bool = False,
    close: bool = False,
) -> bytes:
    """A complete HTTP/1.1 response: ``status``, and ``reason`` in a page or a JSON object."""
    phrase = PHRASES.get(status, "Refused")
    if wants_json:
        body = json.dumps({"error": token, "reason": reason}).encode() + b"\n"
        kind = b"application/json"
    else:
        title = f"{status} {phrase}"
        body = (
            f"<!doctype html>\n<html><head><meta charset=utf-8><title>{title}</title></head>"
            f"<body><h1>{title}</h1><p>{html.escape(reason)}</p>"
            "<p>(answered by the remote service gateway)</p></body></html>\n"
        ).encode()
        kind = b"text/html; charset=utf-8"
    lines = [
        b"HTTP/1.1 %d %s" % (status, phrase.encode()),
        b"content-type: " + kind,
        b"content-length: %d" % len(body),
        b"cache-control: no-store",
        b"x-gateway-refused: " + token.encode("ascii", "replace"),
    ]
    if close:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head_only else body)


_METHOD_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-")


def http_request_line(first: bytes) -> bool | None:
    """Whether a connection's first bytes are an HTTP/1.x request line: None while too few
    have arrived to tell.

    ``gateway connect`` answers a refused stream with a page only where the local application
    speaks HTTP: a target the gateway says is ``http``, or a connection that began
    ``GET /... HTTP/1.1``.  Anything else keeps today's closed connection.
    """
    end = first.find(b"\n")
    complete = end >= 0
    line = first[:end].rstrip(b"\r") if complete else first
    method, space, rest = line.partition(b" ")
    if len(method) > 16 or not set(method) <= _METHOD_CHARS:
        return False
    if not space:
        return False if complete else None
    if len(method) < 3:
        return False
    target, space, version = rest.partition(b" ")
    if not space:
        return False if complete or len(rest) > 8192 else None
    if not target:
        return False
    if complete:
        return version.startswith(b"HTTP/1.") and len(version) == 8
    return None if (b"HTTP/1.".startswith(version) or version.startswith(b"HTTP/1.")) else False


def wants_json(first: bytes) -> bool:
    """Whether the request head in ``first`` has an Accept header naming JSON."""
    head = first.split(b"\r\n\r\n", 1)[0].lower()
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"accept" and b"json" in value:
            return True
    return False
