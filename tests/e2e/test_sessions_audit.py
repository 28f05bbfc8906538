"""Who may ask is the relay's to decide, and both sides keep the record.

An engineer the relay does not authorise for a gateway and one whose token has expired are
refused at the relay, before anything reaches the plant: the client's line says why, the relay's
audit trail and ``relay_auth_failures_total`` have them, and the gateway's trail has no trace of
them.  An engineer the vendor removes while their request waits is cut off within a second: the
request is withdrawn at the plant and the token refused from then on.  Once the daemons have
stopped, ``gateway audit --verify`` and ``gateway relay audit --verify`` still pass on what they
wrote (the commands read the files themselves).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.cli.control import CONTROL_SOCKET
from gateway.promtext import metric_value
from tests.helpers.consent import (
    SIDES,
    add_engineer,
    audit_records,
    expired_engineer,
    finished,
    records_of,
    relay_command,
    verify_audit,
)
from tests.helpers.processes import Proc, Stack, fresh_stack, http_get, wait_until

pytestmark = pytest.mark.e2e

OUTSIDER = "otto"
"""Authorised for other plants' gateways only."""
EXPIRED = "exa"
REMOVED = "rex"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with fresh_stack() as s:
        s.write_configs(mode="attended")
        s.start_processor()
        s.start_relay()
        s.start_gateway()
        socket = s.layout.gateway_state / CONTROL_SOCKET
        wait_until("the control socket", socket.exists, proc=s.procs["gateway"])
        yield s


def auth_failures(stack: Stack, kind: str) -> float:
    text = http_get(stack.url("relay_metrics", "/metrics")).decode()
    return metric_value(text, "relay_auth_failures_total", {"kind": kind}) or 0.0


def ask(stack: Stack, name: str, token: str) -> Proc:
    return stack.start_connect(
        f"connect-{name}",
        token=token,
        extra=["--reason", f"ticket 4720: {name} asks"],
        wait_listening=False,
    )


def assert_nothing_reached_the_plant(stack: Stack, name: str) -> None:
    gateway = audit_records(stack, "gateway")
    mentions = [r for r in gateway if name in (str(r.get("who")), str(r.get("engineer")))]
    assert not mentions, f"the gateway has records of {name}: {mentions}"
    assert not stack.status()["access"]["requests"], "a request reached the plant"


def test_an_engineer_not_authorised_for_the_gateway_is_refused_at_the_relay(
    stack: Stack,
) -> None:
    token = add_engineer(stack, OUTSIDER, "other-plant-*")
    before = auth_failures(stack, "not_authorised")
    code, lines = finished(ask(stack, OUTSIDER, token))
    assert code == 1, lines
    assert lines[-1] == (
        f"engineer '{OUTSIDER}' is not authorised for gateway '{stack.gateway_id}' on this relay"
    ), lines

    assert auth_failures(stack, "not_authorised") == before + 1
    relay = audit_records(stack, "relay")
    refused = records_of(relay, "engineer.not_authorised", who=OUTSIDER)
    assert len(refused) == 1, relay
    assert refused[0]["gateway"] == stack.gateway_id and refused[0]["result"] == "refused"
    assert not records_of(relay, "session.requested", who=OUTSIDER)
    assert_nothing_reached_the_plant(stack, OUTSIDER)


def test_an_expired_token_is_refused_at_the_relay(stack: Stack) -> None:
    token = expired_engineer(stack, EXPIRED, stack.gateway_id)
    before = auth_failures(stack, "token_expired")
    code, lines = finished(ask(stack, EXPIRED, token))
    assert code == 1, lines
    assert lines[-1].startswith(f"the token of engineer '{EXPIRED}' expired on "), lines
    assert "ask the relay's operator for a new one" in lines[-1], lines

    assert auth_failures(stack, "token_expired") == before + 1
    relay = audit_records(stack, "relay")
    failed = records_of(relay, "engineer.login_failed", who=EXPIRED, reason="token-expired")
    assert len(failed) == 1, relay
    assert "SR 1.11" in failed[0]["sr"], failed[0]
    assert not records_of(relay, "session.requested", who=EXPIRED)
    assert_nothing_reached_the_plant(stack, EXPIRED)


def test_a_removed_engineer_is_cut_off_and_refused(stack: Stack) -> None:
    token = add_engineer(stack, REMOVED, stack.gateway_id)
    wait_until(  # the relay reads engineers.toml again within a second of a change
        "the relay to know the new engineer",
        lambda: bool(records_of(audit_records(stack, "relay"), "engineer.added", who=REMOVED)),
    )
    proc = ask(stack, REMOVED, token)
    wait_until(
        "the request at the plant",
        lambda: any(r["engineer"] == REMOVED for r in stack.status()["access"]["requests"]),
        proc=proc,
    )
    removed = relay_command(stack, "remove-engineer", REMOVED)
    assert removed.returncode == 0, removed.stderr
    code, lines = finished(proc)
    assert code == 1, lines
    assert any("your engineer access was removed on the relay" in line for line in lines), lines
    assert lines[-1] == "the engineer token was not accepted", lines

    relay = audit_records(stack, "relay")
    gone = records_of(relay, "engineer.removed", who=REMOVED)
    assert len(gone) == 1, relay
    after = [r for r in relay if r["seq"] > gone[0]["seq"]]
    assert records_of(after, "engineer.login_failed", reason="bad-token"), after
    gateway = audit_records(stack, "gateway")
    withdrawn = records_of(gateway, "session.denied", engineer=REMOVED, result="withdrawn")
    assert len(withdrawn) == 1, gateway
    assert not records_of(gateway, "session.started", engineer=REMOVED)
    assert not stack.status()["access"]["requests"], "the request is still waiting"


def test_both_trails_verify_once_the_daemons_have_stopped(stack: Stack) -> None:
    stack.stop_all()
    for side in SIDES:
        verify_audit(stack, side)
    relay = {r["event"] for r in audit_records(stack, "relay")}
    assert {
        "engineer.added",
        "engineer.removed",
        "engineer.not_authorised",
        "engineer.login_failed",
        "session.requested",
    } <= relay, relay
    gateway = {r["event"] for r in audit_records(stack, "gateway")}
    assert {"session.requested", "session.denied"} <= gateway, gateway
