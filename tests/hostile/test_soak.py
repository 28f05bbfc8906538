"""Ten thousand of the same thing in a row: failed handshakes, bad tokens, short streams.

After each run the processes must look as they did before it: serving, the same number of open
file descriptors and reactor timers, resident memory within a few MiB of where it was after a
warm-up (allocators keep what they once used, so growth is measured from after the warm-up, not
from start). The counts are multiplied by ``GATEWAY_SOAK_SCALE`` (default 1.0) for long soaks on
demand, e.g. ``GATEWAY_SOAK_SCALE=10 pytest tests/hostile/test_soak.py``.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator

import pytest
from attrs import frozen

from tests.helpers.clients import download_and_verify, expected
from tests.helpers.pki import make_other_ca_gateway
from tests.helpers.processes import Stack, fresh_stack, wait_until
from tests.helpers.rogue import H2Client, PeerClosed, in_parallel, metrics, tls_context

pytestmark = pytest.mark.e2e

SCALE = float(os.environ.get("GATEWAY_SOAK_SCALE", "1.0"))
WARM_UP = 500
RSS_GROWTH_MIB = 20
FD_SLACK = 3
TIMER_SLACK = 3


def scaled(n: int) -> int:
    return max(1, round(n * SCALE))


LOCKOUT = 1
"""Seconds a source stays locked out after too many bad tokens (the relay's minimum): the bad
token soak locks 127.0.0.1 out, and the tests after it log in from there again."""


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with fresh_stack() as s:
        # Short streams come and go faster than a processor connection is gone (which frees the
        # stream's slot): room for the window of streams in flight and those still closing.
        s.write_configs(
            engineers={"login_lockout": LOCKOUT},
            limits={"streams_per_target": 1024, "streams_per_engineer": 1024},
        )
        s.start_processor()
        s.start_relay()
        s.start_gateway()
        s.start_connect()
        yield s


@frozen
class Health:
    """What a leak would show in one process: memory, descriptors, timers, open streams."""

    name: str
    rss: float
    fds: float
    timers: float
    streams: float

    def __str__(self) -> str:
        return (
            f"{self.name}: rss {self.rss / 2**20:.1f} MiB, {self.fds:g} fds, "
            f"{self.timers:g} timers, {self.streams:g} streams"
        )


def health(stack: Stack, name: str) -> Health:
    port = {"relay": "relay_metrics", "gateway": "gw_metrics"}[name]
    values = metrics(stack.url(port, "/metrics"))
    return Health(
        name,
        values["process_resident_memory_bytes"],
        values["process_open_fds"],
        values[f"{name}_reactor_delayed_calls"],
        values[f"{name}_streams_active"],
    )


def settled(stack: Stack, name: str) -> Health:
    """Health once no stream is open any more (closing takes a reactor turn or two)."""
    wait_until(
        f"{name} to have no open streams",
        lambda: health(stack, name).streams == 0,
        deadline=30,
        proc=stack.procs[name],
    )
    return health(stack, name)


def assert_back_to(stack: Stack, baseline: Health) -> Health:
    """Descriptors and timers return to the baseline (within a small slack), RSS grew little."""
    name = baseline.name

    def back() -> bool:
        now = health(stack, name)
        return (
            now.streams == 0
            and now.fds <= baseline.fds + FD_SLACK
            and now.timers <= baseline.timers + TIMER_SLACK
        )

    try:
        wait_until(f"{name} to settle", back, deadline=30, proc=stack.procs[name])
    except AssertionError:
        raise AssertionError(
            f"{name} did not settle:\n  before {baseline}\n  after  {health(stack, name)}"
        ) from None
    now = health(stack, name)
    grown = (now.rss - baseline.rss) / 2**20
    assert grown < RSS_GROWTH_MIB, f"{name} RSS grew {grown:.1f} MiB:\n  {baseline}\n  {now}"
    return now


def auth_failures(stack: Stack, kind: str) -> float:
    return stack.relay_metric(f'relay_auth_failures_total{{kind="{kind}"}}') or 0.0


def refusals(stack: Stack) -> float:
    """Logins refused for a bad token or, once locked out, for too many attempts."""
    return auth_failures(stack, "engineer_token") + auth_failures(stack, "too_many_attempts")


def assert_still_serving(stack: Stack) -> None:
    assert stack.relay_metric("relay_gateways_connected") == 1.0
    assert download_and_verify(stack.ports["forward"], 1 << 20, timeout=30) == 1 << 20


def _serving(stack: Stack) -> bool:
    """A small download goes through (not while the relay still locks the source out: the
    engineer client then answers the browser with a 429 page, which the download refuses)."""
    try:
        return download_and_verify(stack.ports["forward"], 1 << 10, timeout=5) == 1 << 10
    except OSError:
        return False
    except AssertionError as refused:
        if "answered 429" in str(refused):
            return False
        raise


def report(what: str, count: int, started: float, *states: Health) -> None:
    took = time.monotonic() - started
    print(f"\n{what}: {count} in {took:.1f}s ({count / took:.0f}/s)")
    for state in states:
        print(f"  {state}")


# -- failed handshakes ----------------------------------------------------------------------------


def _handshake_attempts(stack: Stack) -> list[Callable[[], None]]:
    """Three ways to fail at the gateway listener: no certificate, another CA's certificate,
    bytes that are not TLS. Each waits for the relay to end the connection."""
    other_cert, other_key = make_other_ca_gateway(stack.workdir / "soak", stack.gateway_id)
    anonymous = tls_context(stack.pki.ca_cert)
    impostor = tls_context(stack.pki.ca_cert, other_cert, other_key)
    garbage = random.Random(7).randbytes(64)
    port = stack.ports["relay_gw"]

    def with_tls(ctx: ssl.SSLContext) -> Callable[[], None]:
        def attempt() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
                try:
                    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                        tls.recv(1)  # TLS 1.3: the refusal arrives after our Finished
                except (OSError, ssl.SSLError):
                    pass

        return attempt

    def not_tls() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            try:
                raw.sendall(garbage)
                while raw.recv(4096):
                    pass
            except OSError:
                pass

    return [with_tls(anonymous), with_tls(impostor), not_tls]


def _fail_handshakes(stack: Stack, attempts: list[Callable[[], None]], count: int) -> None:
    before = auth_failures(stack, "gateway_handshake")
    batch = {str(i): attempts[i % len(attempts)] for i in range(count)}
    in_parallel(batch, workers=12)
    wait_until(
        f"the relay to count {count} failed handshakes",
        lambda: auth_failures(stack, "gateway_handshake") >= before + count,
        deadline=30,
    )
    assert auth_failures(stack, "gateway_handshake") == before + count


def test_10000_failed_handshakes_leave_the_relay_serving_with_flat_resources(
    stack: Stack,
) -> None:
    attempts = _handshake_attempts(stack)
    _fail_handshakes(stack, attempts, WARM_UP)
    baseline = settled(stack, "relay")
    count = scaled(10_000)
    started = time.monotonic()
    _fail_handshakes(stack, attempts, count)
    after = assert_back_to(stack, baseline)
    report("failed handshakes", count, started, baseline, after)
    assert_still_serving(stack)


# -- bad engineer tokens --------------------------------------------------------------------------


def _bad_token_headers(stack: Stack) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer rsg_not-a-token"), (b"gateway", stack.gateway_id.encode())]


REFUSED = {(401, b"bad-token"), (429, b"too-many-attempts")}
"""A bad token is refused as such until its source has failed too often; then the source is
locked out (``[engineers] login_failures``) and refused before any token is looked at."""


def _refused_on_one_connection(stack: Stack, count: int) -> int:
    """Pipeline ``count`` CONNECTs with a bad token on one connection; every one must be refused,
    as a bad token or, once the source is locked out, as too many attempts."""
    client = H2Client(stack.ports["relay_eng"], stack.pki.ca_cert)
    headers = _bad_token_headers(stack)
    sent = refused = 0
    try:
        while refused < count:
            window = min(client.max_concurrent, 256)
            while sent < count and len(client.streams) < window:
                client.open("web", headers)
                sent += 1
            client.pump()
            for sid in [sid for sid, r in client.streams.items() if r.done]:
                answer = client.finish(sid)
                kind = (answer.status, answer.headers.get(b"tunnel-error"))
                assert kind in REFUSED, f"stream {sid}: {answer}"
                refused += 1
    finally:
        client.close()
    return refused


def _refused_on_a_fresh_connection(stack: Stack) -> None:
    client = H2Client(stack.ports["relay_eng"], stack.pki.ca_cert)
    try:
        sid = client.open("web", _bad_token_headers(stack))
        while not client.streams[sid].done:
            client.pump()
        answer = client.finish(sid)
        assert (answer.status, answer.headers.get(b"tunnel-error")) in REFUSED, answer
    finally:
        client.close()


def test_10000_bad_tokens_are_each_refused_with_flat_resources(stack: Stack) -> None:
    _refused_on_one_connection(stack, WARM_UP)
    baseline = settled(stack, "relay")
    before = refusals(stack)
    count, fresh = scaled(10_000), scaled(300)
    started = time.monotonic()
    assert _refused_on_one_connection(stack, count) == count
    in_parallel({str(i): lambda: _refused_on_a_fresh_connection(stack) for i in range(fresh)}, 8)
    wait_until(
        "the relay to count every refused login",
        lambda: refusals(stack) >= before + count + fresh,
        deadline=10,
    )
    assert refusals(stack) == before + count + fresh
    assert auth_failures(stack, "too_many_attempts") > 0, "the source was never locked out"
    wait_until("the lockout to lift", lambda: _serving(stack), deadline=LOCKOUT + 10)
    after = assert_back_to(stack, baseline)
    report("bad tokens", count + fresh, started, baseline, after)
    assert_still_serving(stack)


# -- short streams through the real tunnel --------------------------------------------------------

REQUEST = b"GET /download?size=10 HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"


def _check_answer(sid: int, body: bytes) -> None:
    head, _, payload = bytes(body).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), f"stream {sid}: {bytes(body)[:200]!r}"
    assert payload == expected(0, 10), f"stream {sid}: body {payload!r}"


def _streams_through_the_tunnel(stack: Stack, count: int, *, window: int = 48) -> None:
    """Open ``count`` CONNECT streams to ``web``, each a tiny HTTP exchange, then close them:
    most by ending our side after the answer, every tenth by RST_STREAM as soon as it opens."""
    client = H2Client(stack.ports["relay_eng"], stack.pki.ca_cert)
    headers = [
        (b"authorization", f"Bearer {stack.token}".encode()),
        (b"gateway", stack.gateway_id.encode()),
    ]
    sent = closed = 0
    requested: set[int] = set()
    try:
        while closed < count:
            while sent < count and len(client.streams) < window:
                client.open("web", headers)
                sent += 1
            try:
                client.pump()
            except PeerClosed as e:
                raise AssertionError(f"relay closed the engineer connection: {e}") from None
            for sid, result in list(client.streams.items()):
                if result.reset is not None or result.status not in (None, 200):
                    raise AssertionError(f"stream {sid} failed: {result}")
                if result.status == 200 and sid not in requested:
                    if sid % 20 == 1:  # client stream ids are odd: every tenth stream
                        client.reset(sid)
                        client.forget(sid)
                        closed += 1
                        continue
                    requested.add(sid)
                    client.send(sid, REQUEST)
                elif result.ended:
                    _check_answer(sid, bytes(result.body))
                    client.end(sid)
                    client.forget(sid)
                    requested.discard(sid)
                    closed += 1
            client.flush()
    finally:
        client.close()


def test_10000_streams_opened_and_closed_leak_nothing(stack: Stack) -> None:
    _streams_through_the_tunnel(stack, WARM_UP)
    relay_before, gateway_before = settled(stack, "relay"), settled(stack, "gateway")
    opened = 'gateway_streams_total{result="opened"}'
    before = metrics(stack.url("gw_metrics", "/metrics"))[opened]
    count = scaled(10_000)
    started = time.monotonic()
    _streams_through_the_tunnel(stack, count)
    assert metrics(stack.url("gw_metrics", "/metrics"))[opened] == before + count
    relay_after = assert_back_to(stack, relay_before)
    gateway_after = assert_back_to(stack, gateway_before)
    report("streams", count, started, relay_before, relay_after, gateway_before, gateway_after)
    assert_still_serving(stack)
