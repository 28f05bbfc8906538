"""The gateway reaches its relay through a real HTTP proxy (squid) with CONNECT."""

from __future__ import annotations

from collections.abc import Iterator

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
