"""The gateway reaches its relay through a real HTTP proxy (squid) with CONNECT."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.clients import download_and_verify
from tests.helpers.processes import Stack, fresh_stack, wait_until
from tests.helpers.squid import start_squid

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack() -> Iterator[Stack]:
    with fresh_stack() as s:
        yield s


def _use_proxy(stack: Stack, port: int) -> None:
    config = (stack.workdir / "gateway.toml").read_text()
    config = config.replace("[relay]\n", f'[relay]\nproxy = "http://127.0.0.1:{port}"\n', 1)
    (stack.workdir / "gateway.toml").write_text(config)


def test_tunnel_through_squid_carries_a_verified_download(stack: Stack) -> None:
    squid = start_squid(stack.workdir / "squid")
    try:
        _use_proxy(stack, squid.port)
        stack.start_processor()
        stack.start_relay()
        stack.start_gateway()
        stack.start_connect()
        assert download_and_verify(stack.ports["forward"], 8 << 20) == 8 << 20
        stack.procs["gateway"].stop()  # squid logs a CONNECT when it ends
        wait_until(
            "squid to log the CONNECT",
            lambda: f"CONNECT 127.0.0.1:{stack.ports['relay_gw']}" in squid.access_log,
        )
    finally:
        squid.stop()


def test_a_proxy_that_refuses_is_reported_and_retried(stack: Stack) -> None:
    squid = start_squid(stack.workdir / "squid", allow_connect=False)
    try:
        _use_proxy(stack, squid.port)
        stack.start_relay()
        gateway = stack.start_gateway(wait_up=False)
        wait_until(
            "the refusal to be logged",
            lambda: "the proxy refused CONNECT" in gateway.text() and "403" in gateway.text(),
            proc=gateway,
        )
        assert stack.tunnel_state() != "up"
        assert gateway.popen.poll() is None
    finally:
        squid.stop()


PROXY_USER, PROXY_PASSWORD = "plant-gw", "Sq1d-pass-0f-the-plant"


def _credentials(stack: Stack, user: str, password: str, mode: int = 0o600) -> Path:
    path = stack.workdir / "proxy-credentials"
    path.write_text(f"{user}:{password}\n")
    path.chmod(mode)
    config = (stack.workdir / "gateway.toml").read_text()
    config = config.replace("[relay]\n", f'[relay]\nproxy_credentials = "{path}"\n', 1)
    (stack.workdir / "gateway.toml").write_text(config)
    return path


def _check(stack: Stack) -> dict[str, dict[str, Any]]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--json", "-c",
         str(stack.workdir / "gateway.toml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert time.monotonic() - started < 20, done.stderr
    assert done.returncode in (0, 1), done.stderr
    return {c["name"]: c for c in json.loads(done.stdout)["checks"]}


def test_basic_authentication_carries_the_tunnel_and_its_reconnects(stack: Stack) -> None:
    squid = start_squid(stack.workdir / "squid", users={PROXY_USER: PROXY_PASSWORD})
    try:
        _use_proxy(stack, squid.port)
        _credentials(stack, PROXY_USER, PROXY_PASSWORD)
        stack.start_relay()
        gateway = stack.start_gateway()
        wait_until("a heartbeat through the proxy", lambda: stack.status()["tunnel"]["rtt_ms"])
        checks = _check(stack)
        assert checks["proxy"]["ok"] and PROXY_USER in checks["proxy"]["detail"], checks
        assert checks["tunnel"]["ok"], checks["tunnel"]
        stack.procs["relay"].stop()
        wait_until("the tunnel to drop", lambda: stack.tunnel_state() != "up", proc=gateway)
        stack.start_relay()
        stack.wait_tunnel_up()
        assert f"{PROXY_USER} " in squid.access_log or PROXY_USER in squid.access_log
        assert PROXY_PASSWORD not in gateway.text()
    finally:
        squid.stop()


def test_a_proxy_that_wants_credentials_and_got_none_says_so(stack: Stack) -> None:
    squid = start_squid(stack.workdir / "squid", users={PROXY_USER: PROXY_PASSWORD})
    try:
        _use_proxy(stack, squid.port)
        stack.start_relay()
        proxy = _check(stack)["proxy"]
        assert not proxy["ok"]
        assert "wants a user name and password (Basic)" in proxy["detail"]
        assert "[relay] proxy_credentials" in proxy["remedy"]
    finally:
        squid.stop()


def test_wrong_proxy_credentials_name_the_account(stack: Stack) -> None:
    squid = start_squid(stack.workdir / "squid", users={PROXY_USER: PROXY_PASSWORD})
    try:
        _use_proxy(stack, squid.port)
        _credentials(stack, PROXY_USER, "not-the-password")
        stack.start_relay()
        proxy = _check(stack)["proxy"]
        assert not proxy["ok"]
        assert f"did not accept the user {PROXY_USER!r}" in proxy["detail"]
        assert "wrong, or the account is locked" in proxy["remedy"]
        gateway = stack.start_gateway(wait_up=False)
        wait_until("the 407 in the log", lambda: "407" in gateway.text(), proc=gateway)
        assert "not-the-password" not in gateway.text()
    finally:
        squid.stop()


def test_a_proxy_that_denies_connect_names_the_rule_to_ask_for(stack: Stack) -> None:
    squid = start_squid(stack.workdir / "squid", allow_connect=False)
    try:
        _use_proxy(stack, squid.port)
        stack.start_relay()
        checks = _check(stack)
        relay = stack.ports["relay_gw"]
        assert not checks["proxy"]["ok"] and "forbids CONNECT" in checks["proxy"]["detail"]
        assert f"HTTPS (CONNECT) to 127.0.0.1 port {relay}" in checks["proxy"]["remedy"]
        assert checks["tcp"]["detail"].startswith("not checked")
    finally:
        squid.stop()


def test_credentials_readable_by_others_stop_the_gateway_at_start(stack: Stack) -> None:
    _use_proxy(stack, 3128)
    path = _credentials(stack, PROXY_USER, PROXY_PASSWORD, mode=0o644)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "-c", str(stack.workdir / "gateway.toml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "relay.proxy_credentials" in done.stderr and f"chmod 600 {path}" in done.stderr
    assert PROXY_PASSWORD not in done.stderr
