"""The status page on a plant-LAN address: read-only without a password, a login with one.

The gateway's status listener is bound to an address of a veth interface made for this module
(root), so every request, the browser's included, comes from a non-loopback address, as
from another PC on the plant network; nothing in the gateway is told it is a test.  Real relay,
gateway and Chromium; the password is set with ``gateway operator-password --stdin``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.demo.stack import python_gateway
from gateway.pki import issue_relay_certificate
from tests.helpers.browser import PANEL, artifact, axe_serious, browser
from tests.helpers.consent import audit_records, control_json, records_of
from tests.helpers.processes import Stack, fresh_stack, wait_until

pytestmark = pytest.mark.e2e

LAN_IP = "198.51.100.7"
"""TEST-NET-2: never a real host; on this module's veth interface only."""
PASSWORD = "plant seven operator"
WAIT_MS = 15_000
ACTIONS: list[tuple[str, dict[str, Any]]] = [
    ("/api/access", {"mode": "disabled"}),
    ("/api/codes", {}),
    ("/api/requests/r-1/approve", {}),
    ("/api/requests/r-1/deny", {"reason": "no"}),
    ("/api/sessions/s-1/end", {}),
    ("/api/sessions/end-all", {}),
    ("/api/sessions/s-1/permission", {"permission": "view"}),
]


@pytest.fixture(scope="module")
def lan_ip() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("these tests make a network interface: run them as root (CI does)")
    name = f"gwpage{os.getpid() % 10000}"
    steps = [
        ["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"],
        ["ip", "addr", "add", f"{LAN_IP}/32", "dev", name],
        ["ip", "link", "set", name, "up"],
        ["ip", "link", "set", f"{name}p", "up"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True, timeout=10)
        yield LAN_IP
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10, check=False)


@pytest.fixture(scope="module")
def stack(lan_ip: str) -> Iterator[Stack]:
    with fresh_stack() as stack:
        stack.write_configs(mode="attended")
        config = stack.layout.gateway_config
        text = config.read_text()
        loopback = f'listen = "127.0.0.1:{stack.ports["status"]}"'
        assert loopback in text, text
        config.write_text(text.replace(loopback, f'listen = "{lan_ip}:{stack.ports["status"]}"'))
        stack.start_processor()
        stack.start_relay()
        gateway = stack.start_gateway(wait_up=False)
        wait_until("the page on the LAN address", lambda: answers(stack), proc=gateway)
        wait_until(
            "the tunnel",
            lambda: stack.relay_metric("relay_gateways_connected") == 1.0,
            proc=gateway,
        )
        yield stack


def base(stack: Stack) -> str:
    return f"http://{LAN_IP}:{stack.ports['status']}"


def answers(stack: Stack) -> bool:
    try:
        return send(stack, "GET", "/api/auth")[0] == 200
    except OSError:
        return False


def send(
    stack: Stack,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connection: http.client.HTTPConnection
    origin = base(stack)
    if tls is None:
        connection = http.client.HTTPConnection(LAN_IP, stack.ports["status"], timeout=10)
    else:
        connection = http.client.HTTPSConnection(
            LAN_IP, stack.ports["status"], timeout=10, context=tls
        )
        origin = origin.replace("http://", "https://")
    sent = {"Origin": origin, "Sec-Fetch-Site": "same-origin"} if method == "POST" else {}
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if body is not None:
        sent["Content-Type"] = "application/json"
    sent.update(headers or {})
    try:
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def mode(stack: Stack) -> str:
    return str(control_json(stack, "access")["mode"])


def test_every_answer_carries_the_security_headers(stack: Stack) -> None:
    status, headers, body = send(stack, "GET", "/")
    assert status == 200 and b"/app.js" in body
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"


def test_without_a_password_the_page_is_read_only_and_every_action_is_refused(
    stack: Stack,
) -> None:
    assert send(stack, "GET", "/api/status")[0] == 200
    for path, body in ACTIONS:
        status, _, answer = send(stack, "POST", path, body)
        assert status == 403, (path, answer)
        assert b"gateway operator-password" in answer, answer
    assert mode(stack) == "attended"
    with browser() as chromium:
        page = chromium.new_page(viewport=PANEL)
        page.goto(base(stack))
        banner = page.locator("#readonly")
        banner.wait_for(state="visible", timeout=WAIT_MS)
        assert "gateway operator-password -c gateway.toml" in banner.inner_text()
        page.get_by_text("Ready: remote support is possible").wait_for(timeout=WAIT_MS)
        assert page.locator("#switch-off").is_disabled()
        assert page.locator("#code-button").is_disabled()
        serious = axe_serious(page)
        assert not serious, [(v["id"], v["help"]) for v in serious]


def set_password(stack: Stack) -> None:
    done = subprocess.run(
        python_gateway(["operator-password", "-c", str(stack.layout.gateway_config), "--stdin"]),
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_with_a_password_nothing_is_read_or_done_without_logging_in(stack: Stack) -> None:
    set_password(stack)
    assert send(stack, "GET", "/api/status")[0] == 401
    assert send(stack, "GET", "/api/events")[0] == 401
    for path, body in ACTIONS:
        status, _, answer = send(stack, "POST", path, body)
        assert status in (401, 403), (path, answer)
    assert mode(stack) == "attended"


def test_an_operator_logs_in_and_acts_and_is_named_in_the_audit(stack: Stack) -> None:
    with browser() as chromium:
        page = chromium.new_page(viewport=PANEL)
        page.goto(base(stack))
        page.get_by_label("Operator password").wait_for(timeout=WAIT_MS)
        assert page.locator("#panel").is_hidden()  # nothing of the status before the login
        serious = axe_serious(page)
        assert not serious, [(v["id"], v["help"]) for v in serious]
        page.screenshot(path=str(artifact("status-page-login.png")))
        page.get_by_label("Operator password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.get_by_text("Ready: remote support is possible").wait_for(timeout=WAIT_MS)
        assert page.locator("#link-state").inner_text() == "Live"
        page.get_by_role("button", name=re.compile("^Always on")).click()
        wait_until("unattended", lambda: mode(stack) == "unattended", deadline=10)
        page.get_by_role("button", name=re.compile("^Ask me")).click()
        wait_until("attended", lambda: mode(stack) == "attended", deadline=10)
    records = audit_records(stack, "gateway")
    assert records_of(records, "operator.login", who=f"operator ({LAN_IP})")
    changed = records_of(records, "mode.changed", new="unattended")
    assert changed and changed[-1]["who"] == f"operator ({LAN_IP})", changed


def test_a_cross_site_form_post_is_refused(stack: Stack) -> None:
    """A page from elsewhere, in the browser of an operator who is logged in, posts a form to
    switch remote access off: the browser sends it, the gateway refuses it."""
    with browser() as chromium:
        context = chromium.new_context(viewport=PANEL)
        page = context.new_page()
        page.goto(base(stack))
        page.get_by_label("Operator password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.get_by_text("Ready: remote support is possible").wait_for(timeout=WAIT_MS)
        evil = context.new_page()
        form = (
            f'<form method="post" action="{base(stack)}/api/access">'
            '<input name="mode" value="disabled"><button id="go">go</button></form>'
        )
        evil.route(
            "http://attacker.example/",
            lambda route: route.fulfill(status=200, content_type="text/html", body=form),
        )
        evil.goto("http://attacker.example/")
        with evil.expect_response(f"{base(stack)}/api/access", timeout=WAIT_MS) as answer:
            evil.click("#go")
        assert answer.value.status in (401, 403, 415), answer.value.status
        context.close()
    assert mode(stack) == "attended"
    assert not records_of(audit_records(stack, "gateway"), "mode.changed", new="disabled")


def test_wrong_passwords_lock_the_login_out(stack: Stack) -> None:
    statuses = [send(stack, "POST", "/api/login", {"password": f"guess {n}"})[0] for n in range(5)]
    assert statuses == [401, 401, 401, 401, 429], statuses
    status, headers, answer = send(stack, "POST", "/api/login", {"password": PASSWORD})
    assert status == 429, answer  # the right password too, while locked out
    assert int(headers["retry-after"]) > 0
    with browser() as chromium:
        page = chromium.new_page(viewport=PANEL)
        page.goto(base(stack))
        page.get_by_label("Operator password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        error = page.locator("#login-error")
        error.get_by_text("Too many wrong passwords").wait_for(timeout=WAIT_MS)
        assert page.locator("#panel").is_hidden()
    records = audit_records(stack, "gateway")
    assert len(records_of(records, "operator.login_failed")) >= 5
    assert records_of(records, "operator.locked_out", who=f"operator ({LAN_IP})")


def test_the_page_over_https_with_the_plants_certificate(stack: Stack) -> None:
    """``[status] cert``/``key``: a certificate for the page's address from the test CA, checked
    by the client as a browser would (CA pinned, name checked); the cookie is then Secure."""
    pki = stack.pki
    cert, key = stack.workdir / "status.pem", stack.workdir / "status.key"
    issue_relay_certificate(pki.ca_cert, pki.ca_key, cert, key, names=[LAN_IP])
    config = stack.layout.gateway_config
    text = config.read_text()
    listen = f'listen = "{LAN_IP}:{stack.ports["status"]}"'
    config.write_text(text.replace(listen, f'{listen}\ncert = "{cert}"\nkey = "{key}"'))
    stack.procs["gateway"].stop()  # also forgets the lockout of the test before
    gateway = stack.start_gateway(wait_up=False)
    tls = ssl.create_default_context(cafile=str(pki.ca_cert))
    wait_until("the page over HTTPS", lambda: https_answers(stack, tls), proc=gateway)
    status, headers, answer = send(stack, "POST", "/api/login", {"password": PASSWORD}, tls=tls)
    assert status == 200, answer
    cookie = [p.strip().lower() for p in headers["set-cookie"].split(";")]
    assert {"secure", "httponly", "samesite=strict"} <= set(cookie), cookie
    with pytest.raises((http.client.HTTPException, OSError)):
        send(stack, "GET", "/api/auth")  # plain HTTP on the HTTPS port gets no page


def https_answers(stack: Stack, tls: ssl.SSLContext) -> bool:
    try:
        return send(stack, "GET", "/api/auth", tls=tls)[0] == 200
    except (OSError, http.client.HTTPException):
        return False
