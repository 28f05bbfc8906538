"""The status page in a real browser (headless Chromium), on loopback, driving a real stack.

Demo processor, relay, gateway (attended) and ``gateway connect`` clients are separate processes;
plant staff act only through the page: they approve a request made with ``--reason``, watch the
connection and its bytes, end the session, create a code, switch access off, and see the page
say so when the gateway stops answering.  Screenshots at panel and phone size, with a pending
request and a live connection, go to ``artifacts/``; axe-core audits the page there too.

One stack and one browser page serve the module, in order.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from attrs import define

from gateway.cli.control import CONTROL_SOCKET
from tests.helpers.browser import PANEL, PHONE, artifact, axe_serious, browser, overflows
from tests.helpers.consent import (
    Download,
    add_engineer,
    audit_records,
    control_json,
    finished,
    records_of,
    told,
)
from tests.helpers.processes import Proc, Stack, fresh_stack, port_open, wait_until

pytestmark = pytest.mark.e2e

STOP_WITHIN = 1.0
APPEAR_WITHIN = 2.0
WAIT_MS = 15_000
"""Playwright waits (milliseconds) for things that have no tighter bound."""


@define
class Site:
    stack: Stack
    page: Any
    tokens: dict[str, str]
    clients: list[Proc]
    errors: list[str]

    def connect(self, engineer: str, *extra: str, port_key: str = "forward") -> Proc:
        proc = self.stack.start_connect(
            f"connect-{engineer}-{len(self.clients)}",
            token=self.tokens[engineer],
            port_key=port_key,
            extra=extra,
            wait_listening=False,
        )
        self.clients.append(proc)
        return proc


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with fresh_stack() as stack:
        stack.write_configs(mode="attended", access={"request_timeout": 120})
        tokens = {"erin": stack.token, "ed": add_engineer(stack, "ed", stack.gateway_id)}
        stack.start_processor()
        stack.start_relay()
        stack.start_gateway()
        socket = stack.layout.gateway_state / CONTROL_SOCKET
        wait_until("the control socket", socket.exists, proc=stack.procs["gateway"])
        with browser() as chromium:
            context = chromium.new_context(viewport=PANEL)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(stack.url("status"))
            yield Site(stack, page, tokens, [], errors)
            context.close()
            assert not errors, errors


def let_in(proc: Proc) -> None:
    wait_until(
        "the plant to let the engineer in",
        lambda: any("the plant let you in" in line for line in told(proc)),
        proc=proc,
        deadline=20,
    )


def pressed(page: Any, mode: str) -> bool:
    """Whether the page shows ``mode`` as the current access mode."""
    return bool(page.locator(f"#mode-{mode}").get_attribute("aria-pressed") == "true")


def from_target(site: Site) -> int:
    value = site.page.locator("li.connection").first.get_attribute("data-from-target")
    return int(value or 0)


def test_the_page_shows_the_tunnel_up(site: Site) -> None:
    page = site.page
    page.get_by_text("Ready: remote support is possible").wait_for(timeout=WAIT_MS)
    assert page.locator("#gateway-id").inner_text() == "e2e-gateway"
    assert pressed(page, "attended")
    assert page.title() == "e2e-gateway: nobody connected"
    assert page.locator("#favicon").get_attribute("href") == "/favicon.svg"
    assert page.get_by_text("Nobody is connected.").is_visible()
    assert page.locator("#link-state").inner_text() == "Live"  # through /api/events


def test_a_request_appears_and_approve_lets_the_engineer_in(site: Site) -> None:
    page = site.page
    proc = site.connect("erin", "--reason", "PLC 3 stops after the tool change")
    card = page.locator("article.request", has_text="erin asks to connect")
    card.wait_for(timeout=WAIT_MS)
    assert "PLC 3 stops after the tool change" in card.inner_text()
    card.get_by_label("For how long").select_option("30")
    card.get_by_role("button", name="Approve").click()
    let_in(proc)
    wait_until("the forward", lambda: port_open(site.stack.ports["forward"]), proc=proc)
    card.wait_for(state="detached", timeout=WAIT_MS)
    session = page.locator("article.session", has_text="erin")
    session.wait_for(timeout=WAIT_MS)
    approved = records_of(audit_records(site.stack, "gateway"), "session.approved")
    assert approved and "status page" in approved[-1]["who"], approved
    assert "127.0.0.1" in approved[-1]["who"], approved


def test_a_connection_appears_and_its_bytes_grow_without_a_reload(site: Site) -> None:
    page = site.page
    pending = site.connect("ed", "--reason", "firmware update check", port_key="forward2")
    page.locator("article.request", has_text="ed asks to connect").wait_for(timeout=WAIT_MS)
    download = Download(site.stack.ports["forward"]).start()
    started = time.monotonic()
    try:
        page.locator("li.connection").first.wait_for(timeout=APPEAR_WITHIN * 1000 + 500)
        took = time.monotonic() - started
        assert took <= APPEAR_WITHIN, f"the connection showed after {took:.2f}s"
        wait_until("bytes on the page", lambda: from_target(site) > 0, deadline=5)
        first = from_target(site)
        wait_until("the counter to grow", lambda: from_target(site) > first, deadline=5)
        assert page.title() == "1 remote connection · e2e-gateway"
        assert page.locator("#favicon").get_attribute("href") == "/favicon-live.svg"
        shown = page.locator("li.connection .bytes").first.inner_text()
        assert re.search(r"Received by engineer: [\d.]+ (kB|MB|GB)", shown), shown

        # What operators see, at panel and at phone size: screenshots, no sideways scrolling,
        # and axe-core finds nothing serious.
        for name, size in (("panel", PANEL), ("phone", PHONE)):
            page.set_viewport_size(size)
            page.wait_for_timeout(300)
            assert not overflows(page), f"the page scrolls sideways at {name} size"
            page.screenshot(path=str(artifact(f"status-page-{name}.png")), full_page=True)
            serious = axe_serious(page)
            assert not serious, [(v["id"], v["help"], len(v["nodes"])) for v in serious]
        page.set_viewport_size(PANEL)
    finally:
        download.close()

    # Deny the other request with a reason, by keyboard alone.
    card = page.locator("article.request", has_text="ed asks to connect")
    card.get_by_label("Reason for saying no (optional)").fill("not today, call first")
    card.get_by_role("button", name="Deny").focus()
    page.keyboard.press("Enter")
    code, lines = finished(pending)
    assert code != 0 and any("not today, call first" in line for line in lines), lines


def test_end_stops_a_download_within_a_second(site: Site) -> None:
    page = site.page
    download = Download(site.stack.ports["forward"]).start()
    try:
        download.wait_flowing(at_least=4 << 20)
        page.locator("li.connection").first.wait_for(timeout=WAIT_MS)
        clicked = time.time()
        page.locator("article.session", has_text="erin").get_by_role(
            "button", name="End this session"
        ).click()
        download.wait_ended(deadline=5)
        assert download.last_byte is not None
        assert download.last_byte - clicked <= STOP_WITHIN, download.last_byte - clicked
    finally:
        download.close()
    page.get_by_text("Nobody is connected.").wait_for(timeout=WAIT_MS)
    _, lines = finished(site.clients[0])
    assert any("ended" in line for line in lines), lines
    wait_until("the title", lambda: page.title() == "e2e-gateway: nobody connected", deadline=5)


def test_a_code_made_on_the_page_lets_an_engineer_in(site: Site) -> None:
    page = site.page
    page.locator("#code-button").focus()
    page.keyboard.press("Enter")
    shown = page.locator("#code-value")
    shown.wait_for(timeout=WAIT_MS)
    code = shown.inner_text().replace(" ", "")
    assert re.fullmatch(r"\d{6}", code), code
    countdown = page.locator("#code-countdown").inner_text()
    assert re.search(r"It works once, for (10:00|9:[0-5]\d) more", countdown), countdown
    proc = site.connect("erin", "--code", code)
    let_in(proc)
    wait_until("the forward", lambda: port_open(site.stack.ports["forward"]), proc=proc)
    session = page.locator("article.session", has_text="erin")
    session.wait_for(timeout=WAIT_MS)
    events = page.locator("#events li", has_text="used a session code")
    try:
        events.first.wait_for(timeout=WAIT_MS)
    except Exception:
        raise AssertionError((site.errors, page.locator("#events").inner_text())) from None
    assert "erin" in events.first.inner_text(), site.stack.status()["recent_events"]
    assert "Came in with a session code made by" in session.inner_text()
    # Nothing else on the page shows the code, not even its first digits.
    elsewhere = page.evaluate(
        "() => { const p = document.getElementById('panel').cloneNode(true);"
        " p.querySelector('#code-shown').remove(); return p.textContent; }"
    )
    assert code not in elsewhere and f"{code[:3]}..." not in elsewhere, elsewhere


def test_switching_access_off_cuts_live_streams(site: Site) -> None:
    page = site.page
    download = Download(site.stack.ports["forward"]).start()
    try:
        download.wait_flowing(at_least=4 << 20)
        page.locator("li.connection").first.wait_for(timeout=WAIT_MS)
        clicked = time.time()
        page.get_by_role("button", name="Switch remote access off").click()
        download.wait_ended(deadline=5)
        assert download.last_byte is not None
        assert download.last_byte - clicked <= STOP_WITHIN, download.last_byte - clicked
    finally:
        download.close()
    wait_until("the switch", lambda: pressed(page, "disabled"), deadline=5)
    page.get_by_text("Nobody is connected.").wait_for(timeout=WAIT_MS)
    changed = records_of(audit_records(site.stack, "gateway"), "mode.changed", new="disabled")
    assert changed and "status page" in changed[-1]["who"], changed
    # Back on, with the switch.
    page.get_by_role("button", name=re.compile("^Ask me")).click()
    wait_until("attended again", lambda: site.stack.status()["access"]["mode"] == "attended")


def test_without_the_event_stream_the_page_polls_and_stays_current(site: Site) -> None:
    """A proxy that cuts server-sent events, or too many pages open: /api/status is polled."""
    page = site.page.context.new_page()
    page.route("**/api/events", lambda route: route.abort())
    try:
        page.goto(site.stack.url("status"))
        page.get_by_text("Ready: remote support is possible").wait_for(timeout=WAIT_MS)
        assert page.locator("#link-state").inner_text() == "Updating every few seconds"
        assert control_json(site.stack, "access", "unattended")["mode"] == "unattended"
        wait_until("the change", lambda: pressed(page, "unattended"), deadline=6)
        assert control_json(site.stack, "access", "attended")["mode"] == "attended"
    finally:
        page.close()


def test_the_page_says_when_remote_support_is_not_possible(site: Site) -> None:
    page = site.page
    site.stack.procs["relay"].stop()
    page.get_by_text("Not connected: remote support is not possible right now").wait_for(
        timeout=WAIT_MS
    )
    assert page.locator("#tunnel-state.down").is_visible()
    page.wait_for_timeout(500)
    page.screenshot(path=str(artifact("status-page-tunnel-down.png")))


def test_the_page_says_when_the_gateway_stops_answering(site: Site) -> None:
    page = site.page
    site.stack.procs["gateway"].stop()
    page.locator("#lost").wait_for(state="visible", timeout=WAIT_MS)
    assert "cannot reach the gateway" in page.locator("#lost").inner_text()
    assert page.locator("#link-state").inner_text() == "Connection to the gateway lost"
