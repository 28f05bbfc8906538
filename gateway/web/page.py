# twisted.web is only partly annotated; strict mode would flag every call into it.
# mypy: disable-error-code="no-untyped-call"
"""The status listener's tree: the live page (package data, no CDN), its JSON API and its login.

``/`` ``/app.js`` ``/app.css`` ``/favicon.svg`` ``/favicon-live.svg``: the page's own files,
read once from the package.  ``/api/auth``, ``/api/login``, ``/api/logout``: the login
(`gateway.web.pageauth`).  Everything else under ``/api/`` (``status``, ``events``, the actions)
is the API, readable only by whom `PageAuth.may_read` lets in, acting as `PageAuth.identify`
says.  Every answer carries `PAGE_CSP`: scripts, styles and images from this listener only, no
inline script, no framing, forms and fetches to this listener only.
"""

from __future__ import annotations

import json
from importlib import resources

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from gateway.edge.consent import IConsent
from gateway.edge.status import IStatusView
from gateway.web.api import ApiRoot
from gateway.web.events import EventStream
from gateway.web.pageauth import AuthState, Login, Logout, PageAuth

__all__ = ["PAGE_CSP", "STATIC", "PageRoot", "page_root"]

PAGE_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    b"object-src 'none'"
)
STATIC: dict[bytes, tuple[str, bytes]] = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"app.js": ("app.js", b"text/javascript; charset=utf-8"),
    b"app.css": ("app.css", b"text/css; charset=utf-8"),
    b"favicon.svg": ("favicon.svg", b"image/svg+xml"),
    b"favicon-live.svg": ("favicon-live.svg", b"image/svg+xml"),
}
PUBLIC_API = frozenset({b"auth", b"login", b"logout"})


class StaticFile(Resource):
    isLeaf = True

    def __init__(self, body: bytes, kind: bytes) -> None:
        super().__init__()
        self._body, self._kind = body, kind

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self._kind)
        request.setHeader(b"cache-control", b"no-cache")
        return self._body


class Refusal(Resource):
    isLeaf = True

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__()
        self._status, self._error, self._reason = status, error, reason

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self._status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"error": self._error, "reason": self._reason}).encode() + b"\n"


class GatedApi(Resource):
    """``/api/``: the login's own routes for anyone, the rest for those who may read."""

    def __init__(self, api: Resource, auth: PageAuth) -> None:
        super().__init__()
        self._api, self._auth = api, auth

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if path not in PUBLIC_API and not self._auth.may_read(request):
            return Refusal(401, "login-required", "log in with the operator password first")
        child: Resource = self._api.getChildWithDefault(path, request)
        return child


class PageRoot(Resource):
    def __init__(self, api: Resource) -> None:
        super().__init__()
        for name, (file, kind) in STATIC.items():
            body = resources.files("gateway.web").joinpath("static", file).read_bytes()
            self.putChild(name, StaticFile(body, kind))
        self.putChild(b"api", api)

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        request.setHeader(b"content-security-policy", PAGE_CSP)
        child: Resource = super().getChildWithDefault(path, request)
        return child


def page_root(
    view: IStatusView, consent: IConsent, auth: PageAuth, clock: IReactorTime
) -> tuple[PageRoot, EventStream]:
    """The status listener's tree, and its event stream (to close at shutdown)."""
    api = ApiRoot(view, consent, auth.identify)
    events = EventStream(view, clock, allowed=auth.still_allowed)
    api.putChild(b"events", events)
    api.putChild(b"auth", AuthState(auth))
    api.putChild(b"login", Login(auth))
    api.putChild(b"logout", Logout(auth))
    return PageRoot(GatedApi(api, auth)), events
