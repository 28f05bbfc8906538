"""Hostile header values and authorities: no secret and no raw peer byte reaches any log.

A raw HTTP/2 client (h2 with its outbound checks off, so it sends what a careless or hostile
client would) sends tokens with a trailing space, control characters, escape sequences, a 60 KB
``:authority``, invalid UTF-8 and a GOAWAY with an escape sequence in its reason.  Then every line
that every process wrote is searched: for the token, for ESC and other control characters, and
for anything longer than the log limits allow.  The relay goes on serving throughout.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import h2.events as ev
import pytest
from attrs import define
from h2.config import H2Configuration
from h2.connection import H2Connection

from tests.helpers.processes import Stack, fresh_stack, wait_until
from tests.helpers.rogue import closed_by_peer, tls_context

pytestmark = pytest.mark.e2e

CLIENT = "127.0.0.3"
LONGEST_LINE = 600
"""Well above any line of ours with peer text in it (prefixes of 48-300 characters)."""


@define
class Outcome:
    status: int | None = None
    error: bytes | None = None
    reason: bytes | None = None
    goaway: bytes | None = None
    goaway_code: int | None = None
    body: bytes = b""


class RawClient:
    """One TLS connection speaking HTTP/2 with h2's outbound checks off: sends what it is given."""

    def __init__(self, stack: Stack) -> None:
        raw = socket.create_connection(
            ("127.0.0.1", stack.ports["relay_eng"]), timeout=10, source_address=(CLIENT, 0)
        )
        self.sock = tls_context(stack.pki.ca_cert).wrap_socket(raw, server_hostname="localhost")
        self.h2 = H2Connection(
            H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.h2.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def ask(
        self, authority: bytes, headers: list[tuple[bytes, bytes]], *, send: bytes = b""
    ) -> Outcome:
        """One CONNECT; what came back (an answer, or the relay's GOAWAY)."""
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", authority), *headers])
        if send:
            self.h2.send_data(sid, send)
        self.flush()
        outcome = Outcome()
        end = time.monotonic() + 15
        while time.monotonic() < end:
            try:
                data = self.sock.recv(1 << 20)
            except (OSError, ssl.SSLError):
                return outcome
            if not data:
                return outcome
            for event in self.h2.receive_data(data):
                if isinstance(event, ev.ResponseReceived) and event.stream_id == sid:
                    found = dict(event.headers)
                    outcome.status = int(found[b":status"])
                    outcome.error = found.get(b"tunnel-error")
                    outcome.reason = found.get(b"tunnel-reason")
                elif isinstance(event, ev.DataReceived) and event.stream_id == sid:
                    outcome.body += event.data
                    self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, ev.ConnectionTerminated):
                    outcome.goaway, outcome.goaway_code = event.additional_data, event.error_code
                    return outcome
                elif (
                    isinstance(event, ev.StreamEnded | ev.StreamReset)
                    and event.stream_id == sid
                    and (outcome.status != 200 or isinstance(event, ev.StreamEnded))
                ):
                    return outcome
            self.flush()
            if outcome.status == 200 and b"\r\n\r\n" in outcome.body:
                return outcome
        return outcome


def ask_once(
    stack: Stack, authority: bytes, headers: list[tuple[bytes, bytes]], send: bytes = b""
) -> Outcome:
    client = RawClient(stack)
    try:
        return client.ask(authority, headers, send=send)
    finally:
        client.close()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with fresh_stack() as s:
        s.start_processor()
        s.start_relay()
        s.start_gateway()
        yield s


def bearer(value: bytes) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + value)


def gateway(stack: Stack, value: bytes | None = None) -> tuple[bytes, bytes]:
    return (b"gateway", stack.gateway_id.encode() if value is None else value)


def test_hostile_headers_are_answered_and_never_reach_a_log(stack: Stack) -> None:
    token = stack.token.encode()
    huge = b"a" * 60_000
    problems: list[str] = []

    def expect(name: str, outcome: Outcome, **want: object) -> None:
        for key, value in want.items():
            got = getattr(outcome, key)
            if key in ("goaway", "reason"):
                if got is None or str(value).encode() not in got:
                    problems.append(f"{name}: {key} {got!r} lacks {value!r}")
            elif isinstance(value, frozenset):
                if got not in value:
                    problems.append(f"{name}: {key} is {got!r}, not one of {sorted(value)}")
            elif got != value:
                problems.append(f"{name}: {key} is {got!r}, not {value!r}")

    # Malformed for h2: the connection ends, with a reason the engineer can act on.
    for name, value in {
        "trailing space": b"Bearer " + token + b" ",
        "leading space": b" Bearer " + token,
        "CR LF": b"Bearer " + token + b"\r\nx-forged: yes",
        "NUL": b"Bearer " + token + b"\x00",
    }.items():
        outcome = ask_once(stack, b"web", [(b"authorization", value), gateway(stack)])
        expect(name, outcome, goaway_code=1, goaway="check the token for spaces")
    # Well-formed for h2, wrong for us: refused with a reason, the connection carries on.
    expect(
        "ESC in the token",
        ask_once(stack, b"web", [bearer(b"\x1b]0;owned\x07" + token), gateway(stack)]),
        status=401,
        error=b"bad-token",
    )
    for name, authority in {
        "ESC in the authority": b"\x1b[2J\x1b]0;owned\x07web",
        "60 KB authority": huge,
        "invalid UTF-8 authority": b"\xff\xfe\xc3(web",
    }.items():
        outcome = ask_once(stack, authority, [bearer(token), gateway(stack)])
        expect(name, outcome, status=400, error=b"bad-request", reason="is not a target name")
    expect(
        "60 KB authority, no token",
        ask_once(stack, huge, [gateway(stack)]),
        status=401,
        error=b"bad-token",
    )
    for name, value in {
        "ESC in the gateway header": b"\x1b[31mplant\x1b[0m",
        "60 KB gateway header": huge,
        "invalid UTF-8 gateway header": b"\xc3(\xff",
    }.items():
        outcome = ask_once(stack, b"web", [bearer(token), gateway(stack, value)])
        # Not a gateway this engineer may reach, or none at all: refused before the plant.
        expect(name, outcome, error=frozenset({b"not-authorised", b"unknown-gateway"}))
        if outcome.reason is not None and len(outcome.reason) > 300:
            problems.append(f"{name}: a reason of {len(outcome.reason)} bytes came back")
    # A client's GOAWAY with an escape sequence in its reason.
    client = RawClient(stack)
    client.h2.close_connection(additional_data=b"\x1b[31mbye\r\nforged line" + b"x" * 5000)
    client.flush()
    closed_by_peer(client.sock, 10)  # read what the relay sent: closing unread would reset
    client.close()
    # And through all that, the relay serves a good request.
    request = b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
    good = ask_once(stack, b"web", [bearer(token), gateway(stack)], send=request)
    expect("a good request", good, status=200)
    if not good.body.startswith(b"HTTP/1.1 200"):
        problems.append(f"a good request: {good.body[:100]!r}")
    assert not problems, "\n".join(problems)

    relay = stack.procs["relay"]
    wait_until(
        "the relay to log the client's GOAWAY",
        lambda: "bye" in relay.text(),
        deadline=10,
        proc=relay,
    )
    assert_logs_clean(stack, token.decode())
    text = relay.text()
    assert "HTTP/2 protocol error from engineer connection from 127.0.0.3:" in text, (
        "the protocol error line names no peer address"
    )
    assert "ProtocolError: Received header value surrounded by whitespace" in text


def assert_logs_clean(stack: Stack, token: str) -> None:
    problems = []
    for name, proc in stack.procs.items():
        raw = proc.log.read_bytes()
        text = raw.decode("utf-8", "replace")
        for needle in (token, token[:12], token[-12:]):
            if needle in text:
                problems.append(f"{name}: the token ({needle!r}) is in the log")
        if b"\x1b" in raw:
            problems.append(f"{name}: a raw ESC is in the log")
        for number, line in enumerate(text.split("\n"), 1):
            bad = sorted({hex(ord(c)) for c in line if ord(c) < 0x20 or ord(c) == 0x7F})
            if bad:
                problems.append(f"{name} line {number}: control characters {bad}: {line[:120]!r}")
            if len(line) > LONGEST_LINE:
                problems.append(f"{name} line {number}: {len(line)} characters: {line[:120]!r}")
            if "\ufffd" in line:
                problems.append(f"{name} line {number}: undecodable bytes: {line[:120]!r}")
        if "Traceback" in text:
            problems.append(f"{name}: a traceback")
    assert not problems, "\n".join(problems[:40])
