"""View or control, end to end: what a view-only session lets through, and switching it in place.

Real processes on loopback (demo processor, relay, gateway, ``gateway connect``), the demo
processor behind two ``http`` targets: ``web`` (view-only sessions get no WebSocket) and
``live`` (``view_websocket = true``).  A browser is stood in for by ``http.client`` on one
keep-alive connection, so that "the connection carries on" is seen on the same socket; plant
staff act with ``gateway approve``; the record is read back with ``gateway audit``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from attrs import define

from gateway.cli.control import CONTROL_SOCKET
from tests.helpers.consent import (
    add_engineer,
    audit_records,
    control,
    control_json,
    records_of,
    told,
)
from tests.helpers.processes import Proc, Stack, fresh_stack, port_open, wait_until

pytestmark = pytest.mark.e2e

TIMEOUT = 15.0
LIVE_TARGET = """
[[target]]
name = "live"
address = "127.0.0.1:{port}"
kind = "http"
view_websocket = true
"""


@define
class Site:
    stack: Stack
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with fresh_stack() as stack:
        stack.write_configs(
            mode="attended", extra_targets=LIVE_TARGET.format(port=stack.ports["processor"])
        )
        tokens = {"erin": stack.token, "ed": add_engineer(stack, "ed", stack.gateway_id)}
        stack.start_processor()
        stack.start_relay()
        stack.start_gateway()
        socket_path = stack.layout.gateway_state / CONTROL_SOCKET
        wait_until("the control socket", socket_path.exists, proc=stack.procs["gateway"])
        yield Site(stack, tokens)


def view_session(site: Site, engineer: str, target: str, port_key: str) -> tuple[Proc, str]:
    """A ``gateway connect`` of ``engineer`` to ``target``, let in view-only: (client, session)."""
    stack = site.stack
    proc = stack.start_connect(
        f"connect-{engineer}-{target}",
        target=target,
        token=site.tokens[engineer],
        port_key=port_key,
        extra=("--reason", f"ticket 4720: look at {target}"),
        wait_listening=False,
    )
    found: list[dict[str, Any]] = []

    def asked() -> bool:
        found[:] = [r for r in control_json(stack, "requests") if r["engineer"] == engineer]
        return bool(found)

    wait_until(f"a request by {engineer}", asked, deadline=TIMEOUT, proc=proc)
    session = control_json(stack, "approve", found[0]["id"], "--view", "--target", target)
    assert session["permission"] == "view", session
    return proc, str(session["id"])


def read_all(response: http.client.HTTPResponse) -> tuple[int, bytes]:
    return response.status, response.read()


def websocket_handshake(port: int, path: str = "/ws") -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET %s HTTP/1.1\r\nHost: processor\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), key)
    )
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            break
        head += data
    return sock, head


def masked_text(text: bytes) -> bytes:
    mask = os.urandom(4)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    return bytes([0x81, 0x80 | len(text)]) + mask + payload


def test_view_then_full_on_one_keep_alive_connection(site: Site) -> None:
    stack = site.stack
    proc, session = view_session(site, "erin", "web", "forward")
    wait_until("the forward", lambda: port_open(stack.ports["forward"]), deadline=TIMEOUT)
    browser = http.client.HTTPConnection("127.0.0.1", stack.ports["forward"], timeout=TIMEOUT)
    try:
        browser.request("GET", "/?line=2")
        status, page = read_all(browser.getresponse())
        assert status == 200 and b"/ws" in page, (status, page[:200])
        first_socket = browser.sock

        body = b"new recipe " * 100
        browser.request("POST", "/upload", body=body, headers={"Accept": "application/json"})
        response = browser.getresponse()
        status, answer = read_all(response)
        assert status == 403, (status, answer)
        assert response.getheader("x-gateway-refused") == "view-only"
        refusal = json.loads(answer)
        assert "granted view-only access" in refusal["reason"], refusal

        browser.request("GET", "/")
        status, page = read_all(browser.getresponse())
        assert status == 200 and b"/ws" in page
        assert browser.sock is first_socket, "the connection did not carry on"

        switched = control_json(stack, "approve", "--session", session, "--full")
        assert (switched["permission"], switched["previous"]) == ("full", "view"), switched
        browser.request("POST", "/upload", body=body)
        status, answer = read_all(browser.getresponse())
        assert status == 200, (status, answer)
        assert json.loads(answer)["bytes"] == len(body), answer
        assert browser.sock is first_socket, "the switch needed a new connection"
        wait_until(
            "the engineer told of the switch",
            lambda: any(f"changed session {session}" in line for line in told(proc)),
            deadline=TIMEOUT,
        )
        [line] = [line for line in told(proc) if f"changed session {session}" in line]
        assert line.endswith(": full control"), line
    finally:
        browser.close()

    def recorded() -> list[dict[str, Any]]:
        return records_of(audit_records(stack, "gateway"), "http.request", session=session)

    wait_until("four request records", lambda: len(recorded()) >= 4, deadline=TIMEOUT)
    seen = [(r["method"], r["path"], r["result"], r["status"]) for r in recorded()]
    assert seen == [
        ("GET", "/?line=", "forwarded", 200),
        ("POST", "/upload", "refused", 403),
        ("GET", "/", "forwarded", 200),
        ("POST", "/upload", "forwarded", 200),
    ], seen
    assert all(r["who"] == "erin" and r["target"] == "web" for r in recorded())
    [changed] = records_of(audit_records(stack, "gateway"), "session.changed", session=session)
    assert (changed["previous"], changed["permission"]) == ("view", "full"), changed
    assert "control socket" in changed["who"], changed

    [live] = [s for s in stack.status()["sessions"] if s["id"] == session]
    assert live["permission"] == "full"
    assert live["target_access"] == {"web": "full"}, live
    assert [r["method"] for r in live["recent_requests"]] == ["GET", "POST", "GET", "POST"]

    shown = control(stack, "audit", "--session", session)
    assert shown.returncode == 0, shown.stderr
    assert "method=POST path=/upload" in shown.stdout and "refused" in shown.stdout
    control(stack, "end", session)
    proc.stop()


def test_view_websocket_governs_the_live_view(site: Site) -> None:
    stack = site.stack
    web, web_session = view_session(site, "erin", "web", "forward")
    live, live_session = view_session(site, "ed", "live", "forward2")
    try:
        wait_until("the forwards", lambda: port_open(stack.ports["forward2"]), deadline=TIMEOUT)
        sock, head = websocket_handshake(stack.ports["forward"])
        sock.close()
        assert head.startswith(b"HTTP/1.1 403 "), head
        assert b"x-gateway-refused: view-only" in head, head

        sock, head = websocket_handshake(stack.ports["forward2"])
        try:
            assert head.startswith(b"HTTP/1.1 101 "), head
            sock.sendall(masked_text(b"hello"))
            echo = b""
            while len(echo) < 7:
                data = sock.recv(4096)
                assert data, echo
                echo += data
            assert echo[:2] == b"\x81\x05" and echo[2:7] == b"hello", echo
        finally:
            sock.close()
        records = audit_records(stack, "gateway")
        [refused] = records_of(records, "http.request", session=web_session)
        assert (refused["method"], refused["path"], refused["result"]) == ("GET", "/ws", "refused")
        assert "view_websocket = false" in refused["why"], refused
        [taken] = records_of(records, "http.request", session=live_session)
        assert (taken["result"], taken["status"], taken["upgrade"]) == (
            "forwarded",
            101,
            "websocket",
        )
    finally:
        for session in (web_session, live_session):
            control(stack, "end", session)
        web.stop()
        live.stop()


def test_a_tcp_target_under_view_is_refused_with_the_reason(site: Site) -> None:
    stack = site.stack
    proc, session = view_session(site, "erin", "stopped", "forward3")
    try:
        wait_until("the forward", lambda: port_open(stack.ports["forward3"]), deadline=TIMEOUT)
        with socket.create_connection(("127.0.0.1", stack.ports["forward3"]), timeout=TIMEOUT):
            pass

        def refused() -> list[dict[str, Any]]:
            return records_of(
                audit_records(stack, "gateway"), "stream.refused", session=session, target="stopped"
            )

        wait_until("the refusal on record", lambda: bool(refused()), deadline=TIMEOUT)
        record = refused()[0]
        assert record["result"] == "permission-denied", record
        assert (
            "'stopped' is a tcp target: the gateway cannot tell reading from writing"
            in (record["reason"])
        ), record
        wait_until(
            "the engineer told why",
            lambda: any("is a tcp target" in line for line in told(proc)),
            deadline=TIMEOUT,
            proc=proc,
        )
    finally:
        control(stack, "end", session)
        proc.stop()


def test_one_target_of_a_session_is_switched_on_its_own(site: Site) -> None:
    """A session on web and live, view-only; full on live alone leaves web view-only, and
    `approve --session --full --target web` then lets web's next POST through."""
    stack = site.stack
    proc = stack.start_connect(
        "connect-erin-two",
        target="web",
        token=site.tokens["erin"],
        port_key="forward3",
        extra=("--reason", "ticket 4721: look at web and live"),
        wait_listening=False,
    )
    found: list[dict[str, Any]] = []

    def asked() -> bool:
        found[:] = [r for r in control_json(stack, "requests") if r["engineer"] == "erin"]
        return bool(found)

    wait_until("erin's request", asked, deadline=TIMEOUT, proc=proc)
    approved = control_json(
        stack, "approve", found[0]["id"], "--view", "--target", "web", "--target", "live"
    )
    session = str(approved["id"])
    try:
        wait_until("the forward", lambda: port_open(stack.ports["forward3"]), deadline=TIMEOUT)
        switched = control_json(
            stack, "approve", "--session", session, "--full", "--target", "live"
        )
        assert switched["target_permissions"] == {"web": "view", "live": "full"}, switched
        browser = http.client.HTTPConnection("127.0.0.1", stack.ports["forward3"], timeout=TIMEOUT)
        try:
            browser.request("POST", "/upload", body=b"recipe")
            status, answer = read_all(browser.getresponse())
            assert status == 403, (status, answer)  # web kept its view
            control_json(stack, "approve", "--session", session, "--full", "--target", "web")
            browser.request("POST", "/upload", body=b"recipe")
            status, answer = read_all(browser.getresponse())
            assert status == 200, (status, answer)
        finally:
            browser.close()
        [on_live, on_web] = records_of(
            audit_records(stack, "gateway"), "session.changed", session=session
        )
        assert (on_live["targets"], on_live["previous"]) == (["live"], "view"), on_live
        assert (on_web["targets"], on_web["permission"]) == (["web"], "full"), on_web
        wait_until(
            "the engineer told of the switch on web",
            lambda: any(
                f"changed session {session}" in line and " on web:" in line for line in told(proc)
            ),
            deadline=TIMEOUT,
        )
    finally:
        control(stack, "end", session)
        proc.stop()
