"""The control commands against a real gateway daemon: its control socket, the mode it keeps.

Relay and gateway run as real processes on loopback; each control command is a real
``python -m gateway ...`` process, as plant staff would run it.  The status listener's rule that
only loopback may act cannot be shown here (every test client is on loopback): the unit tests
(tests/unit/test_api.py) show it with a fake client address.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli.control import CONTROL_SOCKET
from gateway.config import load_gateway_config
from gateway.demo.stack import python_gateway
from tests.helpers.processes import Stack, fresh_stack, start, wait_until

pytestmark = pytest.mark.e2e


def control(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        python_gateway([*args, "-c", str(stack.layout.gateway_config)]),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=stack.workdir,
    )


def socket_path(stack: Stack) -> Path:
    return load_gateway_config(stack.layout.gateway_config).state_dir / CONTROL_SOCKET


@pytest.fixture
def stack() -> Iterator[Stack]:
    with fresh_stack() as s:
        s.write_configs(mode="attended")
        s.start_relay()
        s.start_gateway()
        wait_until("the control socket", socket_path(s).exists, proc=s.procs["gateway"])
        yield s


def restart_gateway(stack: Stack, sig: int = signal.SIGTERM) -> None:
    stack.procs["gateway"].stop(sig)
    stack.start_gateway()
    wait_until("the control socket", socket_path(stack).exists, proc=stack.procs["gateway"])


def test_access_shows_the_mode_and_a_switch_off_survives_a_restart(stack: Stack) -> None:
    shown = control(stack, "access")
    assert (shown.returncode, shown.stderr) == (0, "")
    assert shown.stdout.startswith("remote access is attended: ")

    switched = control(stack, "access", "disabled")
    assert switched.returncode == 0, switched.stderr
    assert switched.stdout.startswith("remote access switched off")

    restart_gateway(stack)
    after = control(stack, "access", "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["mode"] == "disabled"
    assert stack.status()["access"]["mode"] == "disabled"


def test_a_code_is_six_digits_and_no_request_is_waiting(stack: Stack) -> None:
    made = control(stack, "code", "--minutes", "15", "--target", "web")
    assert made.returncode == 0, made.stderr
    assert re.search(r"^ {4}\d{6}$", made.stdout, re.MULTILINE), made.stdout
    waiting = control(stack, "requests", "--json")
    assert (waiting.returncode, json.loads(waiting.stdout)) == (0, [])


def test_refusals_and_mistakes_have_their_exit_codes(stack: Stack) -> None:
    unknown = control(stack, "approve", "r-000000")
    assert unknown.returncode == 1
    assert unknown.stderr.count("\n") == 1 and "r-000000" in unknown.stderr
    ended = control(stack, "end", "s-000000")
    assert ended.returncode == 1, ended.stderr
    mistake = control(stack, "code", "--minutes", "0")
    assert mistake.returncode == 2
    assert mistake.stderr == "gateway: --minutes: '0' is not a number of minutes (1 or more)\n"


def test_with_the_daemon_stopped_a_command_exits_3_in_one_line(stack: Stack) -> None:
    stack.procs["gateway"].stop()
    assert not socket_path(stack).exists(), "a clean stop removes the socket"
    result = control(stack, "access")
    assert result.returncode == 3
    assert result.stderr == (
        f"gateway: the gateway daemon is not running (no answer on {socket_path(stack)}); "
        "start it with: systemctl start gateway "
        f"(or gateway run -c {stack.layout.gateway_config})\n"
    )


def test_a_crashed_daemons_socket_is_replaced_and_a_live_one_never_taken(stack: Stack) -> None:
    second = start("gateway2", ["run", "-c", str(stack.layout.gateway_config)], stack.workdir)
    assert second.popen.wait(60) != 0
    assert "another gateway daemon is running with this state directory" in second.text()
    # One line and a clean stop: the listeners that never started are not stopped.
    assert "Traceback" not in second.text()
    assert "Unhandled error" not in second.text()
    assert control(stack, "access").returncode == 0, "the first daemon still answers"

    restart_gateway(stack, signal.SIGKILL)  # leaves its socket file behind
    assert control(stack, "access").returncode == 0
    assert "did not stop cleanly" in stack.procs["gateway"].text()
