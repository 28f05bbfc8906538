"""``SIGHUP`` with real processes: the gateway takes a new allowlist and the relay a new engineer
without the tunnel dropping; a broken gateway.toml is refused in one line while the old one keeps
serving."""

from __future__ import annotations

import http.client
import signal
import socket
from collections.abc import Iterator
from datetime import datetime

import pytest
from cryptography import x509

from gateway.auditlog.files import audit_folder
from gateway.auditlog.reader import read_trail
from gateway.demo.stack import RELAY_NAMES
from gateway.pki import issue_gateway_certificate, issue_relay_certificate
from gateway.promtext import metric_value
from gateway.relay.credentials import add_engineer
from tests.helpers.clients import get
from tests.helpers.processes import (
    Stack,
    free_port,
    http_get,
    port_open,
    running_stack,
    wait_until,
)
from tests.helpers.rogue import tls_context

pytestmark = pytest.mark.e2e

WEB2 = """
[[target]]
name = "web2"
address = "127.0.0.1:{port}"
kind = "http"
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as s:
        yield s


def gateway_metric(stack: Stack, name: str, labels: dict[str, str] | None = None) -> float | None:
    return metric_value(http_get(stack.url("gw_metrics", "/metrics")).decode(), name, labels)


def connects(stack: Stack) -> tuple[float | None, float | None]:
    """The tunnel's connects as the gateway counts them, and the relay's count of gateways."""
    return (
        gateway_metric(stack, "gateway_tunnel_connects_total"),
        stack.relay_metric("relay_gateways_connected"),
    )


def reloads(stack: Stack, result: str) -> float:
    return gateway_metric(stack, "gateway_config_reloads_total", {"result": result}) or 0.0


def sighup(stack: Stack, name: str = "gateway") -> None:
    stack.procs[name].popen.send_signal(signal.SIGHUP)


def targets(stack: Stack) -> list[str]:
    return list(stack.status()["access"]["targets"])


def stream_count(stack: Stack, target: str) -> int:
    return sum(1 for c in stack.status()["connections"] if c["target"] == target)


def test_a_new_target_works_and_a_removed_one_is_refused_without_dropping_the_tunnel(
    stack: Stack,
) -> None:
    before = connects(stack)
    assert get(stack.ports["forward"], "/")[0] == 200
    stack.write_configs(extra_targets=WEB2.format(port=stack.ports["processor"]))
    sighup(stack)
    wait_until("web2 in the allowlist", lambda: "web2" in targets(stack))
    stack.start_connect("connect2", target="web2", port_key="forward2")
    assert get(stack.ports["forward2"], "/")[0] == 200

    # A live stream to web2 (a download that the reader does not drain) ends with the reload.
    held = socket.create_connection(("127.0.0.1", stack.ports["forward2"]), timeout=10)
    held.sendall(b"GET /download?size=1000000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    held.recv(1)
    wait_until("the held stream to web2", lambda: stream_count(stack, "web2") >= 1)
    stack.write_configs()  # web2 gone
    sighup(stack)
    wait_until("web2 out of the allowlist", lambda: "web2" not in targets(stack))
    wait_until("the stream to web2 to end", lambda: stream_count(stack, "web2") == 0)
    assert ended(held), "the stream to the removed target still carries bytes"
    held.close()
    assert not answers(stack.ports["forward2"])  # refused: not in the allowlist any more
    wait_until(
        "connect2 to say why",
        lambda: "allowlist" in stack.procs["connect2"].text(),
        deadline=10,
    )
    gateway_log = stack.procs["gateway"].text()
    assert "target removed from the allowlist by a reload" in gateway_log
    assert "configuration reloaded from" in gateway_log
    assert get(stack.ports["forward"], "/")[0] == 200  # web carries on
    assert connects(stack) == before  # the same tunnel all along
    assert reloads(stack, "success") >= 2
    trail = read_trail(audit_folder(stack.layout.gateway_state))
    records = [r for r in trail if r["event"] == "config.reloaded"]
    assert any("target web2 added" in r.get("changes", []) for r in records)
    assert any("target web2 removed" in r.get("changes", []) for r in records)


def answers(port: int) -> bool:
    try:
        return get(port, "/", timeout=10)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def ended(sock: socket.socket) -> bool:
    """Reads until the connection ends (True) or 10 s pass without its end (False)."""
    sock.settimeout(10)
    try:
        while sock.recv(1 << 20):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


def test_a_broken_config_is_refused_in_one_line_and_the_old_keeps_serving(stack: Stack) -> None:
    before = connects(stack)
    refused = reloads(stack, "failure")
    config = stack.layout.gateway_config
    good = config.read_text()
    config.write_text(good.replace('name = "web"', 'name = "web"\nbogus_key = 1', 1))
    try:
        sighup(stack)
        wait_until("the refusal", lambda: reloads(stack, "failure") == refused + 1)
    finally:
        config.write_text(good)
    lines = [
        line
        for line in stack.procs["gateway"].text().splitlines()
        if "configuration not reloaded" in line
    ]
    assert len(lines) == 1, lines
    assert "gateway.toml" in lines[0] and "bogus_key" in lines[0]
    assert "web" in targets(stack)
    assert get(stack.ports["forward"], "/")[0] == 200
    assert connects(stack) == before
    assert stack.procs["gateway"].popen.poll() is None


def test_the_relay_reloads_on_sighup_and_a_new_engineer_gets_in(stack: Stack) -> None:
    token = add_engineer(stack.layout.engineers, "frank", gateways=["e2e-gateway"])
    sighup(stack, "relay")
    wait_until(
        "the relay's reload",
        lambda: "configuration reloaded from" in stack.procs["relay"].text(),
        proc=stack.procs["relay"],
    )
    stack.start_connect("frank", token=token, port_key="forward3")
    assert get(stack.ports["forward3"], "/")[0] == 200
    text = http_get(stack.url("relay_metrics", "/metrics")).decode()
    assert metric_value(text, "relay_config_reloads_total", {"result": "success"}) == 1.0
    assert port_open(stack.ports["relay_eng"])


def test_a_renewed_gateway_certificate_is_taken_without_dropping_the_tunnel(stack: Stack) -> None:
    """The files replaced in place (as renewal or plant IT would), then SIGHUP: the expiry the
    metrics show moves to the new certificate's, on the same tunnel."""
    before = connects(stack)
    expiry = gateway_metric(stack, "gateway_certificate_expiry_timestamp_seconds")
    pki = stack.pki
    issue_gateway_certificate(
        pki.ca_cert,
        pki.ca_key,
        pki.gateway_cert,
        pki.gateway_key,
        gateway_id=stack.gateway_id,
        days=30,
        force=True,
    )
    sighup(stack)
    wait_until(
        "the new certificate's expiry",
        lambda: gateway_metric(stack, "gateway_certificate_expiry_timestamp_seconds") != expiry,
    )
    assert connects(stack) == before
    assert answers(stack.ports["forward"]), stack.procs["connect"].tail()


def test_a_new_relay_address_reconnects_cleanly(stack: Stack) -> None:
    """[relay] address from 127.0.0.1:P to localhost:P (the relay's certificate names both): the
    tunnel drains and comes back up once, and the engineer's forward works again."""
    up_before, _ = connects(stack)
    assert up_before is not None
    config = stack.layout.gateway_config
    text = config.read_text()
    relay = f"127.0.0.1:{stack.ports['relay_gw']}"
    assert relay in text
    config.write_text(text.replace(relay, f"localhost:{stack.ports['relay_gw']}"))
    sighup(stack)
    wait_until(
        "the tunnel to reconnect",
        lambda: connects(stack) == (up_before + 1, 1.0),
        proc=stack.procs["gateway"],
    )
    stack.wait_tunnel_up()
    assert stack.status()["tunnel"]["relay"] == f"localhost:{stack.ports['relay_gw']}"
    wait_until("the forward to work again", lambda: answers(stack.ports["forward"]))
    assert "reconnecting to the relay: relay.address changed by a reload" in (
        stack.procs["gateway"].text()
    )


def test_the_status_listener_moves_to_a_new_port(stack: Stack) -> None:
    old, new = stack.ports["status"], free_port()
    config = stack.layout.gateway_config
    text = config.read_text()
    assert f"127.0.0.1:{old}" in text
    config.write_text(text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}"))
    sighup(stack)
    wait_until("the new status port", lambda: port_open(new), proc=stack.procs["gateway"])
    stack.ports["status"] = new
    wait_until("the old status port to close", lambda: not port_open(old))
    assert stack.status()["tunnel"]["state"] == "up"


def relay_reloads(stack: Stack, result: str) -> float:
    text = http_get(stack.url("relay_metrics", "/metrics")).decode()
    return metric_value(text, "relay_config_reloads_total", {"result": result}) or 0.0


def presented_expiry(stack: Stack) -> datetime:
    """The expiry of the certificate the relay's engineer listener presents to a new client."""
    raw = socket.create_connection(("127.0.0.1", stack.ports["relay_eng"]), timeout=10)
    with tls_context(stack.pki.ca_cert).wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).not_valid_after_utc


def test_the_relay_takes_a_renewed_certificate_for_new_handshakes(stack: Stack) -> None:
    before = connects(stack)
    done = relay_reloads(stack, "success")
    old_expiry = presented_expiry(stack)
    pki = stack.pki
    issue_relay_certificate(
        pki.ca_cert,
        pki.ca_key,
        pki.relay_cert,
        pki.relay_key,
        names=RELAY_NAMES,
        days=30,
        force=True,
    )
    sighup(stack, "relay")
    wait_until("the relay's reload", lambda: relay_reloads(stack, "success") == done + 1)
    assert presented_expiry(stack) < old_expiry
    assert connects(stack) == before  # the gateway's tunnel carried on
    assert answers(stack.ports["forward"])


def test_a_broken_relay_config_is_refused_and_the_relay_serves_on(stack: Stack) -> None:
    refused = relay_reloads(stack, "failure")
    config = stack.layout.relay_config
    good = config.read_text()
    config.write_text(good.replace("[gateways]", "[gateways]\nlisten_typo = 1", 1))
    try:
        sighup(stack, "relay")
        wait_until("the refusal", lambda: relay_reloads(stack, "failure") == refused + 1)
    finally:
        config.write_text(good)
    lines = [x for x in stack.procs["relay"].text().splitlines() if "not reloaded" in x]
    assert len(lines) == 1 and "listen_typo" in lines[0], lines
    assert answers(stack.ports["forward"])
    assert stack.procs["relay"].popen.poll() is None
