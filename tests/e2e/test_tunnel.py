"""The tunnel end to end: real relay, gateway, engineer client and processor on loopback."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers.clients import (
    download_and_verify,
    get,
    sha256,
    upload,
    websocket_echo,
)
from tests.helpers.pki import make_expired_gateway, make_other_ca_gateway
from tests.helpers.processes import (
    DEADLINE,
    Stack,
    fresh_stack,
    port_open,
    running_stack,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as s:
        yield s


@pytest.fixture
def own_stack() -> Iterator[Stack]:
    with fresh_stack() as s:
        yield s


def test_processor_page_arrives_through_the_tunnel(stack: Stack) -> None:
    status, body = get(stack.ports["forward"], "/")
    assert status == 200
    assert b"/ws" in body
    direct_status, direct_body = get(stack.ports["processor"], "/")
    assert (status, body) == (direct_status, direct_body)


def test_websocket_echo_through_the_tunnel(stack: Stack) -> None:
    messages: list[str | bytes] = ["hello", b"\x00\x01binary\xff", "x" * 200_000]
    assert websocket_echo(stack.ports["forward"], messages) == messages


def test_256_mib_download_is_byte_exact(stack: Stack) -> None:
    size = 256 * 1024 * 1024
    assert download_and_verify(stack.ports["forward"], size) == size


def test_upload_arrives_intact(stack: Stack) -> None:
    body = bytes(range(256)) * 40_000
    status, answer = upload(stack.ports["forward"], body)
    assert status == 200
    assert json.loads(answer) == {"bytes": len(body), "sha256": sha256(body)}


def test_50_concurrent_connections_all_succeed(stack: Stack) -> None:
    def one(i: int) -> int:
        return download_and_verify(stack.ports["forward"], 100_000 + i)

    with ThreadPoolExecutor(max_workers=50) as pool:
        sizes = list(pool.map(one, range(50)))
    assert sizes == [100_000 + i for i in range(50)]


def test_target_not_in_allowlist_is_refused_cleanly(stack: Stack) -> None:
    proc = stack.start_connect("connect-plc", target="plc", port_key="forward2")
    try:
        # The browser is told in a page with the client's own line (issue 16: refusals a
        # browser can read), not given a reset connection.
        status, page = get(stack.ports["forward2"], "/")
        assert status == 403, page
        assert b"is not in this gateway&#x27;s allowlist" in page, page
        wait_until(
            "the refusal to be reported",
            lambda: "target 'plc' is not in this gateway's allowlist" in proc.text(),
            proc=proc,
        )
    finally:
        proc.stop()
    assert "Traceback" not in proc.text()
    # The engineer's other forward still works.
    assert get(stack.ports["forward"], "/")[0] == 200


def test_stopped_target_gives_a_clean_error_while_other_streams_carry_on(stack: Stack) -> None:
    proc = stack.start_connect("connect-dead", target="stopped", port_key="forward3")
    result: dict[str, int] = {}
    big = threading.Thread(
        target=lambda: result.update(n=download_and_verify(stack.ports["forward"], 64 << 20))
    )
    big.start()
    try:
        # A tcp target, but the browser began with an HTTP request: it gets a 502 page.
        status, page = get(stack.ports["forward3"], "/")
        assert status == 502, page
        wait_until(
            "the dead target to be reported",
            lambda: "processor 'stopped'" in proc.text() and "unreachable" in proc.text(),
            proc=proc,
        )
    finally:
        big.join(120)
        proc.stop()
    assert result.get("n") == 64 << 20
    assert stack.procs["gateway"].popen.poll() is None


def test_bad_engineer_token_is_refused(stack: Stack) -> None:
    """The client asks for its session at once, so a bad token ends it (exit 1) with one line,
    often before its port is seen open; the relay counts the failure."""
    before = stack.relay_metric('relay_auth_failures_total{kind="engineer_token"}') or 0.0
    proc = stack.start_connect(
        "connect-bad", token="rsg_not-a-real-token", port_key="forward2", wait_listening=False
    )
    assert proc.popen.wait(timeout=DEADLINE) == 1, proc.tail()
    assert "the engineer token was not accepted" in proc.text()
    assert not port_open(stack.ports["forward2"])
    after = stack.relay_metric('relay_auth_failures_total{kind="engineer_token"}') or 0.0
    assert after > before


def test_unknown_gateway_is_reported(stack: Stack) -> None:
    proc = stack.start_connect(
        "connect-unknown", gateway="nowhere", port_key="forward2", wait_listening=False
    )
    assert proc.popen.wait(timeout=DEADLINE) == 1, proc.tail()
    assert "no gateway named 'nowhere'" in proc.text()


def _tls_to_relay(stack: Stack, cert: Path | None, key: Path | None) -> bytes:
    """Handshake with the relay's gateway listener as a would-be gateway; returns what it
    answered to an HTTP/2 preface (an empty result means it closed on us)."""
    ctx = ssl.create_default_context(cafile=str(stack.pki.ca_cert))
    ctx.set_alpn_protocols(["h2"])
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", stack.ports["relay_gw"]), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                return tls.recv(100)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""


def test_relay_refuses_gateway_certificates_it_did_not_issue(stack: Stack) -> None:
    # Sanity: the real gateway certificate is answered with HTTP/2 SETTINGS.
    assert _tls_to_relay(stack, stack.pki.gateway_cert, stack.pki.gateway_key) != b""
    other_cert, other_key = make_other_ca_gateway(stack.workdir / "other")
    expired_cert, expired_key = make_expired_gateway(stack.pki)
    assert _tls_to_relay(stack, other_cert, other_key) == b""
    assert _tls_to_relay(stack, expired_cert, expired_key) == b""
    assert _tls_to_relay(stack, None, None) == b""
    assert stack.relay_metric("relay_gateways_connected") == 1.0
    assert stack.procs["relay"].popen.poll() is None
    # The real gateway's tunnel is unaffected.
    assert get(stack.ports["forward"], "/")[0] == 200


def test_gateway_with_a_foreign_certificate_never_connects(own_stack: Stack) -> None:
    s = own_stack
    other_cert, other_key = make_other_ca_gateway(s.workdir / "other", gateway_id="e2e-gateway")
    config = (s.workdir / "gateway.toml").read_text()
    config = config.replace(str(s.pki.gateway_cert), str(other_cert))
    config = config.replace(str(s.pki.gateway_key), str(other_key))
    (s.workdir / "gateway.toml").write_text(config)
    s.start_relay()
    gateway = s.start_gateway(wait_up=False)
    wait_until(
        "the gateway to report the refusal",
        lambda: "cannot open the tunnel" in gateway.text(),
        proc=gateway,
    )
    assert s.relay_metric("relay_gateways_connected") == 0.0
    assert s.tunnel_state() != "up"


def test_gateway_reconnects_after_the_relay_restarts(own_stack: Stack) -> None:
    s = own_stack
    s.start_processor()
    s.start_relay()
    s.start_gateway()
    s.start_connect()
    assert get(s.ports["forward"], "/")[0] == 200
    s.procs["relay"].kill()
    wait_until("the gateway to notice", lambda: s.tunnel_state() != "up")
    s.start_relay()
    s.wait_tunnel_up(deadline=30)
    wait_until("a new connection to work", lambda: _works(s.ports["forward"]), deadline=30)
    status = s.status()
    assert status["tunnel"]["connects"] >= 2


def test_an_offline_gateway_is_reported_to_the_engineer(own_stack: Stack) -> None:
    s = own_stack
    s.start_processor()
    s.start_relay()
    s.start_gateway()
    connect = s.start_connect()
    assert get(s.ports["forward"], "/")[0] == 200
    s.procs["gateway"].stop()
    wait_until(
        "the relay to see the gateway go",
        lambda: s.relay_metric("relay_gateways_connected") == 0.0,
    )
    with pytest.raises((ConnectionError, OSError)):
        get(s.ports["forward"], "/")
    wait_until(
        "the engineer to be told",
        lambda: "gateway 'e2e-gateway' is offline" in connect.text(),
        proc=connect,
    )
    assert connect.popen.poll() is None  # the engineer client carries on, ready for later


def test_gateway_drains_and_exits_cleanly_on_sigterm(own_stack: Stack) -> None:
    s = own_stack
    s.start_processor()
    s.start_relay()
    s.start_gateway()
    code = s.procs["gateway"].stop(signal.SIGTERM)
    assert code == 0, s.procs["gateway"].tail()
    assert "Traceback" not in s.procs["gateway"].text()
    wait_until(
        "the relay to see the gateway go",
        lambda: s.relay_metric("relay_gateways_connected") == 0.0,
    )


def _works(port: int) -> bool:
    if not port_open(port):
        return False
    try:
        return get(port, "/", timeout=5)[0] == 200
    except OSError:
        return False
