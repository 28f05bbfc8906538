"""``gateway connect --group`` with real processes and a real browser (issue 20, item 3).

A processor whose UI spans two ports (``demo-processor --ws-port``: its page opens its WebSocket
on the other port of the page's own host name) is the gateway's target group ``pickit``.  The
engineer runs ``gateway connect --group pickit --bind 127.0.0.4`` in attended mode: one request
for both members, approved by the plant; each member then listens on its own port number at
127.0.0.4, and headless Chromium opens the group's page there and sees the cross-port
WebSocket echo.  A member's port that is taken ends the client with one line naming it.

The processors listen on 127.0.0.3, so the same port numbers are free at 127.0.0.4.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from attrs import define

from gateway.config import parse_address
from gateway.demo.stack import free_port, loopback, processor_args
from tests.helpers.browser import browser
from tests.helpers.consent import control_json, finished, told
from tests.helpers.processes import Proc, Stack, fresh_stack, start, wait_until

pytestmark = pytest.mark.e2e

PROCESSORS = "127.0.0.3"
BIND = "127.0.0.4"
WAIT_MS = 15_000


@define
class Group:
    stack: Stack
    ui_port: int
    ws_port: int

    def connect(self, name: str, *extra: str) -> Proc:
        stack = self.stack
        args = [
            "connect",
            "--relay",
            str(loopback(stack.ports["relay_eng"])),
            "--ca",
            str(stack.pki.ca_cert),
            "--gateway",
            stack.gateway_id,
            "--group",
            "pickit",
            "--bind",
            BIND,
            *extra,
        ]
        proc = start(name, args, stack.workdir, env={"GATEWAY_TOKEN": stack.token})
        stack.procs[name] = proc
        return proc


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def group() -> Iterator[Group]:
    with fresh_stack() as stack:
        stack.write_configs(mode="attended", access={"request_timeout": 120})
        ui_port, ws_port = free_port(), free_port()
        for name, port, extra in (
            ("ui", ui_port, ["--ws-port", str(ws_port)]),
            ("ws", ws_port, []),
        ):
            args = [*processor_args(parse_address(f"{PROCESSORS}:{port}")), *extra]
            stack.procs[name] = start(name, args, stack.workdir)
        config = stack.layout.gateway_config
        config.write_text(
            config.read_text()
            + f'\n[[target]]\nname = "ui"\naddress = "{PROCESSORS}:{ui_port}"\nkind = "http"\n'
            + f'\n[[target]]\nname = "ws"\naddress = "{PROCESSORS}:{ws_port}"\nkind = "http"\n'
            + '\n[[target_group]]\nname = "pickit"\nmembers = ["ui", "ws"]\n'
        )
        stack.start_relay()
        stack.start_gateway()
        wait_until(
            "the group's processors",
            lambda: _answers(PROCESSORS, ui_port) and _answers(PROCESSORS, ws_port),
        )
        yield Group(stack, ui_port, ws_port)


def test_the_groups_page_reaches_its_other_port_by_host_name_through_one_session(
    group: Group,
) -> None:
    stack = group.stack
    proc = group.connect("connect-group", "--reason", "ticket 4711: camera drifts")
    requests: list[dict[str, Any]] = []

    def asked() -> bool:
        requests[:] = [r for r in control_json(stack, "requests") if r["engineer"] == "erin"]
        return bool(requests)

    wait_until("the group's request at the gateway", asked, proc=proc)
    (request,) = requests
    assert sorted(request["targets"]) == ["ui", "ws"], request
    control_json(stack, "approve", str(request["id"]), "--minutes", "30")
    wait_until(
        "the plant to let the engineer in",
        lambda: any("the plant let you in" in line for line in told(proc)),
        proc=proc,
    )
    lines = told(proc)
    for port, member in ((group.ui_port, "ui"), (group.ws_port, "ws")):
        where = f"http://{BIND}:{port}/ -> target {member!r} of group 'pickit'"
        assert any(where in line for line in lines), lines
    (approved,) = [line for line in lines if "the plant let you in" in line]
    assert f"open http://{BIND}:{group.ui_port}/" in approved, approved
    assert "note" not in approved, approved
    (session,) = [s for s in stack.status()["sessions"] if s["engineer"] == "erin"]

    with browser() as chromium:
        page = chromium.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(f"http://{BIND}:{group.ui_port}/")
        endpoint = page.inner_text("#endpoint")
        assert endpoint == f"ws://{BIND}:{group.ws_port}/ws", endpoint
        page.wait_for_function("Number(document.getElementById('count').textContent) >= 2")
        assert page.inner_text("#state").strip() == "connected"
        echoed = page.evaluate(
            """(port) => new Promise((resolve, reject) => {
              const ws = new WebSocket('ws://' + location.hostname + ':' + port + '/ws');
              ws.onopen = () => ws.send('across ports');
              ws.onmessage = (e) => { resolve(e.data); ws.close(); };
              ws.onerror = () => reject(new Error('websocket failed'));
            })""",
            group.ws_port,
        )
        assert echoed == "across ports"
        page.close()
    # Both members' connections were in the group's one session.
    status = stack.status()
    (live,) = [s for s in status["sessions"] if s["engineer"] == "erin"]
    assert live["id"] == session["id"]
    ended = control_json(stack, "end", str(session["id"]), "--reason", "done")
    assert ended, ended
    code, lines = finished(proc)
    assert code == 0, lines


def test_a_members_port_that_is_taken_ends_the_client_with_one_line_naming_it(
    group: Group,
) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind((BIND, group.ws_port))
        taken.listen()
        proc = group.connect("connect-taken")
        code, lines = finished(proc)
    assert code == 1, lines
    where = f"cannot listen on {BIND}:{group.ws_port} for 'ws' of group 'pickit'"
    assert any(line.startswith(where) for line in lines), lines
    assert not _answers(BIND, group.ui_port), "the other member's port stayed open"


def test_an_unknown_group_is_named_with_the_ones_there_are(group: Group) -> None:
    stack = group.stack
    args = [
        "connect",
        "--relay",
        str(loopback(stack.ports["relay_eng"])),
        "--ca",
        str(stack.pki.ca_cert),
        "--gateway",
        stack.gateway_id,
        "--group",
        "pikcit",
    ]
    proc = start("connect-unknown", args, stack.workdir, env={"GATEWAY_TOKEN": stack.token})
    stack.procs["connect-unknown"] = proc
    code, lines = finished(proc)
    assert code == 1, lines
    assert f"gateway {stack.gateway_id!r} has no target group 'pikcit' (its groups: pickit)" in (
        lines
    ), lines
