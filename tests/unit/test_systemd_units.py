"""The systemd units in systemd/: valid for systemd-analyze, locked down (the exposure score no
worse than recorded in systemd/exposure.json), and saying what the daemons rely on."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
NAMES = ["gateway.service", "gateway-relay.service"]

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def settings(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key, []).append(value)
    return found


def installed_copy(tmp_path: Path, name: str) -> Path:
    """The unit with its ExecStart pointing at this checkout's ``gateway`` (verify wants an
    executable there)."""
    program = Path(sys.executable).with_name("gateway")
    assert program.exists(), program
    copy = tmp_path / name
    copy.write_text((UNITS / name).read_text().replace("/usr/bin/gateway", str(program)))
    return copy


@needs_analyze
@pytest.mark.parametrize("name", NAMES)
def test_verify(tmp_path: Path, name: str) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(installed_copy(tmp_path, name))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def exposure(unit: Path) -> float:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert match, done.stdout + done.stderr
    return float(match.group(1))


@needs_analyze
@pytest.mark.parametrize("name", NAMES)
def test_exposure_no_worse_than_recorded(name: str) -> None:
    recorded = json.loads((UNITS / "exposure.json").read_text())[name]
    score = exposure(UNITS / name)
    assert score <= recorded, f"{name}: exposure {score} is worse than the recorded {recorded}"


@needs_analyze
def test_the_score_sees_a_weakened_unit(tmp_path: Path) -> None:
    """The comparison catches a unit that lost its hardening."""
    weak = tmp_path / "gateway.service"
    text = (UNITS / "gateway.service").read_text()
    weak.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=no"))
    assert exposure(weak) > exposure(UNITS / "gateway.service")


@pytest.mark.parametrize("name", NAMES)
def test_notify_watchdog_restart_reload(name: str) -> None:
    s = settings(name)
    assert s["Type"] == ["notify"]
    assert s["WatchdogSec"] and s["WatchdogSec"][0] != "0"
    assert s["Restart"] == ["on-failure"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["UMask"] == ["0077"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert "DynamicUser" not in s  # state must keep its owner across restarts and upgrades
    # pyOpenSSL's verify and ALPN callbacks (cffi) need write+execute memory: the TLS
    # handshake fails under MemoryDenyWriteExecute (seen in tests/e2e/test_package.py).
    assert "MemoryDenyWriteExecute" not in s
    # ProcSubset=pid hides /proc/stat, and with it every process_* metric.
    assert "ProcSubset" not in s
    assert s["ProtectProc"] == ["invisible"]


def test_gateway_has_no_capability_and_its_own_user() -> None:
    s = settings("gateway.service")
    assert s["User"] == ["gateway"]
    assert s["CapabilityBoundingSet"] == [""]
    assert s["StateDirectory"] == ["gateway"] and s["ConfigurationDirectory"] == ["gateway"]
    families = s["RestrictAddressFamilies"][0].split()
    # unix: the control socket; netlink: the network check's interface table.
    assert set(families) == {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}


def test_relay_binds_443_with_one_capability() -> None:
    s = settings("gateway-relay.service")
    assert s["User"] == ["gateway-relay"]
    assert s["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert s["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    # unix: the relay has a control socket too (gateway relay sessions).
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
