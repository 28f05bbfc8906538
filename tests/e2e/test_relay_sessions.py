"""``gateway relay sessions`` against a real relay and gateway: the support desk's view.

Relay, gateway, processor and engineer client run as real processes on loopback; the desk
command is a real ``python -m gateway relay sessions`` process reaching the running relay
through its control socket, as the vendor's support staff would run it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_relay_config
from gateway.demo.stack import python_gateway
from tests.helpers.processes import Stack, fresh_stack, http_get, wait_until

pytestmark = pytest.mark.e2e


def desk(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        python_gateway(["relay", "sessions", "-c", str(stack.layout.relay_config), *args]),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=stack.workdir,
    )


def desk_json(stack: Stack) -> dict[str, Any]:
    shown = desk(stack, "--json")
    assert (shown.returncode, shown.stderr) == (0, ""), shown.stderr
    answer: dict[str, Any] = json.loads(shown.stdout)
    return answer


def the_gateway(stack: Stack) -> dict[str, Any]:
    gateways = desk_json(stack)["gateways"]
    assert [g["id"] for g in gateways] == [stack.gateway_id], gateways
    found: dict[str, Any] = gateways[0]
    return found


def relay_socket(stack: Stack) -> Path:
    return load_relay_config(stack.layout.relay_config).state_dir / "control.sock"


@pytest.fixture
def attended() -> Iterator[Stack]:
    with fresh_stack() as s:
        s.write_configs(mode="attended")
        s.start_processor()
        s.start_relay()
        s.start_gateway()
        yield s


def test_the_desk_shows_the_gateway_and_its_mode(attended: Stack) -> None:
    socket = relay_socket(attended)
    assert socket.is_socket() and socket.stat().st_mode & 0o777 == 0o660
    shown = desk(attended)
    assert (shown.returncode, shown.stderr) == (0, ""), shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "1 gateway connected to this relay", shown.stdout
    assert lines[2].startswith(f"{attended.gateway_id}  connected since "), shown.stdout
    assert " from 127.0.0.1:" in lines[2]
    assert lines[3].startswith("  access: attended"), shown.stdout
    assert "no requests waiting, no live sessions" in shown.stdout

    gateway = the_gateway(attended)
    assert gateway["mode"] == "attended"
    assert (gateway["requests"], gateway["sessions"], gateway["sessions_unknown"]) == ([], [], None)
    assert gateway["address"].startswith("127.0.0.1:")
    assert gateway["connected_since"].endswith("+00:00")


def test_a_request_appears_once_an_engineer_asks(attended: Stack) -> None:
    attended.start_connect(
        extra=["--reason", "ticket 4711: recalibrate camera"], wait_listening=False
    )
    wait_until(
        "the request to reach the desk",
        lambda: bool(the_gateway(attended)["requests"]),
        proc=attended.procs["connect"],
    )
    [request] = the_gateway(attended)["requests"]
    assert request["engineer"] == "erin"
    assert request["reason"] == "ticket 4711: recalibrate camera"
    shown = desk(attended)
    assert "waiting for the plant: 1 request" in shown.stdout, shown.stdout
    assert "ticket 4711: recalibrate camera" in shown.stdout
    assert request["id"] in shown.stdout


def test_an_unattended_forward_shows_as_a_live_session(attended: Stack) -> None:
    switched = subprocess.run(
        python_gateway(["access", "unattended", "-c", str(attended.layout.gateway_config)]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert switched.returncode == 0, switched.stderr
    attended.start_connect()
    assert b"/ws" in http_get(attended.url("forward"))  # the processor's page, forwarded
    wait_until("the session to reach the desk", lambda: bool(the_gateway(attended)["sessions"]))
    gateway = the_gateway(attended)
    assert gateway["mode"] == "unattended"
    [session] = gateway["sessions"]
    assert (session["engineer"], session["implicit"], session["expires"]) == ("erin", True, None)
    shown = desk(attended)
    assert "live: 1 session" in shown.stdout and "no end" in shown.stdout, shown.stdout


def test_with_the_relay_stopped_the_desk_exits_3_in_one_line(attended: Stack) -> None:
    attended.procs["relay"].stop()
    assert not relay_socket(attended).exists()  # removed as the relay stopped
    shown = desk(attended)
    assert shown.returncode == 3, shown
    assert shown.stdout == ""
    lines = shown.stderr.strip().splitlines()
    assert len(lines) == 1, shown.stderr
    assert lines[0].startswith("gateway: the relay is not running"), lines


def test_a_gateway_that_does_not_answer_is_listed_with_its_sessions_unknown() -> None:
    with fresh_stack() as s:
        # The relay's heartbeat would drop a frozen gateway after 3 s; here it waits 30, so the
        # gateway stays connected while it cannot answer.
        relay_toml = s.layout.relay_config
        text = relay_toml.read_text()
        assert "heartbeat_timeout = 3 " in text
        relay_toml.write_text(text.replace("heartbeat_timeout = 3 ", "heartbeat_timeout = 30 "))
        s.start_relay()
        s.start_gateway()
        gateway = s.procs["gateway"]
        gateway.send(signal.SIGSTOP)
        try:
            started = time.monotonic()
            shown = desk(s)
            took = time.monotonic() - started
            gateway_json = desk_json(s)["gateways"]
        finally:
            gateway.send(signal.SIGCONT)
        assert shown.returncode == 0, shown.stderr
        assert "  sessions unknown: no answer within 2 s" in shown.stdout, shown.stdout
        assert took < 10, took  # bounded by the desk's timeout, not by the heartbeat
        [frozen] = gateway_json
        assert (frozen["id"], frozen["mode"]) == (s.gateway_id, None)
        assert frozen["sessions_unknown"] == "no answer within 2 s"
        wait_until("the gateway to answer again", lambda: the_gateway(s)["mode"] is not None)
