# twisted.web is only partly annotated; strict mode would flag every call into it.
# mypy: disable-error-code="no-untyped-call"
"""Who may read and act on the status page: loopback freely, anyone else after logging in.

The decision is made per request from the client's own address (the TCP peer), never from a
header: a listener on ``0.0.0.0`` still lets the edge PC's own browser in without a password, and
asks everybody else for one.

Off loopback:

- **No password set**: the page is read-only (as before this page had a login) and every action
  is refused with a 403 that says how to set one (``gateway operator-password -c gateway.toml``).
  Plant IT who open the page on the LAN see that sentence on the page itself.
- **A password set**: everything but the page's own files and ``/api/auth`` / ``/api/login``
  needs a session cookie (HttpOnly, SameSite=Strict, Secure over TLS); status reads included,
  since the page shows who is connected.
- **Every action** (any POST under ``/api/``) must also come from the page itself: an ``Origin``
  (when sent) naming this listener, a ``Sec-Fetch-Site`` (when sent) of ``same-origin``, and the
  session's synchronizer token in ``X-CSRF-Token``.  So a page elsewhere cannot act through a
  logged-in operator's browser, with or without the cookie.
- **Logins**: wrong passwords per address are limited (`LoginLimiter`); failures, lockouts,
  logins and logouts are audited with the address.  The password check (scrypt, ~0.1 s) runs in
  a thread, at most `MAX_CHECKS` at once.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway.audit import AuditWriteError, IAuditTrail
from gateway.edge.consent import Actor
from gateway.edge.status import iso
from gateway.web.api import Forbidden, _is_loopback, loopback_operator
from gateway.web.operator import (
    LoginLimiter,
    OperatorSession,
    OperatorSessions,
    check_password,
    password_tag,
    read_password,
)

__all__ = ["COOKIE", "CSRF_HEADER", "PageAuth"]

log = Logger()

T = TypeVar("T")
RunBlocking = Callable[[Callable[[], T]], "Deferred[T]"]

COOKIE = b"gateway_operator"
CSRF_HEADER = b"x-csrf-token"
MAX_CHECKS = 2
"""Password checks running at once; more are answered 429 (each takes 32 MiB for ~0.1 s)."""
MAX_PASSWORD = 1024

NO_PASSWORD = (
    "this page is read-only from the network until an operator password is set: on the gateway, "
    "run 'gateway operator-password -c gateway.toml', then log in here"
)
LOG_IN = "log in with the operator password first"
NOT_FROM_HERE = "this action did not come from the status page itself, so it was refused"


def _default_run(work: Callable[[], T]) -> Deferred[T]:
    return deferToThread(work)


def client_host(request: Request) -> str:
    host = getattr(request.getClientAddress(), "host", None)
    return host if isinstance(host, str) else "unknown"


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


class PageAuth:
    """The status listener's login: `identify` for the API, `may_read` for the rest."""

    def __init__(
        self,
        state_dir: Path,
        clock: IReactorTime,
        audit: IAuditTrail,
        *,
        run_blocking: Callable[[Callable[[], bool]], Deferred[bool]] = _default_run,
    ) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self.audit = audit
        self.limiter = LoginLimiter(clock)
        self.sessions = OperatorSessions(clock)
        self._run = run_blocking
        self._checking = 0

    # -- reading the request --------------------------------------------------------------------

    def is_local(self, request: Request) -> bool:
        return _is_loopback(client_host(request))

    def password_set(self) -> bool:
        return read_password(self.state_dir) is not None

    def session_of(self, request: Request) -> OperatorSession | None:
        value = request.getCookie(COOKIE)
        session = self.sessions.get(value.decode("ascii", "replace") if value else None)
        if session is None:
            return None
        if session.address != client_host(request):
            return None  # a cookie carried to another machine is no login there
        if session.password != password_tag(read_password(self.state_dir)):
            self.sessions.end(session.id)  # the password was changed (or removed)
            return None
        return session

    def may_read(self, request: Request) -> bool:
        """Loopback, a logged-in operator, or anyone while no password is set (read-only)."""
        if self.is_local(request) or not self.password_set():
            return True
        return self.session_of(request) is not None

    def still_allowed(self, request: Request) -> Callable[[], bool]:
        """For a long-lived stream: whether its reader may still read (checked on every send)."""
        if self.is_local(request) or not self.password_set():
            return lambda: True
        session = self.session_of(request)
        if session is None:
            return lambda: False
        tag = session.password
        return lambda: (
            self.sessions.alive(session) and password_tag(read_password(self.state_dir)) == tag
        )

    def same_origin(self, request: Request) -> bool:
        """Whether a browser says the request comes from a page of this listener."""
        site = _header(request, b"sec-fetch-site")
        if site is not None and site.lower() != "same-origin":
            return False
        origin = _header(request, b"origin")
        if origin is None:
            return True
        host = _header(request, b"host")
        scheme = "https" if request.isSecure() else "http"
        parts = urlsplit(origin)
        return host is not None and parts.scheme == scheme and parts.netloc == host.lower()

    # -- the API's Identify ---------------------------------------------------------------------

    def identify(self, request: Request) -> Actor:
        """Who acts: loopback staff, or the logged-in operator at their address."""
        if self.is_local(request):
            if not self.same_origin(request):
                raise Forbidden(NOT_FROM_HERE)
            return loopback_operator(request)
        if not self.same_origin(request):
            raise Forbidden(NOT_FROM_HERE)
        if not self.password_set():
            raise Forbidden(NO_PASSWORD)
        session = self.session_of(request)
        if session is None:
            raise Forbidden(LOG_IN)
        token = _header(request, CSRF_HEADER) or ""
        if not hmac.compare_digest(token.encode(), session.csrf.encode()):
            raise Forbidden(NOT_FROM_HERE + " (the page's token was missing or wrong)")
        return Actor("operator", "operator", session.address)

    # -- what the page asks ---------------------------------------------------------------------

    def state(self, request: Request) -> dict[str, Any]:
        """``GET /api/auth``: whether this browser must log in, and its token if logged in."""
        local = self.is_local(request)
        password = self.password_set()
        session = None if local else self.session_of(request)
        locked = self.limiter.locked_until(client_host(request))
        return {
            "local": local,
            "password_set": password,
            "login_required": not local and password and session is None,
            "can_act": local or (password and session is not None),
            "logged_in": session is not None,
            "csrf": session.csrf if session is not None else None,
            "locked_until": None if locked is None else iso(locked),
            "how_to_set": None if local or password else NO_PASSWORD,
        }

    def record(self, event: str, who: str, result: str = "ok", **details: Any) -> None:
        try:
            self.audit.record(event, who=who, result=result, **details)
        except AuditWriteError as e:
            log.warn("audit: {event} not recorded: {why}", event=event, why=str(e))

    def login(self, request: Request, password: str) -> Deferred[tuple[int, dict[str, Any]]]:
        """Check ``password`` for this client: (status, answer); sets the cookie on success."""
        address = client_host(request)
        who = f"operator ({address})"
        done: Deferred[tuple[int, dict[str, Any]]] = Deferred()
        stored = read_password(self.state_dir)
        locked = self.limiter.locked_until(address)
        if stored is None:
            done.callback((409, {"error": "no-password", "reason": NO_PASSWORD}))
        elif locked is not None:
            done.callback(self._locked(request, locked))
        elif self._checking >= MAX_CHECKS:
            request.setHeader(b"retry-after", b"1")
            done.callback((429, {"error": "busy", "reason": "another login is being checked"}))
        else:
            self._checking += 1
            checked = self._run(lambda: check_password(stored, password))

            def decided(ok: bool) -> None:
                self._checking -= 1
                done.callback(self._decided(request, address, who, ok, password_tag(stored)))

            def failed(reason: Any) -> None:
                self._checking -= 1
                log.failure("checking the operator password failed", reason)
                done.callback((500, {"error": "internal", "reason": "the check failed"}))

            checked.addCallbacks(decided, failed)
        return done

    def _locked(self, request: Request, until: float) -> tuple[int, dict[str, Any]]:
        wait = max(1, int(until - self.clock.seconds() + 0.999))
        request.setHeader(b"retry-after", b"%d" % wait)
        return 429, {
            "error": "locked-out",
            "reason": f"too many wrong passwords: try again in {wait} seconds",
            "locked_until": iso(until),
        }

    def _decided(
        self, request: Request, address: str, who: str, ok: bool, tag: str
    ) -> tuple[int, dict[str, Any]]:
        if not ok:
            locked = self.limiter.failed(address)
            self.record("operator.login_failed", who, result="refused")
            if locked is not None:
                self.record("operator.locked_out", who, result="refused", until=iso(locked))
                return self._locked(request, locked)
            return 401, {"error": "wrong-password", "reason": "that is not the operator password"}
        self.limiter.succeeded(address)
        session = self.sessions.create(address, tag)
        self.record("operator.login", who)
        request.addCookie(
            COOKIE,
            session.id.encode(),
            path=b"/",
            max_age=b"%d" % int(self.sessions.expires(session) - self.clock.seconds()),
            httpOnly=True,
            secure=request.isSecure(),
            sameSite="strict",
        )
        return 200, {"csrf": session.csrf}

    def logout(self, request: Request) -> None:
        session = self.session_of(request)
        if session is not None:
            self.sessions.end(session.id)
            self.record("operator.logout", f"operator ({session.address})")
        request.addCookie(
            COOKIE,
            b"",
            path=b"/",
            max_age=b"0",
            httpOnly=True,
            secure=request.isSecure(),
            sameSite="strict",
        )


def _json(request: Request, status: int, answer: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(answer).encode() + b"\n"


class AuthState(Resource):
    """``GET /api/auth``."""

    isLeaf = True

    def __init__(self, auth: PageAuth) -> None:
        super().__init__()
        self._auth = auth

    def render_GET(self, request: Request) -> bytes:
        return _json(request, 200, self._auth.state(request))


class Login(Resource):
    """``POST /api/login`` ``{"password": "..."}``."""

    isLeaf = True

    def __init__(self, auth: PageAuth) -> None:
        super().__init__()
        self._auth = auth

    def render_POST(self, request: Request) -> bytes | int:
        if not self._auth.same_origin(request):
            return _json(request, 403, {"error": "forbidden", "reason": NOT_FROM_HERE})
        kind = (_header(request, b"content-type") or "").partition(";")[0].strip().lower()
        if kind != "application/json":
            return _json(request, 415, {"error": "not-json", "reason": "send JSON"})
        content = request.content
        raw = b"" if content is None else content.read(MAX_PASSWORD * 4 + 64)
        try:
            body = json.loads(raw.decode("utf-8"))
            password = body["password"] if isinstance(body, dict) else None
        except (ValueError, KeyError):
            password = None
        if not isinstance(password, str) or not 0 < len(password) <= MAX_PASSWORD:
            return _json(request, 400, {"error": "bad-value", "reason": "give the password"})
        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        def answer(result: tuple[int, dict[str, Any]]) -> None:
            if finished:
                return  # the browser has gone
            request.write(_json(request, *result))
            request.finish()

        self._auth.login(request, password).addCallback(answer)
        return NOT_DONE_YET


class Logout(Resource):
    """``POST /api/logout``."""

    isLeaf = True

    def __init__(self, auth: PageAuth) -> None:
        super().__init__()
        self._auth = auth

    def render_POST(self, request: Request) -> bytes:
        if not self._auth.same_origin(request):
            return _json(request, 403, {"error": "forbidden", "reason": NOT_FROM_HERE})
        self._auth.logout(request)
        return _json(request, 200, {"logged_in": False})
