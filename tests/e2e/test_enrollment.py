"""Enrollment, renewal and revocation end to end: real relay, gateway and CLI processes.

The relay enrolls with ``[enrollment]``; the gateway's configuration starts out pointing at a
certificate and key that do not exist yet, as on a freshly installed edge PC.
"""

from __future__ import annotations

import json
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from gateway.config import load_gateway_config
from tests.helpers.clients import get
from tests.helpers.pki import make_expired_gateway, make_other_ca_gateway
from tests.helpers.processes import Stack, fresh_stack, wait_until
from tests.helpers.squid import start_squid

pytestmark = pytest.mark.e2e

SHORT_LIFE_DAYS = 0.0003
"""26 s: renewal falls due about 17 s after a certificate is issued."""


def _gateway(
    s: Stack, *args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "gateway", *args],
        cwd=s.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _enrolling_stack(s: Stack, *, days: float | None = None) -> Stack:
    """The stack's relay with [enrollment]; the gateway's config names files not made yet."""
    relay_toml = s.layout.relay_config
    extra = f'\n[enrollment]\nca_key = "{s.pki.ca_key}"\n'
    if days is not None:
        extra += f"certificate_days = {days}\n"
    relay_toml.write_text(relay_toml.read_text() + extra)
    config = s.layout.gateway_config
    text = config.read_text()
    text = text.replace(str(s.pki.gateway_cert), str(s.workdir / "edge" / "gateway.pem"))
    text = text.replace(str(s.pki.gateway_key), str(s.workdir / "edge" / "gateway.key"))
    config.write_text(text)
    (s.workdir / "edge").mkdir()
    return s


@pytest.fixture
def stack() -> Iterator[Stack]:
    with fresh_stack() as s:
        yield _enrolling_stack(s)


@pytest.fixture
def short_lived() -> Iterator[Stack]:
    with fresh_stack() as s:
        yield _enrolling_stack(s, days=SHORT_LIFE_DAYS)


def _token(s: Stack, *flags: str, prefix: list[str] | None = None) -> str:
    done = _gateway(
        s,
        "relay",
        "enroll-token",
        s.gateway_id,
        "-c",
        str(s.layout.relay_config),
        "--json",
        *flags,
        prefix=prefix,
    )
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["token"])


def _enroll(s: Stack, token: str) -> subprocess.CompletedProcess[str]:
    return _gateway(
        s,
        "enroll",
        "--relay",
        f"127.0.0.1:{s.ports['relay_gw']}",
        "--ca",
        str(s.pki.ca_cert),
        "--token",
        token,
        "-c",
        str(s.layout.gateway_config),
    )


def _certificate(s: Stack) -> x509.Certificate:
    return x509.load_pem_x509_certificate((s.workdir / "edge" / "gateway.pem").read_bytes())


def _relay_files_text(s: Stack) -> str:
    """Everything the relay wrote: its state directory and its log."""
    parts = [s.procs["relay"].text()]
    for path in s.layout.relay_state.rglob("*"):
        if path.is_file() and not path.name.endswith(".sock"):
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def test_a_token_enrolls_once_and_the_tunnel_comes_up(stack: Stack) -> None:
    s = stack
    s.start_processor()
    s.start_relay()
    token = _token(s)
    done = _enroll(s, token)
    assert done.returncode == 0, done.stderr
    key = s.workdir / "edge" / "gateway.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = _certificate(s)
    assert cert.subject.rfc4514_string() == f"CN={s.gateway_id}"
    # Once only.
    again = _enroll(s, token)
    assert again.returncode == 1
    assert "used already" in again.stderr
    # The relay never saw the key, nor kept the token.
    key_pem = key.read_text()
    seen = _relay_files_text(s)
    assert "PRIVATE KEY" not in seen
    assert key_pem.splitlines()[1] not in seen
    assert token not in seen
    # The enrolled gateway's tunnel comes up and carries streams.
    s.start_gateway()
    s.start_connect()
    assert get(s.ports["forward"], "/")[0] == 200
    audit = (
        (s.layout.relay_state / "audit").read_text()
        if (s.layout.relay_state / "audit").is_file()
        else ""
    )
    del audit


def test_an_expired_token_is_refused(stack: Stack) -> None:
    s = stack
    s.start_relay()
    token = _token(s, "--minutes", "5", prefix=["faketime", "-f", "-1h"])
    done = _enroll(s, token)
    assert done.returncode == 1
    assert "expired" in done.stderr
    assert not (s.workdir / "edge" / "gateway.key").exists()


def _tls(
    s: Stack, alpn: str, request: bytes, cert: Path | None = None, key: Path | None = None
) -> bytes:
    """What the relay's gateway listener answers ``request`` with (b"": nothing, or no TLS)."""
    ctx = ssl.create_default_context(cafile=str(s.pki.ca_cert))
    ctx.set_alpn_protocols([alpn])
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", s.ports["relay_gw"]), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(request)
                chunks = []
                while chunk := tls.recv(65536):
                    chunks.append(chunk)
                    if alpn == "h2":
                        break  # a tunnel stays open: its first bytes are enough
                return b"".join(chunks)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""


def test_without_a_certificate_only_enrollment_is_served(stack: Stack) -> None:
    s = stack
    s.start_relay()
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    assert _tls(s, "h2", preface) == b""  # no tunnel: closed before a byte of HTTP/2
    renew = b'POST /v1/renew HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\n{"csr":"x"}'
    answer = _tls(s, "http/1.1", renew)
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert b"certificate-required" in answer
    other = b"GET /v1/info HTTP/1.1\r\nhost: x\r\n\r\n"
    assert _tls(s, "http/1.1", other).startswith(b"HTTP/1.1 404")
    big = b"POST /v1/enroll HTTP/1.1\r\nhost: x\r\ncontent-length: 999999\r\n\r\n"
    assert _tls(s, "http/1.1", big).startswith(b"HTTP/1.1 413")
    payload = json.dumps({"token": f"{s.gateway_id}.{'b' * 43}", "csr": "x"}).encode()
    unknown = b"POST /v1/enroll HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(payload)
    answer = _tls(s, "http/1.1", unknown + payload)
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert b"not known to this relay" in answer
    assert s.relay_metric("relay_gateways_connected") == 0.0
    assert s.procs["relay"].popen.poll() is None


def test_renewal_replaces_the_certificate_without_dropping_the_tunnel(
    short_lived: Stack,
) -> None:
    s = short_lived
    s.start_processor()
    s.start_relay()
    assert _enroll(s, _token(s)).returncode == 0
    first = _certificate(s)
    s.start_gateway()
    s.start_connect()
    assert get(s.ports["forward"], "/")[0] == 200
    wait_until(
        "the gateway to renew its certificate",
        lambda: _certificate(s).serial_number != first.serial_number,
        deadline=40,
        proc=s.procs["gateway"],
    )
    renewed = _certificate(s)
    assert renewed.not_valid_after_utc > first.not_valid_after_utc
    assert stat.S_IMODE((s.workdir / "edge" / "gateway.key").stat().st_mode) == 0o600
    status = s.status()
    assert status["tunnel"]["state"] == "up"
    assert status["tunnel"]["connects"] == 1  # the live tunnel was not dropped
    assert get(s.ports["forward"], "/")[0] == 200
    assert "PRIVATE KEY" not in _relay_files_text(s)
    # The tunnel still runs on the first certificate: revoking that one cuts it, and the
    # gateway comes back with the renewed one.
    revoke = _gateway(
        s,
        "relay",
        "revoke",
        s.gateway_id,
        "--serial",
        f"{first.serial_number:x}",
        "-c",
        str(s.layout.relay_config),
    )
    assert revoke.returncode == 0, revoke.stderr
    wait_until(
        "the gateway to redial", lambda: (s.status()["tunnel"]["connects"] or 0) >= 2, deadline=20
    )
    s.wait_tunnel_up()


def test_revocation_cuts_the_live_tunnel_and_refuses_it_afterwards(stack: Stack) -> None:
    s = stack
    s.start_processor()
    s.start_relay()
    assert _enroll(s, _token(s)).returncode == 0
    s.start_gateway()
    done = _gateway(s, "relay", "revoke", s.gateway_id, "-c", str(s.layout.relay_config))
    assert done.returncode == 0, done.stderr
    started = time.monotonic()
    wait_until(
        "the relay to cut the tunnel",
        lambda: s.relay_metric("relay_gateways_connected") == 0.0,
        deadline=5,
    )
    assert time.monotonic() - started < 3
    # The gateway redials (every 2 s at most in the tests) and is refused each time.
    wait_until(
        "a redial to be refused",
        lambda: s.procs["relay"].text().count("was revoked") >= 2,
        deadline=20,
    )
    assert s.relay_metric("relay_gateways_connected") == 0.0
    # No new token for a revoked id.
    refused = _gateway(s, "relay", "enroll-token", s.gateway_id, "-c", str(s.layout.relay_config))
    assert refused.returncode == 1
    assert "revoked" in refused.stderr


def test_enrollment_goes_through_the_plants_proxy_and_writes_a_config(stack: Stack) -> None:
    s = stack
    s.start_relay()
    squid = start_squid(s.workdir / "squid")
    try:
        new = s.workdir / "fresh" / "gateway.toml"
        new.parent.mkdir()
        done = _gateway(
            s,
            "enroll",
            "--relay",
            f"127.0.0.1:{s.ports['relay_gw']}",
            "--ca",
            str(s.pki.ca_cert),
            "--token",
            _token(s),
            "--proxy",
            f"http://127.0.0.1:{squid.port}",
            "-c",
            str(new),
        )
        assert done.returncode == 0, done.stderr
        wait_until(
            "squid to log the CONNECT",
            lambda: f"CONNECT 127.0.0.1:{s.ports['relay_gw']}" in squid.access_log,
        )
    finally:
        squid.stop()
    config = load_gateway_config(new)
    assert config.relay.cert == new.parent / "gateway.pem"
    assert config.relay.proxy is not None and config.relay.proxy.port == squid.port
    assert stat.S_IMODE(config.relay.key.stat().st_mode) == 0o600


def test_a_foreign_or_expired_certificate_cannot_renew_or_tunnel(stack: Stack) -> None:
    s = stack
    s.start_relay()
    other = make_other_ca_gateway(s.workdir / "other", s.gateway_id)
    expired = make_expired_gateway(s.pki, s.gateway_id)
    renew = b'POST /v1/renew HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\n{"csr":"x"}'
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    for cert, key in (other, expired):
        assert _tls(s, "http/1.1", renew, cert, key) == b""  # the handshake fails
        assert _tls(s, "h2", preface, cert, key) == b""
    # The stack's own certificate still opens a tunnel (HTTP/2 SETTINGS come back).
    assert _tls(s, "h2", preface, s.pki.gateway_cert, s.pki.gateway_key) != b""
    assert s.procs["relay"].popen.poll() is None


def test_idle_enrollment_connections_are_bounded_and_cut_off(stack: Stack) -> None:
    s = stack
    relay_toml = s.layout.relay_config
    text = relay_toml.read_text()
    head = text.index("\n", text.index("[gateways]")) + 1
    relay_toml.write_text(text[:head] + "max_unauthenticated_per_source = 3\n" + text[head:])
    s.start_relay()
    ctx = ssl.create_default_context(cafile=str(s.pki.ca_cert))
    ctx.set_alpn_protocols(["http/1.1"])
    idle = []
    try:
        for _ in range(3):
            raw = socket.create_connection(("127.0.0.1", s.ports["relay_gw"]), timeout=30)
            idle.append(ctx.wrap_socket(raw, server_hostname="localhost"))
        # A fourth from the same address is closed as it is accepted.
        request = b"POST /v1/enroll HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
        assert _tls(s, "http/1.1", request) == b""
        # The idle ones are cut off once their time for a request is up.
        started = time.monotonic()
        for tls in idle:
            try:
                assert tls.recv(100) == b""
            except (ssl.SSLError, ConnectionResetError):
                pass
        assert time.monotonic() - started < 25
    finally:
        for tls in idle:
            tls.close()
    assert s.procs["relay"].popen.poll() is None
