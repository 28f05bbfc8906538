"""The gateway's local status listener: ``/api/status`` (JSON contract) and a plain page.

This is the read-only first cut: tunnel health and who is connected to what.  The attended-session
controls (allow, approve, end, switch off) come with the consent work and will sit on this page.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

StatusSource = Callable[[], dict[str, Any]]


class StatusJSON(Resource):
    isLeaf = True

    def __init__(self, source: StatusSource) -> None:
        super().__init__()
        self._source = source

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self._source(), indent=2).encode()


class StatusPage(Resource):
    isLeaf = True

    def __init__(self, source: StatusSource) -> None:
        super().__init__()
        self._source = source

    def render_GET(self, request: Request) -> bytes:
        status = self._source()
        tunnel = status["tunnel"]
        rows = (
            "".join(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
                    html.escape(str(c["engineer"])),
                    html.escape(str(c["target"])),
                    html.escape(str(c["started"])),
                    c["bytes_to_target"],
                    c["bytes_from_target"],
                )
                for c in status["connections"]
            )
            or '<tr><td colspan="5">Nobody is connected.</td></tr>'
        )
        state_class = "up" if tunnel["state"] == "up" else "down"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"refresh", b"5")
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Gateway {html.escape(status["id"])}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .8em;text-align:left}}
.up{{color:#070}}.down{{color:#a00}}</style></head><body>
<h1>Remote service gateway <code>{html.escape(status["id"])}</code></h1>
<p>Tunnel to <code>{html.escape(str(tunnel["relay"]))}</code>:
<strong class="{state_class}">{html.escape(tunnel["state"])}</strong>
since {html.escape(str(tunnel["since"]))}; round trip {tunnel["rtt_ms"]} ms.</p>
<p>Remote access mode: <strong>{html.escape(status["access"]["mode"])}</strong>.
Targets: {html.escape(", ".join(status["access"]["targets"]))}.</p>
<h2>Connected now</h2>
<table><tr><th>Engineer</th><th>Target</th><th>Since</th><th>Bytes to target</th>
<th>Bytes back</th></tr>{rows}</table>
<p><a href="/api/status">JSON</a></p></body></html>"""
        return page.encode()


def status_root(source: StatusSource) -> Resource:
    root = Resource()
    page = StatusPage(source)
    root.putChild(b"", page)
    api = Resource()
    api.putChild(b"status", StatusJSON(source))
    root.putChild(b"api", api)
    return root
