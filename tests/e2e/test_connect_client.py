"""``gateway connect`` as an engineer runs it, against a real relay and gateway on loopback.

The mistakes no retry mends end the client at once with one line and exit 1 (a bad token, a
gateway the relay has never seen, a relay certificate for another name or from another CA); a
relay that is down is waited for; ``--reason`` waits for the plant's approval (given with
``gateway approve``) and ``--code`` gets in at once, and a page then loads through the forward.
One attended stack serves most tests; the outage test has its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.helpers.pki import make_pki
from tests.helpers.processes import (
    Proc,
    Stack,
    fresh_stack,
    http_get,
    make_stack,
    port_open,
    wait_until,
)

PREFIX = "gateway connect: "
EXIT_TIMEOUT = 15.0


@pytest.fixture(scope="module")
def attended() -> Iterator[Stack]:
    s, tmp = make_stack("attended")
    try:
        s.start_processor()
        s.start_relay()
        s.start_gateway()
        yield s
    finally:
        s.stop_all()
        tmp.cleanup()


def told(proc: Proc) -> list[str]:
    """What the client told the engineer (its own lines, not the log's)."""
    return [line.split(PREFIX, 1)[1] for line in proc.text().splitlines() if PREFIX in line]


def exits(proc: Proc) -> int:
    return proc.popen.wait(EXIT_TIMEOUT)


def control(s: Stack, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "-c", str(s.layout.gateway_config)],
        cwd=s.workdir,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_one_line_exit_1(proc: Proc, *words: str) -> None:
    assert exits(proc) == 1, proc.tail()
    assert "Traceback" not in proc.text()
    lines = told(proc)
    assert lines[0].startswith("forwarding "), lines
    assert len(lines) == 2, lines
    for word in words:
        assert word in lines[1], lines


def test_a_bad_token_is_one_line_and_exit_1(attended: Stack) -> None:
    proc = attended.start_connect("bad-token", token="rsg_not-a-token", wait_listening=False)
    assert_one_line_exit_1(proc, "token was not accepted")


def test_an_unknown_gateway_is_one_line_and_exit_1(attended: Stack) -> None:
    proc = attended.start_connect("unknown", gateway="nowhere", wait_listening=False)
    assert_one_line_exit_1(proc, "'nowhere'")


def test_a_wrong_server_name_is_one_line_and_exit_1(attended: Stack) -> None:
    proc = attended.start_connect(
        "server-name", extra=["--server-name", "relay.example.com"], wait_listening=False
    )
    assert_one_line_exit_1(proc, "host name", "--server-name")


def test_a_relay_certificate_from_another_ca_is_one_line_and_exit_1(attended: Stack) -> None:
    other = make_pki(attended.workdir / "other-pki", gateway_id="other-gateway")
    proc = attended.start_connect(
        "other-ca", extra=["--ca", str(other.ca_cert)], wait_listening=False
    )
    assert_one_line_exit_1(proc, "pinned CA", "--ca")


def test_attended_without_reason_or_code_is_refused_with_the_way_in(attended: Stack) -> None:
    proc = attended.start_connect("no-session", wait_listening=False)
    assert_one_line_exit_1(proc, "attended mode", "--reason", "--code")


def test_a_request_approved_by_the_plant_opens_the_page(attended: Stack) -> None:
    s = attended
    proc = s.start_connect("reason", extra=["--reason", "ticket 4711: recalibrate camera"])
    wait_until("the request to wait", lambda: bool(s.status()["access"]["requests"]), proc=proc)
    [request] = s.status()["access"]["requests"]
    assert request["reason"] == "ticket 4711: recalibrate camera"
    assert request["engineer"] == "erin"
    wait_until("the waiting line", lambda: any("waiting for" in t for t in told(proc)), proc=proc)
    control(s, "approve", request["id"])
    wait_until("the approval", lambda: any("let you in" in t for t in told(proc)), proc=proc)
    assert b"<html" in http_get(s.url("forward")).lower()
    control(s, "end", "--all", "--reason", "done for today")
    assert exits(proc) == 0, proc.tail()
    assert told(proc)[-1].endswith("ended: ended by the plant: done for today"), told(proc)


def test_a_code_gets_in_at_once_and_only_once(attended: Stack) -> None:
    s = attended
    code = json.loads(control(s, "code", "--json"))["code"]
    proc = s.start_connect("code", extra=["--code", code], port_key="forward2")
    wait_until("the session", lambda: any("let you in" in t for t in told(proc)), proc=proc)
    assert b"<html" in http_get(s.url("forward2")).lower()
    again = s.start_connect(
        "code-again", extra=["--code", code], port_key="forward3", wait_listening=False
    )
    assert_one_line_exit_1(again, "used already")
    proc.stop()


def test_a_relay_that_is_down_at_start_is_waited_for() -> None:
    with fresh_stack() as s:
        s.start_processor()
        proc = s.start_connect()
        wait_until("the outage line", lambda: any("cannot reach" in t for t in told(proc)))
        s.start_relay()
        s.start_gateway()
        wait_until("the session", lambda: any("is online" in t for t in told(proc)), proc=proc)
        assert b"<html" in http_get(s.url("forward")).lower()
        assert sum("cannot reach" in t for t in told(proc)) == 1, told(proc)
        assert port_open(s.ports["forward"])
