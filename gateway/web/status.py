"""``/api/status`` (the JSON contract) and a plain read-only page, for the control socket.

The status listener serves the live page with its controls instead (`gateway.web.page`); both
read one ``IStatusView``.
"""

from __future__ import annotations

import json
from html import escape

from twisted.web.resource import Resource
from twisted.web.server import Request

from gateway.edge.status import IStatusView


class StatusJSON(Resource):
    isLeaf = True

    def __init__(self, view: IStatusView) -> None:
        super().__init__()
        self._view = view

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self._view.report().to_json(), indent=2).encode()


class StatusPage(Resource):
    isLeaf = True

    def __init__(self, view: IStatusView) -> None:
        super().__init__()
        self._view = view

    def render_GET(self, request: Request) -> bytes:
        status = self._view.report()
        tunnel = status.tunnel
        rows = (
            "".join(
                f"<tr><td>{escape(c.engineer)}</td><td>{escape(c.target)}</td>"
                f"<td>{escape(c.started)}</td><td>{c.bytes_to_target}</td>"
                f"<td>{c.bytes_from_target}</td></tr>"
                for c in status.connections
            )
            or '<tr><td colspan="5">Nobody is connected.</td></tr>'
        )
        state_class = "up" if tunnel.state == "up" else "down"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"refresh", b"5")
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Gateway {escape(status.id)}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .8em;text-align:left}}
.up{{color:#070}}.down{{color:#a00}}</style></head><body>
<h1>Remote service gateway <code>{escape(status.id)}</code></h1>
<p>Tunnel to <code>{escape(tunnel.relay)}</code>:
<strong class="{state_class}">{escape(tunnel.state)}</strong>
since {escape(tunnel.since)}; round trip {tunnel.rtt_ms} ms.</p>
<p>Remote access mode: <strong>{escape(status.access.mode)}</strong>.
Targets: {escape(", ".join(status.access.targets))}.</p>
<h2>Connected now</h2>
<table><tr><th>Engineer</th><th>Target</th><th>Since</th><th>Bytes to target</th>
<th>Bytes back</th></tr>{rows}</table>
<p><a href="/api/status">JSON</a></p></body></html>"""
        return page.encode()


def status_root(view: IStatusView, api: Resource | None = None) -> Resource:
    """The page at ``/`` and ``/api/``: ``api`` is the JSON API (`gateway.web.api.api_root`,
    which serves ``status`` too); without it, ``/api/status`` alone."""
    root = Resource()
    root.putChild(b"", StatusPage(view))
    if api is None:
        api = Resource()
        api.putChild(b"status", StatusJSON(view))
    root.putChild(b"api", api)
    return root
