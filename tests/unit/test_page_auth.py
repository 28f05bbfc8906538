# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The status page off loopback: the password, the login, its cookie, CSRF, lockout and audit.

Requests are bytes through a real ``Site`` over a `StringTransport` whose peer is a LAN address
(or loopback), so cookies and headers are parsed as a browser's would be; the consent service is
`tests.unit.test_api.FakeConsent`, the clock a `Clock`, and the password check runs inline.
"""

from __future__ import annotations

import json
import stat
import tempfile
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request, Site

from gateway.audit import MemoryAuditTrail
from gateway.config import AccessMode
from gateway.web.operator import (
    FIRST_LOCKOUT,
    FREE_TRIES,
    IDLE_SECONDS,
    LoginLimiter,
    check_password,
    hash_password,
    read_password,
    write_password,
)
from gateway.web.page import PAGE_CSP, page_root
from gateway.web.pageauth import COOKIE, PageAuth
from tests.unit.test_api import FakeConsent, FixedView

LAN = "192.0.2.20"
PASSWORD = "correct horse battery"


def inline(work: Callable[[], bool]) -> Deferred[bool]:
    return succeed(work())


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            break
        out += rest[:length]
        data = rest[length + 2 :]
    return out


class Reply:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.append((name.strip().lower(), value.strip()))
        if self.header("transfer-encoding") == "chunked":
            self.body = _unchunk(self.body)

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def cookie(self) -> str | None:
        return self.header("set-cookie")


class PageAuthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = Path(tempfile.mkdtemp())
        self.addCleanup(lambda: __import__("shutil").rmtree(self.state))
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.audit = MemoryAuditTrail()
        self.consent = FakeConsent()
        self.auth = PageAuth(self.state, self.clock, self.audit, run_blocking=inline)
        root, self.events = page_root(FixedView(), self.consent, self.auth, self.clock)
        self.site = Site(root, reactor=self.clock)

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        peer: str = LAN,
        headers: dict[str, str] | None = None,
        cookie: str | None = None,
        json_body: bool = True,
    ) -> Reply:
        sent = {"Host": f"{peer}:8081"}
        if method == "POST":
            sent["Origin"] = f"http://{peer}:8081"
            sent["Sec-Fetch-Site"] = "same-origin"
            if json_body:
                sent["Content-Type"] = "application/json"
        if cookie:
            sent["Cookie"] = cookie
        sent.update(headers or {})
        data = b"" if body is None else (json.dumps(body) if json_body else body).encode()
        sent["Content-Length"] = str(len(data))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent.items())
        channel = self.site.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 50000))
        channel.makeConnection(transport)
        channel.dataReceived(head.encode() + b"\r\n" + data)
        reply = Reply(transport.value())
        channel.connectionLost(None)
        return reply

    def set_password(self) -> None:
        write_password(self.state, PASSWORD)

    def login(self, password: str = PASSWORD, peer: str = LAN) -> Reply:
        return self.send("POST", "/api/login", {"password": password}, peer=peer)

    def logged_in(self) -> tuple[str, str]:
        """(Cookie header value, CSRF token) of a fresh login."""
        self.set_password()
        reply = self.login()
        self.assertEqual(reply.status, 200, reply.body)
        morsel = SimpleCookie(reply.cookie() or "")[COOKIE.decode()]
        return f"{COOKIE.decode()}={morsel.value}", reply.json["csrf"]

    # -- the stored password ----------------------------------------------------------------

    def test_the_password_is_stored_as_a_salted_scrypt_hash_readable_only_by_its_owner(
        self,
    ) -> None:
        path = write_password(self.state, PASSWORD)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        stored = read_password(self.state)
        assert stored is not None
        self.assertNotIn(PASSWORD, stored)
        self.assertEqual(json.loads(stored)["scheme"], "scrypt")
        self.assertTrue(check_password(stored, PASSWORD))
        self.assertFalse(check_password(stored, PASSWORD + "!"))
        self.assertNotEqual(hash_password(PASSWORD), hash_password(PASSWORD))  # salted
        self.assertFalse(check_password("not json", PASSWORD))

    # -- loopback ---------------------------------------------------------------------------

    def test_loopback_acts_without_a_login_and_is_named_in_the_audit(self) -> None:
        self.set_password()
        reply = self.send("POST", "/api/access", {"mode": "disabled"}, peer="127.0.0.1")
        self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual(self.consent.current, AccessMode.DISABLED)
        self.assertEqual(self.consent.calls[-1][1].address, "127.0.0.1")

    def test_a_cross_site_post_is_refused_even_on_loopback(self) -> None:
        reply = self.send(
            "POST",
            "/api/access",
            {"mode": "disabled"},
            peer="127.0.0.1",
            headers={"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
        )
        self.assertEqual(reply.status, 403, reply.body)
        self.assertEqual(self.consent.current, AccessMode.ATTENDED)

    # -- no password set --------------------------------------------------------------------

    def test_without_a_password_the_lan_may_read_but_every_action_is_refused(self) -> None:
        self.assertEqual(self.send("GET", "/api/status").status, 200)
        for path, body in [
            ("/api/access", {"mode": "disabled"}),
            ("/api/codes", {}),
            ("/api/requests/r-1/approve", {}),
            ("/api/requests/r-1/deny", {}),
            ("/api/sessions/s-1/end", {}),
            ("/api/sessions/end-all", {}),
            ("/api/sessions/s-1/permission", {"permission": "view"}),
        ]:
            reply = self.send("POST", path, body)
            self.assertEqual(reply.status, 403, (path, reply.body))
            self.assertIn("gateway operator-password", reply.json["reason"])
        self.assertEqual(self.consent.calls, [])
        state = self.send("GET", "/api/auth").json
        self.assertFalse(state["can_act"])
        self.assertIn("gateway operator-password", state["how_to_set"])
        self.assertEqual(self.login().status, 409)

    # -- with a password --------------------------------------------------------------------

    def test_with_a_password_the_lan_must_log_in_to_read_or_act(self) -> None:
        self.set_password()
        self.assertEqual(self.send("GET", "/api/status").status, 401)
        self.assertEqual(self.send("GET", "/api/events").status, 401)
        reply = self.send("POST", "/api/access", {"mode": "disabled"})
        self.assertIn(reply.status, (401, 403))
        self.assertEqual(self.consent.calls, [])
        self.assertEqual(self.send("GET", "/").status, 200)  # the page itself, to log in on
        self.assertTrue(self.send("GET", "/api/auth").json["login_required"])

    def test_a_login_sets_a_strict_http_only_cookie_that_expires(self) -> None:
        self.set_password()
        reply = self.login()
        self.assertEqual(reply.status, 200)
        cookie = reply.cookie() or ""
        parts = [p.strip().lower() for p in cookie.split(";")]
        self.assertIn("httponly", parts)
        self.assertIn("samesite=strict", parts)
        self.assertIn("path=/", parts)
        self.assertTrue(any(p.startswith("max-age=") for p in parts), parts)
        self.assertNotIn("secure", parts)  # plain HTTP here; over TLS it is Secure
        self.assertNotIn(PASSWORD, cookie)
        self.assertEqual(self.audit.events("operator.login")[0]["who"], f"operator ({LAN})")

    def test_the_cookie_is_secure_over_tls(self) -> None:
        self.set_password()
        self.patch(Request, "isSecure", lambda self: True)
        reply = self.send(
            "POST",
            "/api/login",
            {"password": PASSWORD},
            headers={"Origin": f"https://{LAN}:8081"},
        )
        self.assertEqual(reply.status, 200, reply.body)
        self.assertIn("secure", [p.strip().lower() for p in (reply.cookie() or "").split(";")])

    def test_a_logged_in_action_needs_the_csrf_token(self) -> None:
        cookie, csrf = self.logged_in()
        self.assertEqual(self.send("GET", "/api/status", cookie=cookie).status, 200)
        refused = self.send("POST", "/api/access", {"mode": "disabled"}, cookie=cookie)
        self.assertEqual(refused.status, 403)
        wrong = self.send(
            "POST",
            "/api/access",
            {"mode": "disabled"},
            cookie=cookie,
            headers={"X-CSRF-Token": "x" * 43},
        )
        self.assertEqual(wrong.status, 403)
        self.assertEqual(self.consent.calls, [])
        done = self.send(
            "POST",
            "/api/access",
            {"mode": "disabled"},
            cookie=cookie,
            headers={"X-CSRF-Token": csrf},
        )
        self.assertEqual(done.status, 200, done.body)
        actor = self.consent.calls[-1][1]
        self.assertEqual((actor.name, actor.address), ("operator", LAN))

    def test_a_cross_site_form_post_is_refused_with_the_cookie(self) -> None:
        cookie, csrf = self.logged_in()
        reply = self.send(
            "POST",
            "/api/access",
            "mode=disabled",
            cookie=cookie,
            json_body=False,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": "http://evil.example",
                "Sec-Fetch-Site": "cross-site",
                "X-CSRF-Token": csrf,
            },
        )
        self.assertEqual(reply.status, 403, reply.body)
        self.assertEqual(self.consent.calls, [])

    def test_a_cookie_from_another_address_is_no_login(self) -> None:
        cookie, _ = self.logged_in()
        self.assertEqual(
            self.send("GET", "/api/status", cookie=cookie, peer="192.0.2.99").status, 401
        )

    def test_a_session_ends_after_idle_time_and_at_logout(self) -> None:
        cookie, _ = self.logged_in()
        self.clock.advance(IDLE_SECONDS + 1)
        self.assertEqual(self.send("GET", "/api/status", cookie=cookie).status, 401)
        cookie, _ = self.logged_in()
        self.assertEqual(self.send("POST", "/api/logout", {}, cookie=cookie).status, 200)
        self.assertEqual(self.send("GET", "/api/status", cookie=cookie).status, 401)
        self.assertEqual(len(self.audit.events("operator.logout")), 1)

    def test_wrong_passwords_lock_the_address_out_with_backoff_and_are_audited(self) -> None:
        self.set_password()
        for _ in range(FREE_TRIES - 1):
            self.assertEqual(self.login("wrong password").status, 401)
        locked = self.login("wrong password")
        self.assertEqual(locked.status, 429)
        self.assertEqual(locked.header("retry-after"), str(int(FIRST_LOCKOUT)))
        self.assertEqual(self.login().status, 429)  # even the right one, while locked
        self.assertEqual(self.login(peer="192.0.2.21").status, 200)  # another address may
        self.clock.advance(FIRST_LOCKOUT + 1)
        again = self.login("wrong password")  # one more wrong: locked twice as long
        self.assertEqual(again.status, 429)
        self.assertEqual(again.header("retry-after"), str(int(FIRST_LOCKOUT * 2)))
        self.clock.advance(FIRST_LOCKOUT * 2 + 1)
        self.assertEqual(self.login().status, 200)
        self.assertEqual(len(self.audit.events("operator.login_failed")), FREE_TRIES + 1)
        self.assertEqual(len(self.audit.events("operator.locked_out")), 2)
        self.assertTrue(
            all(r["who"] == f"operator ({LAN})" for r in self.audit.events("operator.locked_out"))
        )

    def test_the_limiter_forgets_an_address_after_a_right_password(self) -> None:
        limiter = LoginLimiter(self.clock)
        for _ in range(FREE_TRIES - 1):
            self.assertIsNone(limiter.failed(LAN))
        limiter.succeeded(LAN)
        self.assertIsNone(limiter.failed(LAN))
        self.assertIsNone(limiter.locked_until(LAN))

    # -- headers ----------------------------------------------------------------------------

    def test_every_answer_has_a_strict_csp(self) -> None:
        for path in ("/", "/app.js", "/api/auth", "/api/status"):
            reply = self.send("GET", path, peer="127.0.0.1")
            self.assertEqual(reply.status, 200, path)
            self.assertEqual(reply.header("content-security-policy"), PAGE_CSP.decode(), path)
        csp = PAGE_CSP.decode()
        self.assertIn("default-src 'self'", csp)
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertNotIn("unsafe-inline", csp)
        self.assertEqual(
            self.send("GET", "/app.js").header("content-type"), "text/javascript; charset=utf-8"
        )

    def test_a_new_password_ends_the_logins_made_with_the_old_one(self) -> None:
        cookie, _ = self.logged_in()
        self.assertEqual(self.send("GET", "/api/status", cookie=cookie).status, 200)
        write_password(self.state, "another long password")
        self.assertEqual(self.send("GET", "/api/status", cookie=cookie).status, 401)
