"""``gateway check`` against real failures on loopback: the right check fails, with the right
remedy, and the command answers in time (the bound is on a hang, not a speed test)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.pki import create_ca, issue_gateway_certificate, issue_relay_certificate
from gateway.promtext import metric_value
from tests.helpers.pki import make_expired_gateway
from tests.helpers.processes import Stack, fresh_stack, wait_until

pytestmark = pytest.mark.e2e

BOUND = 20.0
"""Seconds: the command must have answered by then even with everything down (it aims at 15)."""


@pytest.fixture
def stack() -> Iterator[Stack]:
    with fresh_stack() as s:
        yield s


def run_check(stack: Stack, *, prefix: list[str] | None = None) -> tuple[int, dict[str, Any]]:
    started = time.monotonic()
    done = subprocess.run(
        [*(prefix or []), sys.executable, "-m", "gateway", "check", "--json", "-c",
         str(stack.workdir / "gateway.toml")],
        capture_output=True, text=True, timeout=60, cwd=stack.workdir,
    )  # fmt: skip
    took = time.monotonic() - started
    assert took < BOUND, f"gateway check took {took:.1f}s:\n{done.stderr}"
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is (done.returncode == 0)
    return done.returncode, report


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def edit_gateway(stack: Stack, old: str, new: str) -> None:
    path = stack.workdir / "gateway.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def relay_address(stack: Stack) -> str:
    return f'address = "127.0.0.1:{stack.ports["relay_gw"]}"'


def test_everything_passes_against_a_running_relay(stack: Stack) -> None:
    stack.start_processor()
    stack.start_relay()
    code, report = run_check(stack)
    checks = by_name(report)
    assert [n for n, c in checks.items() if not c["ok"]] == ["target:stopped"]
    assert "heartbeat answered" in checks["tunnel"]["detail"]
    assert "e2e-gateway" in checks["tunnel"]["detail"]
    assert checks["clock"]["ok"] and "within" in checks["clock"]["detail"]
    assert code == 1  # the target nothing listens on


def test_relay_down_fails_tcp_and_names_the_firewall_rule(stack: Stack) -> None:
    code, report = run_check(stack)
    checks = by_name(report)
    port = stack.ports["relay_gw"]
    assert code == 1
    assert checks["dns"]["ok"] and checks["network"]["ok"]
    assert not checks["tcp"]["ok"] and "refused" in checks["tcp"]["detail"]
    assert f"outbound TCP {port} to 127.0.0.1 (HTTPS)" in checks["tcp"]["remedy"]
    assert checks["tls"]["detail"].startswith("not checked")
    assert checks["tls"]["remedy"] == ""


def test_wrong_port_fails_tcp(stack: Stack) -> None:
    stack.start_relay()
    dead = stack.ports["dead"]
    edit_gateway(stack, relay_address(stack), f'address = "127.0.0.1:{dead}"')
    _, report = run_check(stack)
    tcp = by_name(report)["tcp"]
    assert not tcp["ok"] and f"127.0.0.1:{dead} refused" in tcp["detail"]
    assert "check [relay] address" in tcp["remedy"]


def test_a_blackholed_relay_address_fails_tls_in_time(stack: Stack) -> None:
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)  # the kernel accepts; nobody ever answers
    try:
        edit_gateway(stack, relay_address(stack), f'address = "127.0.0.1:{hole.getsockname()[1]}"')
        _, report = run_check(stack)
    finally:
        hole.close()
    checks = by_name(report)
    assert checks["tcp"]["ok"]
    assert not checks["tls"]["ok"]
    assert "nothing answered the TLS handshake" in checks["tls"]["detail"]
    assert "(HTTPS)" in checks["tls"]["remedy"]


def test_a_relay_certificate_from_another_ca_is_named_as_interception(stack: Stack) -> None:
    box = stack.workdir / "inspecting-box"
    box.mkdir()
    create_ca(box / "ca.pem", box / "ca.key", name="Fortinet CA")
    issue_relay_certificate(
        box / "ca.pem", box / "ca.key", box / "relay.pem", box / "relay.key",
        names=["localhost", "127.0.0.1"],
    )  # fmt: skip
    relay_toml = stack.workdir / "relay.toml"
    text = relay_toml.read_text()
    text = text.replace(str(stack.pki.relay_cert), str(box / "relay.pem"))
    relay_toml.write_text(text.replace(str(stack.pki.relay_key), str(box / "relay.key")))
    stack.start_relay()
    _, report = run_check(stack)
    tls = by_name(report)["tls"]
    port = stack.ports["relay_gw"]
    assert not tls["ok"]
    assert "a device on your network, issued by 'Fortinet CA', is inspecting TLS" in tls["detail"]
    assert f"ask IT to exempt 127.0.0.1:{port} from TLS inspection" in tls["remedy"]
    assert by_name(report)["tunnel"]["detail"].startswith("not checked")


def test_an_expired_gateway_certificate_fails_the_certificate_check(stack: Stack) -> None:
    cert, key = make_expired_gateway(stack.pki, stack.gateway_id)
    use_gateway_pair(stack, cert, key)
    stack.start_relay()
    _, report = run_check(stack)
    checks = by_name(report)
    assert not checks["certificate"]["ok"] and "expired on" in checks["certificate"]["detail"]
    assert "ask the vendor for a new certificate" in checks["certificate"]["remedy"]
    assert not checks["tls"]["ok"] and "the relay refused" in checks["tls"]["detail"]


def test_a_not_yet_valid_gateway_certificate_fails_the_certificate_check(stack: Stack) -> None:
    cert, key = stack.pki.directory / "future.pem", stack.pki.directory / "future.key"
    issue_gateway_certificate(
        stack.pki.ca_cert, stack.pki.ca_key, cert, key, gateway_id=stack.gateway_id,
        now=datetime.now(UTC) + timedelta(days=30),
    )  # fmt: skip
    use_gateway_pair(stack, cert, key)
    stack.start_relay()
    _, report = run_check(stack)
    certificate = by_name(report)["certificate"]
    assert not certificate["ok"] and "is valid only from" in certificate["detail"]
    assert "set this gateway's clock if it is wrong" in certificate["remedy"]


def use_gateway_pair(stack: Stack, cert: Path, key: Path) -> None:
    edit_gateway(stack, str(stack.pki.gateway_cert), str(cert))
    edit_gateway(stack, str(stack.pki.gateway_key), str(key))


def test_a_gateway_clock_far_off_is_measured_against_the_relay(stack: Stack) -> None:
    stack.start_relay()
    _, report = run_check(stack, prefix=["faketime", "-f", "+1000d"])
    checks = by_name(report)
    clock = checks["clock"]
    assert not clock["ok"], clock
    assert "days" in clock["detail"] and "ahead of the relay's" in clock["detail"]
    assert "timedatectl" in clock["remedy"] and "NTP" in clock["remedy"]
    assert not checks["tls"]["ok"]
    assert "clock" in checks["tls"]["remedy"]


def test_a_target_down_fails_its_own_check(stack: Stack) -> None:
    stack.start_processor()
    stack.start_relay()
    _, report = run_check(stack)
    checks = by_name(report)
    assert checks["target:web"]["ok"]
    stopped = checks["target:stopped"]
    assert not stopped["ok"] and "refused the connection" in stopped["detail"]
    assert "is the processor on" in stopped["remedy"]


def test_a_relay_name_that_does_not_resolve_fails_dns(stack: Stack) -> None:
    edit_gateway(stack, relay_address(stack), 'address = "relay.invalid:443"')
    _, report = run_check(stack)
    checks = by_name(report)
    assert not checks["dns"]["ok"] and "relay.invalid does not resolve" in checks["dns"]["detail"]
    assert "resolve relay.invalid" in checks["dns"]["remedy"]
    assert checks["tcp"]["detail"].startswith("not checked")


def test_the_daemon_runs_the_checks_and_exports_them(stack: Stack) -> None:
    gateway = stack.start_gateway(wait_up=False)  # no relay yet
    wait_until("the daemon's first checks", lambda: bool(status_checks(stack)), proc=gateway)
    assert status_checks(stack)["tcp"]["ok"] is False
    assert gw_metric(stack, "tcp") == 0.0
    stack.start_relay()
    stack.wait_tunnel_up()
    answer = post_json(stack.url("status", "/api/checks/run"))
    ran = {c["name"]: c for c in answer["checks"]}
    assert ran["tls"]["ok"] and ran["tunnel"]["ok"], ran
    assert "up since" in ran["tunnel"]["detail"]
    assert status_checks(stack)["tls"]["ok"] is True
    assert gw_metric(stack, "tls") == 1.0


def status_checks(stack: Stack) -> dict[str, dict[str, Any]]:
    try:
        return {c["name"]: c for c in stack.status()["checks"]}
    except OSError:
        return {}


def gw_metric(stack: Stack, check: str) -> float | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(stack.url("gw_metrics", "/metrics"), timeout=5) as response:
        text = response.read().decode()
    return metric_value(text, "gateway_check_ok", {"check": check})


def post_json(url: str) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        url, data=b"{}", method="POST", headers={"Content-Type": "application/json"}
    )
    with opener.open(request, timeout=30) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result
