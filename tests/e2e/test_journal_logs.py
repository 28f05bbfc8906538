"""Log lines of real daemons as the journal and a log shipper see them: under ``JOURNAL_STREAM``
no timestamps and a syslog priority on every line; with ``--log-format json`` one JSON object a
line."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator

import pytest

from gateway.demo import stack as shared
from tests.helpers.processes import Stack, fresh_stack, port_open, start, wait_until

pytestmark = pytest.mark.e2e

PRIORITY = re.compile(r"^<[0-7]>")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with fresh_stack() as s:
        s.start_processor()
        relay = start(
            "relay", [*shared.relay_args(s.layout.relay_config), "--log-format", "json"], s.workdir
        )
        s.procs["relay"] = relay
        wait_until("relay metrics", lambda: port_open(s.ports["relay_metrics"]), proc=relay)
        log = s.workdir / "gateway.log"
        log.touch()
        st = os.stat(log)
        s.start_gateway(env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        yield s


def test_under_the_journal_every_line_has_a_priority_and_no_timestamp(stack: Stack) -> None:
    lines = stack.procs["gateway"].text().splitlines()
    assert lines, "the gateway wrote nothing"
    assert all(PRIORITY.match(line) for line in lines), [
        line for line in lines if not PRIORITY.match(line)
    ][:5]
    assert not any(TIMESTAMP.match(line[3:]) for line in lines)
    assert any(line.startswith("<6>") and "tunnel connecting -> up" in line for line in lines)


def test_an_error_is_priority_3_in_the_journal(stack: Stack) -> None:
    config = stack.layout.gateway_config
    good = config.read_text()
    config.write_text(good + "\n[nonsense]\n")
    try:
        stack.procs["gateway"].popen.send_signal(signal.SIGHUP)
        wait_until(
            "the refusal",
            lambda: "configuration not reloaded" in stack.procs["gateway"].text(),
            proc=stack.procs["gateway"],
        )
    finally:
        config.write_text(good)
    [line] = [x for x in stack.procs["gateway"].text().splitlines() if "not reloaded" in x]
    assert line.startswith("<3>"), line
    assert "nonsense" in line


def test_json_lines_with_the_structured_fields(stack: Stack) -> None:
    wait_until(
        "the gateway's connection in the relay's log",
        lambda: stack.gateway_id in stack.procs["relay"].text(),
        proc=stack.procs["relay"],
    )
    records = [json.loads(line) for line in stack.procs["relay"].text().splitlines()]
    assert records
    assert all({"time", "level", "message"} <= r.keys() for r in records)
    assert any(r.get("gateway_id") == stack.gateway_id for r in records), records[-5:]
