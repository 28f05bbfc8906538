"""The audit trails of a real relay and gateway: written while a page goes through, and intact
after both have stopped (``gateway audit --verify`` and ``gateway relay audit --verify``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.auditlog.files import CURRENT
from tests.helpers.clients import get
from tests.helpers.processes import running_stack

pytestmark = pytest.mark.e2e


def audit(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_both_trails_exist_and_verify_after_a_page_went_through() -> None:
    with running_stack() as stack:
        status, body = get(stack.ports["forward"], "/")
        assert status == 200
        assert b"/ws" in body
        stack.stop_all()
        gateway_toml = str(stack.layout.gateway_config)
        relay_toml = str(stack.layout.relay_config)
        for folder in (stack.layout.gateway_state / "audit", stack.layout.relay_state / "audit"):
            assert (folder / CURRENT).exists(), folder
            assert (folder / CURRENT).stat().st_mode & 0o077 == 0
            assert folder.stat().st_mode & 0o077 == 0

        for command in (("audit", "-c", gateway_toml), ("relay", "audit", "-c", relay_toml)):
            verified = audit(*command, "--verify")
            assert verified.returncode == 0, verified.stderr
            assert verified.stdout.startswith("audit trail OK: "), verified.stdout
            shown = audit(*command, "--json")
            assert shown.returncode == 0, shown.stderr
            records = [json.loads(line) for line in shown.stdout.splitlines()]
            assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
            readable = audit(*command)
            assert readable.returncode == 0, readable.stderr
            assert len(readable.stdout.splitlines()) == max(1, len(records))
        # The relay recorded the gateway's tunnel coming and going, with its id and address.
        shown = audit("relay", "audit", "-c", relay_toml, "--json")
        events = [json.loads(line) for line in shown.stdout.splitlines()]
        tunnel = [e for e in events if e["event"] in ("gateway.connected", "gateway.disconnected")]
        assert [e["event"] for e in tunnel] == ["gateway.connected", "gateway.disconnected"]
        assert {e["who"] for e in tunnel} == {stack.gateway_id}
        assert all(e["peer"].startswith("127.0.0.1:") for e in tunnel), tunnel
