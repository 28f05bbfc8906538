"""The portal origin's pages: log in and out, the engineer's gateways, sessions, Open links.

Every answer is ``no-store`` with a strict Content-Security-Policy (scripts from the portal
only, no framing).  The login cookie is ``__Host-`` prefixed (Secure, Path=/, no Domain: host
only), HttpOnly and SameSite=Strict.  Every POST must come from the portal's own origin
(``Origin``), and every action of a logged-in engineer carries the login's CSRF token.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway.relay.portal.core import GatewayCard, Portal, PortalAsk
from gateway.relay.portal.logins import Login
from gateway.relay.portal.proxy import LOGIN_COOKIE, TICKET_PATH, local_path
from gateway.relay.refusals import Refused

log = Logger()

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; form-action 'self' https:; frame-ancestors 'none'"
)

SCRIPT = b"""'use strict';
// Refresh the gateway list (session state, time left) every two seconds.
async function refresh() {
  try {
    const r = await fetch('/fragment', {credentials: 'same-origin', cache: 'no-store'});
    if (r.status === 200) {
      const box = document.getElementById('gateways');
      const active = document.activeElement;
      const typing = active && box.contains(active) && active.tagName === 'INPUT' && active.value;
      if (!typing) box.innerHTML = await r.text();
    } else if (r.status === 401) { location.reload(); }
  } catch (e) { /* the next poll tries again */ }
}
setInterval(refresh, 2000);
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _page(title: str, body: str) -> bytes:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(title)}</title><meta name=viewport content='width=device-width'>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        ".gw{border:1px solid #ccc;border-radius:6px;padding:0.5em 1em;margin:1em 0}"
        ".off{color:#888}.state{font-weight:bold}</style></head><body>"
        f"{body}</body></html>"
    ).encode()


class PortalPages(Resource):
    isLeaf = True

    def __init__(self, portal: Portal) -> None:
        super().__init__()
        self.portal = portal

    # -- plumbing --------------------------------------------------------------------------------

    def _headers(self, request: Request, kind: bytes = b"text/html; charset=utf-8") -> None:
        request.setHeader(b"content-type", kind)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-security-policy", CSP.encode())
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"same-origin")
        request.setHeader(b"strict-transport-security", b"max-age=31536000")

    def _login(self, request: Request) -> Login | None:
        cookie = request.getCookie(LOGIN_COOKIE.encode())
        return self.portal.logins.get(cookie.decode("latin-1") if cookie else None)

    def _peer(self, request: Request) -> str:
        return f"{getattr(request.getClientAddress(), 'host', '')}"

    def _arg(self, request: Request, name: str) -> str:
        values: list[bytes] = (request.args or {}).get(name.encode()) or [b""]
        return bytes(values[0]).decode("utf-8", "replace")

    def _same_origin(self, request: Request) -> bool:
        """The form came from the portal's own pages (``Origin``; a browser that hid it still
        says ``Sec-Fetch-Site: same-origin``)."""
        origin = request.getHeader(b"origin")
        wanted = self.portal.portal_origin().rstrip("/").encode()
        if origin is not None and bytes(origin) != b"null":
            return bytes(origin).rstrip(b"/") == wanted
        return request.getHeader(b"sec-fetch-site") == b"same-origin"

    def _redirect(self, request: Request, where: str) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"location", where.encode("utf-8"))
        self._headers(request)
        return b""

    def _deferred(self, request: Request, d: Deferred[bytes]) -> Any:
        def done(body: bytes) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(body)
                request.finish()

        def failed(failure: Failure) -> None:
            log.failure("portal page", failure)
            if not request.finished and not getattr(request, "_disconnected", False):
                request.setResponseCode(500)
                request.write(_page("Error", "<p>The portal failed; try again.</p>"))
                request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

    # -- GET ---------------------------------------------------------------------------------------

    def render_GET(self, request: Request) -> Any:
        path = request.path.decode("latin-1")
        if path == "/portal.js":
            self._headers(request, b"text/javascript; charset=utf-8")
            return SCRIPT
        self._headers(request)
        login = self._login(request)
        if path == "/":
            if login is None:
                return self._login_page(request, self._arg(request, "next"))
            return self._deferred(request, self._home(login))
        if path == "/fragment":
            if login is None:
                request.setResponseCode(401)
                return b""
            return self._deferred(request, self._fragment(login).addCallback(str.encode))
        if path == "/open":
            return self._open(request, login)
        request.setResponseCode(404)
        return _page("Not found", "<p>No such page. <a href='/'>The portal</a></p>")

    def _login_page(self, request: Request, next_url: str, problem: str = "") -> bytes:
        shown = f"<p id=problem role=alert>{_e(problem)}</p>" if problem else ""
        return _page(
            "Engineer portal: log in",
            "<h1>Remote service gateway: engineer portal</h1>"
            f"{shown}<form method=post action='/login'>"
            f"<input type=hidden name=next value='{_e(next_url)}'>"
            "<p><label>Name <input name=name id=name autocomplete=username required></label></p>"
            "<p><label>Password <input name=password id=password type=password "
            "autocomplete=current-password required></label></p>"
            "<p><label>Second-factor code <input name=code id=code inputmode=numeric "
            "autocomplete=one-time-code maxlength=6></label> (if you set one up)</p>"
            "<p><button type=submit id=login>Log in</button></p></form>",
        )

    def _home(self, login: Login) -> Deferred[bytes]:
        def page(fragment: str) -> bytes:
            return _page(
                "Engineer portal",
                f"<h1>Engineer portal</h1><p>Logged in as <b id=who>{_e(login.engineer)}</b>. "
                "<form method=post action='/logout' style='display:inline'>"
                f"<input type=hidden name=csrf value='{_e(login.csrf)}'>"
                "<button type=submit id=logout>Log out</button></form></p>"
                f"<div id=gateways>{fragment}</div><script src='/portal.js'></script>",
            )

        return self._fragment(login).addCallback(page)

    def _fragment(self, login: Login) -> Deferred[str]:
        return self.portal.gateways(login).addCallback(lambda cards: self._cards(login, cards))

    def _cards(self, login: Login, cards: list[GatewayCard]) -> str:
        if not cards:
            return "<p id=none>No gateway you may reach is connected to this relay now.</p>"
        return "".join(self._card(login, card) for card in cards)

    def _card(self, login: Login, card: GatewayCard) -> str:
        csrf = f"<input type=hidden name=csrf value='{_e(login.csrf)}'>"
        gw = f"<input type=hidden name=gateway value='{_e(card.id)}'>"
        ask = self.portal.ask_of(login, card.id)
        state = self._session_text(ask)
        parts = [f"<div class=gw id='gw-{_e(card.id)}' data-mode='{_e(card.mode or '')}'>"]
        online = "online" if card.online else "offline"
        parts.append(
            f"<h2>{_e(card.id)}</h2><p>{online}, access mode "
            f"<b class=mode>{_e(card.mode or 'unknown')}</b>"
            + (f" ({_e(card.problem)})" if card.problem else "")
            + "</p>"
        )
        live = ask is not None and ask.state in ("asking", "waiting", "approved")
        if state:
            parts.append(f"<p class=state>{state}</p>")
        if ask is not None and live:
            parts.append(
                f"<form method=post action='/end'>{csrf}{gw}"
                "<button type=submit class=end>End</button></form>"
            )
        elif card.mode == "attended":
            parts.append(
                f"<form method=post action='/request'>{csrf}{gw}<label>Reason "
                "<input name=reason class=reason required maxlength=500></label> "
                "<button type=submit class=request>Request access</button></form>"
                f"<form method=post action='/code'>{csrf}{gw}<label>I have a code "
                "<input name=code class=code inputmode=numeric maxlength=12 required></label> "
                "<button type=submit class=use-code>Use code</button></form>"
            )
        if card.targets:
            parts.append("<ul class=targets>")
            for target in card.targets:
                link = "/open?" + urlencode({"gateway": card.id, "target": target, "fresh": "1"})
                parts.append(
                    f"<li>{_e(target)} <a class=open target=_blank rel=noopener "
                    f"data-target='{_e(target)}' href='{_e(link)}'>Open</a></li>"
                )
            parts.append("</ul>")
        if card.groups:
            parts.append("<p>Target groups (one UI on several ports):</p><ul class=groups>")
            for group, members in card.groups.items():
                link = "/open?" + urlencode({"gateway": card.id, "target": group, "fresh": "1"})
                ports = ", ".join(f"{m} :{p}" for p, m in members.items())
                parts.append(
                    f"<li>{_e(group)} ({_e(ports)}) <a class=open target=_blank rel=noopener "
                    f"data-target='{_e(group)}' href='{_e(link)}'>Open</a></li>"
                )
            parts.append("</ul>")
        parts.append("</div>")
        return "".join(parts)

    def _session_text(self, ask: PortalAsk | None) -> str:
        if ask is None:
            return ""
        if ask.state in ("asking", "waiting"):
            return "Waiting for the plant's answer to your request&hellip;"
        if ask.state == "approved":
            left = _time_left(ask.expires, self.portal.clock.seconds())
            return f"Session {_e(ask.session or '')} approved ({_e(ask.permission or 'full')})" + (
                f", {left} left" if left else ""
            )
        if ask.state == "denied":
            return f"Denied: {_e(ask.why or 'no reason given')}"
        return f"Session ended: {_e(ask.why or '')}"

    def _open(self, request: Request, login: Login | None) -> Any:
        gateway, target = self._arg(request, "gateway"), self._arg(request, "target")
        next_path = self._arg(request, "next") or "/"
        if not local_path(next_path):
            next_path = "/"
        if login is None:
            back = "/open?" + urlencode({"gateway": gateway, "target": target, "next": next_path})
            return self._redirect(request, "/?" + urlencode({"next": back}))
        engineer = self.portal.engineer(login)
        if engineer is None or self.portal.authorisation.refusal(engineer, gateway) is not None:
            request.setResponseCode(403)
            return _page("Not authorised", "<p>You may not reach that gateway.</p>")
        if self._arg(request, "fresh"):
            self.portal.forget_finished(login, gateway)
        ticket = self.portal.logins.ticket(login, gateway, target)
        where = (
            self.portal.target_url(target, gateway).rstrip("/")
            + TICKET_PATH
            + "?"
            + urlencode({"t": ticket, "next": next_path})
        )
        # What the gateway offers now (its target groups) before the browser gets there.
        refreshed = self.portal.refresh(gateway)
        return self._deferred(
            request, refreshed.addCallback(lambda _: self._redirect(request, where))
        )

    # -- POST --------------------------------------------------------------------------------------

    def render_POST(self, request: Request) -> Any:
        path = request.path.decode("latin-1")
        self._headers(request)
        if not self._same_origin(request):
            request.setResponseCode(403)
            return _page("Refused", "<p>Forms are accepted from the portal's own pages only.</p>")
        if path == "/login":
            return self._post_login(request)
        login = self._login(request)
        if login is None:
            return self._redirect(request, "/")
        if not login.csrf_ok(self._arg(request, "csrf")):
            request.setResponseCode(403)
            return _page("Refused", "<p>This form is out of date; reload the portal.</p>")
        gateway = self._arg(request, "gateway")
        try:
            if path == "/logout":
                self.portal.log_out(login)
                request.addCookie(
                    LOGIN_COOKIE.encode(),
                    b"",
                    path=b"/",
                    secure=True,
                    httpOnly=True,
                    sameSite="strict",
                    max_age=0,
                )
                return self._redirect(request, "/")
            if path == "/request":
                self.portal.ask(login, gateway, reason=self._arg(request, "reason").strip()[:500])
            elif path == "/code":
                self.portal.ask(login, gateway, code=self._arg(request, "code").strip()[:12])
            elif path == "/end":
                self.portal.leave(login, gateway)
            else:
                request.setResponseCode(404)
                return _page("Not found", "<p>No such action.</p>")
        except Refused as refused:
            request.setResponseCode(403)
            return _page("Refused", f"<p>{_e(refused.reason)}</p><p><a href='/'>Back</a></p>")
        return self._redirect(request, "/")

    def _post_login(self, request: Request) -> Any:
        name, password = self._arg(request, "name").strip(), self._arg(request, "password")
        next_url = self._arg(request, "next")
        if not next_url.startswith("/open?"):
            next_url = "/"

        def ok(login: Login) -> bytes:
            request.addCookie(
                LOGIN_COOKIE.encode(),
                login.id.encode(),
                path=b"/",
                secure=True,
                httpOnly=True,
                sameSite="strict",
            )
            request.setResponseCode(303)
            request.setHeader(b"location", next_url.encode())
            return b""

        def refused(failure: Failure) -> bytes:
            failure.trap(Refused)
            assert isinstance(failure.value, Refused)
            request.setResponseCode(401)
            return self._login_page(request, next_url, failure.value.reason)

        return self._deferred(
            request,
            self.portal.log_in(
                name, password, self._peer(request), self._arg(request, "code")
            ).addCallbacks(ok, refused),
        )


def _time_left(expires: str | None, now: float) -> str:
    if not expires:
        return ""
    try:
        left = datetime.fromisoformat(expires).timestamp() - now
    except ValueError:
        return ""
    minutes = max(0, int(left // 60))
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
