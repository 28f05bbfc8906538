"""Refusals a browser can read, end to end: a refused or failed stream to an ``http`` target
reaches the browser as a small page with the engineer client's own one-line reason, instead of
a reset connection (issue 16, item 5).

Real relay, gateway and ``gateway connect`` processes on loopback, unattended: ``halted`` is an
``http`` target whose processor is not running, ``ghost`` is on no allowlist, and a ``tcp``
target's refusal keeps the old cut for bytes that are not HTTP.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator

import pytest

from tests.helpers.consent import told
from tests.helpers.processes import Stack, fresh_stack, wait_until

pytestmark = pytest.mark.e2e

TIMEOUT = 15.0
HALTED = """
[[target]]
name = "halted"
address = "127.0.0.1:{port}"
kind = "http"
connect_timeout = 2
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with fresh_stack() as stack:
        halted = HALTED.format(port=stack.ports["dead"])
        stack.write_configs(mode="unattended", extra_targets=halted)
        stack.start_processor()
        stack.start_relay()
        stack.start_gateway()
        yield stack


def get(stack: Stack, port_key: str, accept: str = "text/html") -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", stack.ports[port_key], timeout=TIMEOUT)
    connection.request("GET", "/", headers={"Accept": accept})
    return connection.getresponse()


def test_a_dead_processor_is_a_502_page_with_the_clients_reason(stack: Stack) -> None:
    proc = stack.start_connect("connect-halted", target="halted", port_key="forward")
    wait_until("the session", lambda: any("is online" in line for line in told(proc)), proc=proc)
    response = get(stack, "forward")
    body = response.read().decode()
    assert response.status == 502, body
    assert response.getheader("x-gateway-refused") == "target-unreachable"
    lines = [line for line in told(proc) if "halted" in line and "online" not in line]
    assert lines, told(proc)
    assert lines[-1].replace("'", "&#x27;") in body, (lines, body)


def test_a_target_on_no_allowlist_is_a_403_page_and_json_for_json(stack: Stack) -> None:
    proc = stack.start_connect("connect-ghost", target="ghost", port_key="forward2")
    wait_until("the session", lambda: any("is online" in line for line in told(proc)), proc=proc)
    response = get(stack, "forward2", accept="application/json")
    assert response.status == 403
    assert response.getheader("content-type") == "application/json"
    answer = response.read()
    assert b'"error": "target-not-allowed"' in answer, answer
    assert proc.popen.poll() is None, "the client ended over one refused stream"


def test_bytes_that_are_not_http_to_a_tcp_target_are_cut_as_before(stack: Stack) -> None:
    proc = stack.start_connect("connect-stopped", target="stopped", port_key="forward3")
    wait_until("the session", lambda: any("is online" in line for line in told(proc)), proc=proc)
    with socket.create_connection(("127.0.0.1", stack.ports["forward3"]), timeout=TIMEOUT) as s:
        s.sendall(b"\x16\x03\x01\x00\x05hello")
        try:
            received = s.recv(1024)
        except ConnectionResetError:
            received = b""
    assert received == b"", received
