"""A snapshot of a running stack holds the promised parts and no secret; one of a stopped
gateway says what is missing; ``--inspect`` verifies the manifest and finds a changed member."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import Stack, fresh_stack
from tests.helpers.squid import start_squid

pytestmark = pytest.mark.e2e

PROXY_USER, PROXY_PASSWORD = "snap-user", "Pr0xy-Passw0rd-Never-Shown"


@pytest.fixture
def stack() -> Iterator[Stack]:
    with fresh_stack() as s:
        yield s


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=90
    )


def unpack(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def key_body(key: Path) -> list[str]:
    return [line for line in key.read_text().splitlines() if line and "-----" not in line]


def test_a_snapshot_of_a_running_stack_holds_everything_and_no_secret(stack: Stack) -> None:
    squid = start_squid(stack.workdir / "squid", users={PROXY_USER: PROXY_PASSWORD})
    try:
        config_path = stack.workdir / "gateway.toml"
        creds = stack.workdir / "proxy-credentials"
        creds.write_text(f"{PROXY_USER}:{PROXY_PASSWORD}\n")
        creds.chmod(0o600)
        config = config_path.read_text().replace(
            "[relay]\n",
            f'[relay]\nproxy = "http://127.0.0.1:{squid.port}"\nproxy_credentials = "{creds}"\n',
            1,
        )
        config_path.write_text(config)
        stack.start_processor()
        stack.start_relay()
        stack.start_gateway()
        code = session_code(config_path)
        # A log that holds what must never leave: the redaction works on content too.
        log = stack.workdir / "gateway-extra.log"
        key_pem = stack.pki.gateway_key.read_text()
        log.write_text(
            f"proxy password={PROXY_PASSWORD}\nAuthorization: Bearer {stack.token}\n"
            f"code {code}\n{key_pem}\nbasic {_basic()}\nan ordinary line\n"
        )
        out = stack.workdir / "support.tar.gz"
        done = gateway("snapshot", "-c", str(config_path), "-o", str(out), "--log-file", str(log))
        assert done.returncode == 0, done.stderr
    finally:
        squid.stop()
    assert out.stat().st_mode & 0o777 == 0o600
    members = unpack(out)
    names = {n.removeprefix("snapshot/") for n in members}
    for part in ("versions.json", "config/gateway.toml", "checks.json", "network.json",
                 "routes.txt", "certificates.json", "status.json", "MANIFEST.json",
                 "README.txt", "logs/gateway-extra.log"):  # fmt: skip
        assert part in names, sorted(names)
    assert any(n.startswith("audit/") for n in names), sorted(names)
    versions = json.loads(members["snapshot/versions.json"])
    assert {"product", "python", "openssl", "os"} <= set(versions)
    status = json.loads(members["snapshot/status.json"])
    assert status["tunnel"]["state"] == "up"
    checks = json.loads(members["snapshot/checks.json"])
    assert {c["name"] for c in checks["checks"]} >= {"proxy", "tls", "clock", "tunnel"}
    certificates = json.loads(members["snapshot/certificates.json"])
    assert certificates[1]["certificates"][0]["subject"] == "CN=e2e-gateway"
    assert "an ordinary line" in members["snapshot/logs/gateway-extra.log"].decode()
    assert f'proxy_credentials = "{creds}"' in members["snapshot/config/gateway.toml"].decode()

    forbidden = [
        "PRIVATE KEY", PROXY_PASSWORD, stack.token, _basic(), *key_body(stack.pki.gateway_key),
        *key_body(stack.pki.ca_key), *key_body(stack.pki.relay_key),
    ]  # fmt: skip
    if code:
        forbidden.append(code)
    for name, data in members.items():
        text = data.decode("utf-8", "replace")
        for secret in forbidden:
            assert secret not in text, f"{name} holds {secret[:12]}..."

    inspected = gateway("snapshot", "--inspect", str(out))
    assert inspected.returncode == 0, inspected.stderr
    assert "all" in inspected.stdout and "match the manifest" in inspected.stdout


def _basic() -> str:
    return base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()


def session_code(config: Path) -> str | None:
    """A live session code from the daemon, if its control commands are there."""
    done = gateway("code", "-c", str(config), "--json")
    found = re.search(r"\b\d{6}\b", done.stdout) if done.returncode == 0 else None
    return found.group(0) if found else None


def test_a_snapshot_without_the_daemon_says_the_live_parts_are_missing(stack: Stack) -> None:
    out = stack.workdir / "offline.tar.gz"
    done = gateway("snapshot", "-c", str(stack.workdir / "gateway.toml"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "the gateway daemon was not running" in done.stdout
    members = unpack(out)
    assert "snapshot/status.MISSING.txt" in members
    assert b"not running" in members["snapshot/README.txt"]
    manifest = json.loads(members["snapshot/MANIFEST.json"])
    assert any("status" in note for note in manifest["missing"])


def test_inspect_finds_a_member_changed_after_the_snapshot(stack: Stack) -> None:
    out = stack.workdir / "snap.tar.gz"
    gateway("snapshot", "-c", str(stack.workdir / "gateway.toml"), "-o", str(out), "--no-checks")
    members = unpack(out)
    members["snapshot/versions.json"] = b'{"product": "edited"}\n'
    tampered = stack.workdir / "tampered.tar.gz"
    with tarfile.open(tampered, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    done = gateway("snapshot", "--inspect", str(tampered))
    assert done.returncode == 1
    assert "versions.json: SHA-256 does not match the manifest" in done.stderr
