"""The engineers' portal in a real browser (issue 20): log in, open the processor's page on its
own origin through relay, tunnel and gateway, see its WebSocket echo live, download 100 MiB
byte-exact, a wrong password refused and counted, and no portal cookie reaching the processor.

Real relay, gateway and demo processor processes on loopback, unattended; headless Chromium
(Debian's) through Playwright.  The portal has its own certificate from the test CA for
``portal.localhost`` and ``*.portal.localhost`` (Chromium resolves ``*.localhost`` to loopback);
Chromium is given that certificate's key as a pin (``--ignore-certificate-errors-spki-list``),
which accepts exactly this certificate and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import playwright.sync_api as playwright_sync
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.config import parse_address
from gateway.demo.stack import free_port, processor_args
from gateway.pki import issue_relay_certificate
from gateway.relay.credentials import add_engineer
from tests.helpers.browser import artifact
from tests.helpers.consent import audit_records, control_json
from tests.helpers.processes import Stack, fresh_stack, start, wait_until

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
GROUP_HOST = "127.0.0.3"
DOMAIN = "portal.localhost"
PASSWORD = "correct horse battery"
TIMEOUT_MS = 20_000
DOWNLOAD = 100 * 1024 * 1024


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def spki_pin(cert: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)): Chromium's form of a certificate key pin."""
    public = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class Portal:
    def __init__(self, stack: Stack, port: int, pin: str, tom_secret: str) -> None:
        self.stack, self.port, self.pin = stack, port, pin
        self.tom_secret = tom_secret
        self.group_ports = (0, 0)

    @property
    def url(self) -> str:
        return f"https://{DOMAIN}:{self.port}/"

    def target_url(self, target: str = "web") -> str:
        return f"https://{target}--{self.stack.gateway_id}.{DOMAIN}:{self.port}/"


@pytest.fixture(scope="module")
def portal() -> Iterator[Portal]:
    assert Path(CHROMIUM).exists(), "Debian's chromium: scripts/test.sh installs it"
    with fresh_stack() as stack:
        pki = stack.pki
        cert, key = pki.directory / "portal.pem", pki.directory / "portal.key"
        issue_relay_certificate(pki.ca_cert, pki.ca_key, cert, key, names=[DOMAIN, f"*.{DOMAIN}"])
        port = free_port()
        # A processor with one UI on two ports (a target group), on 127.0.0.3 so that the
        # portal can serve the group at the same port numbers on 127.0.0.1.
        ui_port, ws_port = free_port(), free_port()
        for name, member_port in (("ui", ui_port), ("ws", ws_port)):
            stack.procs[name] = start(
                name,
                processor_args(parse_address(f"{GROUP_HOST}:{member_port}")),
                stack.workdir,
            )
        stack.layout.gateway_config.write_text(
            stack.layout.gateway_config.read_text()
            + f'\n[[target]]\nname = "ui"\naddress = "{GROUP_HOST}:{ui_port}"\nkind = "http"\n'
            + f'\n[[target]]\nname = "ws"\naddress = "{GROUP_HOST}:{ws_port}"\nkind = "http"\n'
            + '\n[[target_group]]\nname = "pickit"\nmembers = ["ui", "ws"]\n'
        )
        config = stack.layout.relay_config
        config.write_text(
            config.read_text()
            + f'\n[portal]\nlisten = "127.0.0.1:{port}"\ndomain = "{DOMAIN}"\n'
            + f'cert = "{cert}"\nkey = "{key}"\nextra_ports = [{ui_port}, {ws_port}]\n'
        )
        subprocess.run(
            [sys.executable, "-m", "gateway", "relay", "set-password", "erin", "-c", str(config)],
            input=PASSWORD + "\n",
            text=True,
            check=True,
            timeout=30,
        )
        # tom has a second factor too
        add_engineer(stack.layout.engineers, "tom", gateways=[stack.gateway_id])
        relay = [sys.executable, "-m", "gateway", "relay"]
        subprocess.run(
            [*relay, "set-password", "tom", "-c", str(config)],
            input=PASSWORD + "\n",
            text=True,
            check=True,
            timeout=30,
        )
        enrolled = subprocess.run(
            [*relay, "set-totp", "tom", "-c", str(config)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        uri = next(line for line in enrolled.stdout.splitlines() if line.startswith("otpauth://"))
        stack.start_processor()
        stack.start_relay()
        stack.start_gateway()
        wait_until(
            "the group's processors",
            lambda: _answers(GROUP_HOST, ui_port) and _answers(GROUP_HOST, ws_port),
        )
        portal = Portal(stack, port, spki_pin(cert), parse_qs(urlsplit(uri).query)["secret"][0])
        portal.group_ports = (ui_port, ws_port)
        yield portal


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    """One Playwright per module: its sync API cannot run twice at once."""
    with playwright_sync.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Any, portal: Portal) -> Iterator[object]:
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[f"--ignore-certificate-errors-spki-list={portal.pin}"],
    )
    try:
        yield browser
    finally:
        browser.close()


def log_in(
    browser: object, portal: Portal, password: str = PASSWORD, name: str = "erin", code: str = ""
) -> object:
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(portal.url)
    page.fill("#name", name)
    page.fill("#password", password)
    if code:
        page.fill("#code", code)
    page.click("#login")
    return page


def test_a_target_groups_page_opens_a_websocket_to_another_of_its_ports_by_host_name(
    browser: object, portal: Portal
) -> None:
    """The group ``pickit`` (members ``ui`` and ``ws``, each its own port) on one host name:
    its page, from the portal's own port, reaches the ``ws`` member at that member's port
    number on the same host name, and the group's page answers on the ``ui`` member's."""
    ui_port, ws_port = portal.group_ports
    page = log_in(browser, portal)
    card = f"#gw-{portal.stack.gateway_id}"
    page.wait_for_selector(f"{card} a.open[data-target=pickit]")  # type: ignore[attr-defined]
    with page.context.expect_page() as opened:  # type: ignore[attr-defined]
        page.click(f"{card} a.open[data-target=pickit]")  # type: ignore[attr-defined]
    target = opened.value
    target.set_default_timeout(TIMEOUT_MS)
    target.wait_for_load_state()
    assert target.url == portal.target_url("pickit")
    echoed = target.evaluate(
        """(port) => new Promise((resolve, reject) => {
          const ws = new WebSocket('wss://' + location.hostname + ':' + port + '/ws');
          ws.onopen = () => ws.send('across ports');
          ws.onmessage = (e) => { resolve(e.data); ws.close(); };
          ws.onerror = () => reject(new Error('websocket failed'));
        })""",
        ws_port,
    )
    assert echoed == "across ports"
    # The ui member at its own port number, on the same host name, with the same pass.
    member_url = f"https://pickit--{portal.stack.gateway_id}.{DOMAIN}:{ui_port}/"
    target.goto(member_url)
    assert target.url == member_url
    target.wait_for_function("Number(document.getElementById('count').textContent) >= 1")
    page.context.close()  # type: ignore[attr-defined]


def test_a_missing_or_wrong_second_factor_is_refused_and_the_right_one_logs_in(
    browser: object, portal: Portal
) -> None:
    import pyotp

    metric = 'relay_auth_failures_total{kind="portal_totp"}'
    before = portal.stack.relay_metric(metric) or 0.0
    for code in ("", "000000"):
        page = log_in(browser, portal, name="tom", code=code)
        page.wait_for_selector("#problem")  # type: ignore[attr-defined]
        assert "second-factor code" in page.inner_text("#problem")  # type: ignore[attr-defined]
        page.context.close()  # type: ignore[attr-defined]
    assert portal.stack.relay_metric(metric) == before + 2
    page = log_in(browser, portal, name="tom", code=pyotp.TOTP(portal.tom_secret).now())
    page.wait_for_selector("#who, #problem")  # type: ignore[attr-defined]
    assert page.query_selector("#problem") is None, page.inner_text("#problem")  # type: ignore[attr-defined]
    page.wait_for_selector("#who")  # type: ignore[attr-defined]
    assert page.inner_text("#who") == "tom"  # type: ignore[attr-defined]
    page.context.close()  # type: ignore[attr-defined]


def test_a_wrong_password_is_refused_and_counted(browser: object, portal: Portal) -> None:
    before = portal.stack.relay_metric('relay_auth_failures_total{kind="portal_password"}') or 0.0
    page = log_in(browser, portal, password="not the password")
    page.wait_for_selector("#problem")  # type: ignore[attr-defined]
    assert "wrong engineer name or password" in page.inner_text("#problem")  # type: ignore[attr-defined]
    assert page.query_selector("#who") is None  # type: ignore[attr-defined]
    after = portal.stack.relay_metric('relay_auth_failures_total{kind="portal_password"}')
    assert after == before + 1
    page.context.close()  # type: ignore[attr-defined]


def test_the_portal_lists_the_gateway_and_opens_its_page_with_a_live_websocket(
    browser: object, portal: Portal
) -> None:
    page = log_in(browser, portal)
    page.wait_for_selector("#who")  # type: ignore[attr-defined]
    card = f"#gw-{portal.stack.gateway_id}"
    page.wait_for_selector(f"{card} a.open[data-target=web]")  # type: ignore[attr-defined]
    assert page.inner_text(f"{card} .mode") == "unattended"  # type: ignore[attr-defined]
    with page.context.expect_page() as opened:  # type: ignore[attr-defined]
        page.click(f"{card} a.open[data-target=web]")  # type: ignore[attr-defined]
    target = opened.value
    target.set_default_timeout(TIMEOUT_MS)
    target.wait_for_load_state()
    assert target.url == portal.target_url()
    target.wait_for_function("Number(document.getElementById('count').textContent) >= 2")
    state = target.inner_text("#state")
    assert state.strip().lower() == "connected", state
    page.context.close()  # type: ignore[attr-defined]


def test_100_mib_download_arrives_byte_exact(browser: object, portal: Portal) -> None:
    page = log_in(browser, portal)
    page.wait_for_selector("#who")  # type: ignore[attr-defined]
    with page.context.expect_page() as opened:  # type: ignore[attr-defined]
        page.click(f"#gw-{portal.stack.gateway_id} a.open[data-target=web]")  # type: ignore[attr-defined]
    target = opened.value
    target.wait_for_load_state()
    result = target.evaluate(
        """async (size) => {
          const r = await fetch('/download?size=' + size, {cache: 'no-store'});
          const reader = r.body.getReader();
          let at = 0, wrong = -1;
          for (;;) {
            const {done, value} = await reader.read();
            if (done) break;
            for (let i = 0; i < value.length && wrong < 0; i++) {
              if (value[i] !== (at + i) % 251) wrong = at + i;
            }
            at += value.length;
          }
          return {status: r.status, bytes: at, wrong: wrong};
        }""",
        DOWNLOAD,
    )
    assert result == {"status": 200, "bytes": DOWNLOAD, "wrong": -1}
    page.context.close()  # type: ignore[attr-defined]


def test_no_portal_cookie_or_credential_reaches_the_processor(
    browser: object, portal: Portal
) -> None:
    page = log_in(browser, portal)
    page.wait_for_selector("#who")  # type: ignore[attr-defined]
    with page.context.expect_page() as opened:  # type: ignore[attr-defined]
        page.click(f"#gw-{portal.stack.gateway_id} a.open[data-target=web]")  # type: ignore[attr-defined]
    target = opened.value
    target.wait_for_load_state()
    cookies = {c["name"] for c in page.context.cookies()}  # type: ignore[attr-defined]
    assert {"__Host-portal", "__Host-portal-pass"} <= cookies, cookies
    seen = target.evaluate(
        """async () => {
          document.cookie = 'processor_own=kept; path=/; secure';
          const r = await fetch('/headers', {headers: {'Authorization': 'Bearer leak'}});
          return await r.json();
        }"""
    )
    text = str(seen).lower()
    assert "__host-portal" not in text, seen
    assert "leak" not in text, seen
    assert "processor_own=kept" in text, seen
    headers = {k.lower(): v for k, v in seen.items()}
    assert headers.get("x-forwarded-proto") == "https", seen
    assert headers.get("x-forwarded-host", "").startswith(f"web--{portal.stack.gateway_id}."), seen
    page.context.close()  # type: ignore[attr-defined]


def test_in_attended_mode_the_portals_request_is_approved_by_the_plant_and_ended_by_it(
    browser: object, portal: Portal
) -> None:
    """Plant staff act on the gateway's status page only: Approve lets the portal's page open;
    End closes that page's WebSocket, and the page is the portal's notice from then on.

    It switches the gateway to attended and back."""
    stack = portal.stack
    card = f"#gw-{stack.gateway_id}"
    control_json(stack, "access", "attended")
    status = browser.new_context()  # type: ignore[attr-defined]
    try:
        plant = status.new_page()
        plant.set_default_timeout(TIMEOUT_MS)
        plant.goto(stack.url("status"))
        page = log_in(browser, portal)
        page.wait_for_selector(f"{card}[data-mode=attended]")  # type: ignore[attr-defined]
        page.fill(f"{card} .reason", "ticket 4711: camera drifts")  # type: ignore[attr-defined]
        page.click(f"{card} .request")  # type: ignore[attr-defined]
        page.wait_for_selector(f"{card} .state:has-text('Waiting for the plant')")  # type: ignore[attr-defined]
        # The request shows on the status page, live; staff approve it there.
        request = plant.locator("article.request", has_text="erin asks to connect")
        request.wait_for()
        assert "ticket 4711: camera drifts" in request.inner_text()
        request.get_by_label("For how long").select_option("30")
        request.get_by_role("button", name="Approve").click()
        request.wait_for(state="detached")
        # The portal's page polls: the approval shows without a reload.
        page.wait_for_selector(f"{card} .state:has-text('approved')")  # type: ignore[attr-defined]
        assert "min left" in page.inner_text(f"{card} .state")  # type: ignore[attr-defined]
        approved = [r for r in audit_records(stack, "gateway") if r["event"] == "session.approved"]
        assert approved and "status page" in approved[-1]["who"], approved
        with page.context.expect_page() as opened:  # type: ignore[attr-defined]
            page.click(f"{card} a.open[data-target=web]")  # type: ignore[attr-defined]
        target = opened.value
        target.set_default_timeout(TIMEOUT_MS)
        target.wait_for_load_state()
        target.wait_for_function("Number(document.getElementById('count').textContent) >= 2")
        assert target.inner_text("#state").strip() == "connected"
        # The plant ends it on the status page: the open page's WebSocket closes, and the page
        # is the portal's notice from then on.
        session = plant.locator("article.session", has_text="erin")
        session.wait_for()
        session.get_by_role("button", name="End this session").click()
        target.wait_for_function(
            "document.getElementById('state').textContent.trim() !== 'connected'"
        )
        page.wait_for_selector(f"{card} .state:has-text('Session ended')")  # type: ignore[attr-defined]
        plant.get_by_text("Nobody is connected.").wait_for()
        target.reload()
        notice = target.inner_text("#notice")
        assert "ended by the plant" in notice, target.content()
        target.screenshot(path=str(artifact("portal-session-ended-notice.png")))
        page.context.close()  # type: ignore[attr-defined]
    finally:
        status.close()
        control_json(stack, "access", "unattended")


def test_in_attended_mode_a_code_read_out_on_the_phone_opens_the_session(
    browser: object, portal: Portal
) -> None:
    stack = portal.stack
    card = f"#gw-{stack.gateway_id}"
    control_json(stack, "access", "attended")
    try:
        code = str(control_json(stack, "code", "--minutes", "15")["code"])
        page = log_in(browser, portal)
        page.wait_for_selector(f"{card}[data-mode=attended]")  # type: ignore[attr-defined]
        page.fill(f"{card} .code", code)  # type: ignore[attr-defined]
        page.click(f"{card} .use-code")  # type: ignore[attr-defined]
        page.wait_for_selector(f"{card} .state:has-text('approved')")  # type: ignore[attr-defined]
        (live,) = [s for s in stack.status()["sessions"] if s["engineer"] == "erin"]
        assert live["id"] in page.inner_text(f"{card} .state")  # type: ignore[attr-defined]
        with page.context.expect_page() as opened:  # type: ignore[attr-defined]
            page.click(f"{card} a.open[data-target=web]")  # type: ignore[attr-defined]
        target = opened.value
        target.set_default_timeout(TIMEOUT_MS)
        target.wait_for_load_state()
        target.wait_for_function("Number(document.getElementById('count').textContent) >= 1")
        # End lets go of it: the engineer's open pages lose their connections at once.
        page.bring_to_front()  # type: ignore[attr-defined]
        page.click(f"{card} .end")  # type: ignore[attr-defined]
        target.wait_for_function(
            "document.getElementById('state').textContent.trim() !== 'connected'"
        )
        page.context.close()  # type: ignore[attr-defined]
    finally:
        control_json(stack, "access", "unattended")


def test_gateway_demo_starts_the_portal_and_its_login_opens_a_target_link_directly(
    playwright: Any,
) -> None:
    """``gateway demo`` prints the portal and a login; demo.json has portal_url, portal_login
    and portal_target_urls.  A target's link opened before logging in goes through the login
    and lands on the processor's page."""
    import shutil
    import tempfile

    from tests.e2e.test_demo import children, start_demo, stop, wait_for_demo

    assert Path(CHROMIUM).exists(), "Debian's chromium: scripts/test.sh installs it"
    base = Path(tempfile.mkdtemp(prefix="gateway-demo-portal-"))
    process, output = start_demo(base / "work")
    kids: dict[int, int] = {}
    try:
        demo = wait_for_demo(process, base / "work", output)
        kids = children(process.pid)
        info = demo.info
        assert info["portal_url"].startswith("https://portal.localhost:"), info
        login = info["portal_login"]
        assert login["name"] == "demo-engineer" and login["password"], info
        target_url = info["portal_target_urls"]["web"]
        assert target_url.startswith("https://web--demo-gateway.portal.localhost:"), info
        assert info["portal_url"] in output.read_text()
        pin = spki_pin(demo.workdir / "portal.pem")
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=[f"--ignore-certificate-errors-spki-list={pin}"]
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(target_url)
            page.fill("#name", login["name"])
            page.fill("#password", login["password"])
            page.click("#login")
            page.wait_for_url(target_url)
            page.wait_for_function("Number(document.getElementById('count').textContent) >= 1")
            # The demo's target group: its page's WebSocket goes to the group's other port by
            # the page's own host name, through the portal.
            group_url = info["portal_target_urls"]["pickit"]
            page.goto(group_url)
            page.wait_for_function("Number(document.getElementById('count').textContent) >= 1")
            endpoint = page.inner_text("#endpoint")
            assert endpoint.startswith("wss://pickit--demo-gateway.portal.localhost:"), endpoint
            assert endpoint != group_url.replace("https:", "wss:") + "ws", endpoint
            # The demo's second login has a second factor.
            import pyotp

            second = info["portal_login_totp"]
            assert second["totp_uri"].startswith("otpauth://totp/"), second
            page = browser.new_context().new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(info["portal_url"])
            page.fill("#name", second["name"])
            page.fill("#password", second["password"])
            page.click("#login")
            assert "second-factor code" in page.inner_text("#problem")
            page.fill("#name", second["name"])
            page.fill("#password", second["password"])
            page.fill("#code", pyotp.TOTP(second["totp_secret"]).now())
            page.click("#login")
            assert page.inner_text("#who") == second["name"]
        finally:
            browser.close()
    finally:
        stop(process, kids)
        shutil.rmtree(base, ignore_errors=True)
