"""The plant stays in control, end to end: attended sessions, codes, ending them, and the record.

Real processes on loopback (demo processor, relay, gateway, ``gateway connect`` clients); plant
staff act with the control commands (``gateway approve|deny|code|end|access``), and what
happened is read back from both audit trails with ``gateway audit --json`` and ``gateway relay
audit --json``.  One stack serves the module: after each test the mode goes back to
``attended``, the test's sessions are ended and its clients stopped.

How soon a session's streams stop is measured on two downloads at once: one through ``gateway
connect`` (what the engineer sees; that client also leaves when told the session ended) and one
on a raw stream through the relay whose client takes no notice of anything but its bytes, so
that only the gateway cutting the stream can stop it.  Both are timed against the audit record
of the decision.

One session is started as the module starts and left alone: approved for one minute (the
shortest a session can be), it expires while the other tests run, and
`test_an_approved_session_expires_on_time` only collects what it did.  The tests that end every
session (``disabled``, a restart) come after it.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from attrs import define

from gateway.cli.control import CONTROL_SOCKET
from gateway.wire import AUTHORIZATION_HEADER, ERROR_HEADER, GATEWAY_HEADER, REASON_HEADER
from tests.helpers.clients import get
from tests.helpers.consent import (
    SIDES,
    Download,
    StreamDownload,
    add_engineer,
    audit_records,
    control,
    control_json,
    finished,
    record_time,
    records_of,
    relay_command,
    told,
    verify_audit,
)
from tests.helpers.processes import Proc, Stack, free_port, fresh_stack, port_open, wait_until
from tests.helpers.rogue import H2Client

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("expiring")]

REQUEST_TIMEOUT = 10
"""Seconds a request waits for the plant (the smallest ``[access] request_timeout``)."""
STOP_WITHIN = 1.0
"""Ending a session or switching access off stops its streams within a second (BRIEF)."""
SESSION = re.compile(r"\bsession (s-[0-9a-f]+)")


@define
class Site:
    stack: Stack
    tokens: dict[str, str]
    clients: list[Proc]

    def connect(
        self,
        engineer: str = "erin",
        *extra: str,
        port_key: str = "forward",
        wait_listening: bool = False,
    ) -> Proc:
        """A ``gateway connect`` of ``engineer`` (``extra``: ``--reason ...``, ``--code ...``)."""
        name = f"connect-{engineer}-{len(self.clients)}"
        proc = self.stack.start_connect(
            name,
            token=self.tokens[engineer],
            port_key=port_key,
            extra=extra,
            wait_listening=wait_listening,
        )
        self.clients.append(proc)
        return proc


@define
class Expiring:
    """The session approved for one minute as the module starts."""

    proc: Proc
    session: dict[str, Any]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with fresh_stack() as stack:
        stack.write_configs(mode="attended", access={"request_timeout": REQUEST_TIMEOUT})
        tokens = {"erin": stack.token, "ed": add_engineer(stack, "ed", stack.gateway_id)}
        stack.start_processor()
        stack.start_relay()
        stack.start_gateway()
        socket = stack.layout.gateway_state / CONTROL_SOCKET
        wait_until("the control socket", socket.exists, proc=stack.procs["gateway"])
        yield Site(stack, tokens, [])


@pytest.fixture(scope="module")
def expiring(site: Site) -> Expiring:
    proc = site.connect(
        "ed", "--reason", "ticket 4712: watch the session expire", port_key="forward3"
    )
    request = pending(site, "ed", proc)
    session = control_json(site.stack, "approve", request["id"], "--minutes", "1")
    return Expiring(proc, session)


@pytest.fixture(autouse=True)
def back_to_attended(site: Site, expiring: Expiring) -> Iterator[None]:
    """After each test: attended again, the test's sessions ended and its clients stopped."""
    yield
    stack = site.stack
    if control_json(stack, "access")["mode"] != "attended":
        control_json(stack, "access", "attended")
    for session in control_json(stack, "sessions"):
        if session["id"] != expiring.session["id"]:
            control(stack, "end", session["id"], "--reason", "the test is over")  # or gone
    for proc in site.clients:
        if proc is not expiring.proc:
            proc.stop()


def pending(site: Site, engineer: str, proc: Proc) -> dict[str, Any]:
    """The request ``engineer`` has waiting, once ``gateway requests`` lists it."""
    found: list[dict[str, Any]] = []

    def listed() -> bool:
        found[:] = [r for r in control_json(site.stack, "requests") if r["engineer"] == engineer]
        return bool(found)

    wait_until(f"a request by {engineer}", listed, proc=proc)
    return found[0]


def line_with(proc: Proc, words: str, deadline: float = 30.0) -> str:
    """The first line the client told that contains ``words`` (waited for, bounded)."""
    wait_until(
        f"{proc.name} to say {words!r}",
        lambda: any(words in line for line in told(proc)),
        deadline=deadline,
        proc=proc,
    )
    return next(line for line in told(proc) if words in line)


def session_of(line: str) -> str:
    match = SESSION.search(line)
    assert match, line
    return match.group(1)


def one(records: list[dict[str, Any]], event: str, **fields: Any) -> dict[str, Any]:
    found = records_of(records, event, **fields)
    assert len(found) == 1, f"{event} {fields}: {len(found)} records\n{found or records[-10:]}"
    return found[0]


def answered(h2: H2Client, sid: int) -> bool:
    if h2.streams[sid].status is None:
        h2.pump()
    return h2.streams[sid].status is not None


def code_for(site: Site, *args: str) -> str:
    made = control_json(site.stack, "code", *args)
    assert re.fullmatch(r"\d{6}", made["code"]), made
    return str(made["code"])


# -- without a session ------------------------------------------------------------------------


def test_attended_refuses_a_forward_without_a_session(site: Site) -> None:
    stack = site.stack
    proc = site.connect("erin")
    code, lines = finished(proc)
    assert code == 1, lines
    assert "this gateway is in attended mode" in lines[-1], lines
    assert "gateway connect --reason" in lines[-1] and "gateway connect --code" in lines[-1]

    # A forward's own stream, sent without a session, as a client that skips the ask would.
    h2 = H2Client(stack.ports["relay_eng"], stack.pki.ca_cert)
    try:
        sid = h2.open(
            "web",
            [
                (AUTHORIZATION_HEADER, f"Bearer {stack.token}".encode()),
                (GATEWAY_HEADER, stack.gateway_id.encode()),
            ],
        )
        h2.flush()
        wait_until("the answer", lambda: answered(h2, sid))
        answer = h2.forget(sid)
    finally:
        h2.close()
    assert answer.status == 403, answer
    assert answer.headers[ERROR_HEADER] == b"session-required", answer.headers
    assert b"--reason" in answer.headers[REASON_HEADER], answer.headers

    gateway = audit_records(stack, "gateway")
    refused = one(gateway, "stream.refused", who="erin", result="session-required")
    assert refused["target"] == "web" and refused["session"] is None, refused
    assert not records_of(gateway, "stream.opened", who="erin")
    relay = audit_records(stack, "relay")
    assert records_of(relay, "session.requested", who="erin", way="unattended")
    assert records_of(relay, "session.denied", who="erin", refusal="session-required")


# -- ask and approve, deny, nobody answers ----------------------------------------------------


def test_a_request_approved_with_gateway_approve_loads_the_page(site: Site) -> None:
    stack = site.stack
    reason = "ticket 4711: recalibrate camera"
    proc = site.connect("erin", "--reason", reason)
    request = pending(site, "erin", proc)
    assert (request["reason"], request["targets"]) == (reason, ["web"]), request
    waiting = line_with(proc, "waiting for the plant to approve")
    assert "engineer erin" in waiting and reason in waiting, waiting

    # A page opened while the plant decides is held, not refused, and loads once approved.
    wait_until("the forward listening", lambda: port_open(stack.ports["forward"]), proc=proc)
    early: list[tuple[int, bytes]] = []
    browser = threading.Thread(
        target=lambda: early.append(get(stack.ports["forward"], "/", timeout=30))
    )
    browser.start()
    line_with(proc, "waits until the plant lets you in")
    assert not early, "the page loaded before the plant approved"

    session = control_json(stack, "approve", request["id"], "--minutes", "30", "--target", "web")
    assert (session["engineer"], session["targets"], session["permission"]) == (
        "erin",
        ["web"],
        "full",
    ), session
    let_in = line_with(proc, "the plant let you in")
    assert session["id"] in let_in and "full permission" in let_in, let_in
    browser.join(30)
    assert early and early[0][0] == 200 and b"/ws" in early[0][1], early
    status, body = get(stack.ports["forward"], "/")
    assert status == 200 and b"/ws" in body
    live = [s for s in stack.status()["sessions"] if s["id"] == session["id"]]
    assert live and live[0]["engineer"] == "erin", stack.status()["sessions"]

    gateway = audit_records(stack, "gateway")
    one(gateway, "session.requested", who="erin", request=request["id"], reason=reason)
    approved = one(gateway, "session.approved", request=request["id"], session=session["id"])
    assert approved["minutes"] == 30 and "control socket" in approved["who"], approved
    one(gateway, "session.started", session=session["id"], engineer="erin")
    assert len(records_of(gateway, "stream.opened", session=session["id"])) >= 2
    relay = audit_records(stack, "relay")
    one(relay, "session.requested", who="erin", way="reason", reason=reason)
    one(relay, "session.started", who="erin", session=session["id"])


def test_a_denial_reaches_the_engineer_with_its_reason(site: Site) -> None:
    stack = site.stack
    proc = site.connect("erin", "--reason", "ticket 4713: update the firmware")
    request = pending(site, "erin", proc)
    denied = control_json(stack, "deny", request["id"], "--reason", "not during the shift")
    assert denied["id"] == request["id"], denied
    code, lines = finished(proc)
    assert code == 1, lines
    assert f"request {request['id']} was not approved" in lines[-1], lines
    assert lines[-1].endswith(": not during the shift"), lines

    gateway = audit_records(stack, "gateway")
    record = one(gateway, "session.denied", request=request["id"], result="denied")
    assert record["reason"] == "not during the shift" and "control socket" in record["who"]
    assert not records_of(gateway, "session.approved", request=request["id"])
    relay = audit_records(stack, "relay")
    refused = [r for r in records_of(relay, "session.denied", who="erin", result="denied")]
    assert any(r["reason"].endswith("not during the shift") for r in refused), refused


def test_a_request_nobody_answers_expires_after_request_timeout(site: Site) -> None:
    stack = site.stack
    proc = site.connect("erin", "--reason", "ticket 4714: nobody is at the plant")
    request = pending(site, "erin", proc)
    code, lines = finished(proc, timeout=REQUEST_TIMEOUT + 15)
    assert code == 1, lines
    assert lines[-1] == (
        f"request {request['id']} was not approved: nobody at the plant answered within "
        f"{REQUEST_TIMEOUT} seconds"
    ), lines
    assert not control_json(stack, "requests"), "the expired request is still listed"

    gateway = audit_records(stack, "gateway")
    asked = one(gateway, "session.requested", request=request["id"])
    expired = one(gateway, "session.denied", request=request["id"], result="expired")
    assert expired["who"] == "gateway", expired
    waited = record_time(expired) - record_time(asked)
    assert REQUEST_TIMEOUT - 0.5 <= waited <= REQUEST_TIMEOUT + 2, waited
    relay = audit_records(stack, "relay")
    assert any(
        "nobody at the plant answered" in r["reason"]
        for r in records_of(relay, "session.denied", who="erin", result="denied")
    )


# -- codes --------------------------------------------------------------------------------------


def test_a_code_works_once_and_only_once(site: Site) -> None:
    stack = site.stack
    code = code_for(site, "--minutes", "15")
    first = site.connect("erin", "--code", code)
    session = session_of(line_with(first, "the plant let you in"))
    wait_until("the forward", lambda: port_open(stack.ports["forward"]), proc=first)
    status, body = get(stack.ports["forward"], "/")
    assert status == 200 and b"/ws" in body

    second = site.connect("erin", "--code", code, port_key="forward2")
    exit_code, lines = finished(second)
    assert exit_code == 1, lines
    assert "this code was used already" in lines[-1], lines
    assert first.alive(), "the first engineer's session carries on"

    gateway = audit_records(stack, "gateway")
    created = records_of(gateway, "code.created")[-1]
    one(gateway, "code.used", code=created["code"], session=session, who="erin")
    one(gateway, "session.started", session=session, engineer="erin")
    assert records_of(gateway, "code.failed", who="erin", result="used")
    relay = audit_records(stack, "relay")
    assert len(records_of(relay, "session.requested", who="erin", way="code")) >= 2
    one(relay, "session.started", who="erin", session=session)
    assert records_of(relay, "session.denied", refusal="code-invalid")
    for trail in (control(stack, "audit", "--json"), relay_command(stack, "audit", "--json")):
        assert trail.returncode == 0 and code not in trail.stdout, "a code's digits on record"


# -- ending a session stops what it carries -------------------------------------------------


def measure_stop(readers: dict[str, Download | StreamDownload], decided: float) -> None:
    """Each download's bytes stopped, and its connection closed, within a second of ``decided``
    (the audit record's time of the decision)."""
    for what, reader in readers.items():
        reader.wait_ended()
        assert reader.how in ("closed", "reset"), (what, reader.how)
        assert reader.last_byte is not None and reader.ended is not None
        late = reader.last_byte - decided
        assert late < STOP_WITHIN, f"{what}: bytes came {late:.3f}s after the decision"
        late = reader.ended - decided
        assert late < STOP_WITHIN, f"{what}: the stream ended {late:.3f}s after the decision"


@contextmanager
def downloading(site: Site, session: str) -> Iterator[dict[str, Download | StreamDownload]]:
    """Two downloads in ``session``, both under way: one through the engineer's forward, and
    one on a stream of a client that would never stop of its own accord (it does not hear the
    session end): that one stops only if the gateway cuts the session's streams."""
    stack = site.stack
    readers: dict[str, Download | StreamDownload] = {
        "through gateway connect": Download(stack.ports["forward"]),
        "on a stream that ignores the session's end": StreamDownload(
            stack, site.tokens["erin"], session
        ),
    }
    try:
        for reader in readers.values():
            reader.start()
        for reader in readers.values():
            reader.wait_flowing()
        yield readers
    finally:
        for reader in readers.values():
            reader.close()


def test_ending_a_session_stops_a_download_within_a_second(site: Site) -> None:
    stack = site.stack
    proc = site.connect("erin", "--code", code_for(site))
    session = session_of(line_with(proc, "the plant let you in"))
    wait_until("the forward", lambda: port_open(stack.ports["forward"]), proc=proc)
    with downloading(site, session) as readers:
        asked = time.time()
        ended = control_json(stack, "end", session, "--reason", "done for today")
        assert ended["id"] == session and len(ended["connections"]) == 2, ended
        records = audit_records(stack, "gateway")
        record = one(records, "session.ended", session=session)
        assert record_time(record) >= asked - 0.05, "the session ended before it was asked to"
        measure_stop(readers, record_time(record))
    code, lines = finished(proc)
    assert code == 0, lines
    assert lines[-1] == f"session {session} ended: ended by the plant: done for today", lines

    why = "ended by the plant: done for today"
    assert record["why"] == why and "control socket" in record["who"], record
    closed = records_of(records, "stream.closed", session=session)
    assert sum(r["bytes_from_target"] >= 8 << 20 for r in closed) == 2, closed
    relay = audit_records(stack, "relay")
    one(relay, "session.ended", session=session, why=why)


# -- five wrong codes ---------------------------------------------------------------------------


def test_five_wrong_codes_lock_code_entry_even_for_the_right_one(site: Site) -> None:
    stack = site.stack
    right = code_for(site)
    wrong = [f"{(int(right) + step) % 1_000_000:06d}" for step in range(1, 6)]
    for n in range(5):
        stack.ports[f"wrong{n}"] = free_port()
    clients = [site.connect("erin", "--code", c, port_key=f"wrong{n}") for n, c in enumerate(wrong)]
    told_lines = [finished(c) for c in clients]
    assert all(code == 1 for code, _ in told_lines), told_lines
    last = [lines[-1] for _, lines in told_lines]
    assert all("this code is not valid on this gateway" in line for line in last), last
    assert sum("code entry is locked until" in line for line in last) == 1, last

    proc = site.connect("erin", "--code", right)
    code, lines = finished(proc)
    assert code == 1, lines
    assert "code entry on this gateway is locked after 5 wrong codes, until " in lines[-1], lines

    locked = stack.status()["access"]["code_entry_locked_until"]
    assert locked, stack.status()["access"]
    assert control_json(stack, "access")["codes_locked_until"], "gateway access shows no lockout"
    gateway = audit_records(stack, "gateway")
    assert len(records_of(gateway, "code.failed", result="wrong", who="erin")) == 5
    one(gateway, "code.locked", who="gateway", failures=5)
    one(gateway, "code.failed", result="locked", who="erin")
    assert not records_of(
        gateway, "code.used", code=records_of(gateway, "code.created")[-1]["code"]
    )
    relay = audit_records(stack, "relay")
    assert len(records_of(relay, "session.denied", refusal="code-invalid")) >= 5
    one(relay, "session.denied", refusal="too-many-attempts")


# -- an approved session's end ----------------------------------------------------------------


def test_an_approved_session_expires_on_time(site: Site, expiring: Expiring) -> None:
    session = expiring.session
    left = record_time({"time": session["expires"]}) - time.time()
    code, lines = finished(expiring.proc, timeout=max(0.0, left) + 15)
    assert code == 0, lines
    assert any(line.startswith(f"the plant let you in: session {session['id']}") for line in lines)
    assert lines[-1] == f"session {session['id']} ended: expired", lines

    gateway = audit_records(site.stack, "gateway")
    started = one(gateway, "session.started", session=session["id"], engineer="ed")
    ended = one(gateway, "session.ended", session=session["id"], why="expired", who="gateway")
    lasted = record_time(ended) - record_time(started)
    assert 59.5 <= lasted <= 61.5, lasted
    relay = audit_records(site.stack, "relay")
    one(relay, "session.ended", who="ed", session=session["id"], why="expired")


# -- the mode -----------------------------------------------------------------------------------


def test_switching_access_off_stops_a_download_within_a_second(site: Site) -> None:
    stack = site.stack
    control_json(stack, "access", "unattended")
    proc = site.connect("erin")
    session = session_of(line_with(proc, "is online; open"))
    wait_until("the forward", lambda: port_open(stack.ports["forward"]), proc=proc)
    with downloading(site, session) as readers:
        asked = time.time()
        switched = control_json(stack, "access", "disabled")
        assert (switched["mode"], switched["previous"]) == ("disabled", "unattended"), switched
        assert session in switched["sessions_ended"], switched
        records = audit_records(stack, "gateway")
        record = one(records, "mode.changed", old="unattended", new="disabled")
        assert record_time(record) >= asked - 0.05
        measure_stop(readers, record_time(record))
    code, lines = finished(proc)
    assert code == 0, lines
    assert lines[-1] == f"session {session} ended: remote access was switched off", lines

    one(records, "session.ended", session=session, why="remote access was switched off")
    one(records, "session.started", session=session, implicit=True)
    closed = records_of(records, "stream.closed", session=session)
    assert sum(r["bytes_from_target"] >= 8 << 20 for r in closed) == 2, closed
    relay = audit_records(stack, "relay")
    one(relay, "session.ended", session=session, why="remote access was switched off")


def test_a_gateway_restart_keeps_the_chosen_mode(site: Site) -> None:
    stack = site.stack
    before = len(records_of(audit_records(stack, "gateway"), "mode.changed"))
    control_json(stack, "access", "unattended")
    stack.procs["gateway"].stop(signal.SIGTERM)
    stack.start_gateway()
    wait_until(
        "the control socket",
        (stack.layout.gateway_state / CONTROL_SOCKET).exists,
        proc=stack.procs["gateway"],
    )
    assert control_json(stack, "access")["mode"] == "unattended"
    assert stack.status()["access"]["mode"] == "unattended"
    # The mode is in force, not only shown: an engineer gets in without asking.
    proc = site.connect("erin")
    line_with(proc, "is online; open")
    wait_until("the forward", lambda: port_open(stack.ports["forward"]), proc=proc)
    assert get(stack.ports["forward"], "/")[0] == 200

    changes = records_of(audit_records(stack, "gateway"), "mode.changed")
    assert len(changes) == before + 1, changes[before:]
    assert (changes[-1]["old"], changes[-1]["new"]) == ("attended", "unattended"), changes[-1]


# -- the record ---------------------------------------------------------------------------------


def test_both_audit_trails_verify(site: Site) -> None:
    """Everything above is on record, and neither trail's chain is broken."""
    for side in SIDES:
        records = audit_records(site.stack, side)
        assert [r["seq"] for r in records] == list(range(1, len(records) + 1)), side
        assert all(r["sr"] and r["time"] for r in records), side
        verify_audit(site.stack, side)
