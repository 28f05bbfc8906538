"""Hostile bytes at both ends of the tunnel: the party concerned is dropped, nobody else notices.

Against the relay: a client holding a *valid* gateway certificate (for another gateway id, so the
real gateway's tunnel stays the registered one) sends garbage, truncated and fuzzed HTTP/2; raw
clients send bytes that are not TLS or stop half-way through a record. Against the gateway: a
rogue relay (holding the relay's certificate, so the gateway trusts it) does the same; the gateway
must drop it, log why, survive, and come up by itself once the real relay takes the port.

After each fault the real gateway's tunnel must be the same one (its connect count unchanged), the
relay must still count one gateway, and a download through the real ``gateway connect`` must be
byte-exact. Fuzzing is seeded (``GATEWAY_FUZZ_SEED``) so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.pki import issue_gateway_certificate
from gateway.relay.credentials import add_engineer
from tests.helpers.clients import download_and_verify
from tests.helpers.processes import Stack, make_stack, running_stack, wait_until
from tests.helpers.rogue import (
    BAD_HPACK,
    CONNECT_WEB,
    CONTINUATION,
    DATA,
    END_HEADERS,
    GOAWAY,
    HEADERS,
    PREFACE,
    FrameReader,
    H2Client,
    Misbehaviour,
    RogueRelay,
    broken_frames,
    closed_by_peer,
    frame,
    fuzz_frames,
    hangs_up,
    hpack_block,
    in_parallel,
    settings,
    tls_context,
    tls_garbage,
    wait_for_frame,
)

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("GATEWAY_FUZZ_SEED", "20240917"))
FUZZ_CONNECTIONS = 300
INTRUDER = "intruder-gateway"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as s:
        yield s


@pytest.fixture(scope="module")
def intruder(stack: Stack) -> tuple[Path, Path]:
    """A genuine certificate from the relay's CA, for a gateway id other than the real one."""
    cert, key = stack.workdir / "intruder.pem", stack.workdir / "intruder.key"
    issue_gateway_certificate(stack.pki.ca_cert, stack.pki.ca_key, cert, key, gateway_id=INTRUDER)
    return cert, key


@pytest.fixture
def connects(stack: Stack) -> int:
    """How many times the real gateway has connected so far (must not change during a test)."""
    count: int = stack.status()["tunnel"]["connects"]
    return count


def _tls(stack: Stack, identity: tuple[Path, Path] | None, port: str = "relay_gw") -> ssl.SSLSocket:
    cert, key = identity if identity is not None else (None, None)
    raw = socket.create_connection(("127.0.0.1", stack.ports[port]), timeout=10)
    return tls_context(stack.pki.ca_cert, cert, key).wrap_socket(raw, server_hostname="localhost")


def _raw(stack: Stack, port: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", stack.ports[port]), timeout=10)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what we can; a peer that hangs up half-way through our garbage is doing its job."""
    try:
        sock.sendall(data)
    except (OSError, ssl.SSLError):
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _assert_unharmed(stack: Stack, connects: int) -> None:
    """The relay lives, still counts only the real gateway, whose tunnel is the one it had."""
    relay = stack.procs["relay"]
    assert relay.popen.poll() is None, relay.tail()
    wait_until(
        "the relay to count only the real gateway",
        lambda: stack.relay_metric("relay_gateways_connected") == 1.0,
        deadline=15,
        proc=relay,
    )
    tunnel = stack.status()["tunnel"]
    assert tunnel["state"] == "up"
    assert tunnel["connects"] == connects, "the real gateway's tunnel was dropped or replaced"
    assert download_and_verify(stack.ports["forward"], 1 << 20, timeout=30) == 1 << 20
    for name in ("relay", "gateway"):
        text = stack.procs[name].text()
        at = text.find("Traceback")
        assert at < 0, f"{name} logged a traceback:\n{text[max(0, at - 400) : at + 3000]}"


# -- a client with a valid certificate, against the relay's gateway listener ----------------------


def test_random_bytes_after_tls_end_only_that_connection(
    stack: Stack, intruder: tuple[Path, Path], connects: int
) -> None:
    sock = _tls(stack, intruder)
    try:
        _send_quietly(sock, random.Random(SEED).randbytes(64 * 1024))
        how = hangs_up(sock, preface=True, deadline=10)
        assert how is not None, "the relay still holds the connection 10 s after 64 KiB of garbage"
    finally:
        _close(sock)
    _assert_unharmed(stack, connects)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(frame(HEADERS, END_HEADERS, 1, hpack_block(CONNECT_WEB))[:5], id="header-cut"),
        pytest.param(settings([(4, 65535), (5, 1 << 20)])[:-3], id="settings-cut"),
        pytest.param(settings() + frame(DATA, 0, 1, b"x" * 10, length=100), id="payload-cut"),
        pytest.param(
            settings() + frame(HEADERS, 0, 1, hpack_block(CONNECT_WEB)), id="no-end-headers"
        ),
    ],
)
def test_truncated_frame_then_close_ends_only_that_connection(
    stack: Stack, intruder: tuple[Path, Path], connects: int, data: bytes
) -> None:
    sock = _tls(stack, intruder)
    _send_quietly(sock, data)
    _close(sock)
    _assert_unharmed(stack, connects)


def test_broken_frames_each_end_only_their_own_connection(
    stack: Stack, intruder: tuple[Path, Path], connects: int
) -> None:
    def case(data: bytes) -> Callable[[], str | None]:
        def run() -> str | None:
            sock = _tls(stack, intruder)
            try:
                _send_quietly(sock, settings() + data)
                return hangs_up(sock, preface=True, deadline=10)
            finally:
                _close(sock)

        return run

    results = in_parallel({name: case(data) for name, data in broken_frames().items()}, 32)
    kept = sorted(name for name, how in results.items() if how is None)
    assert not kept, f"the relay kept these connections open: {kept}"
    _assert_unharmed(stack, connects)


def test_fuzzed_frames_end_only_their_own_connection(
    stack: Stack, intruder: tuple[Path, Path], connects: int
) -> None:
    """Random frames after a valid SETTINGS: whatever they are, the relay either rejects them or,
    as we never answer its PINGs, drops us by heartbeat; it never crashes or hangs."""

    def case(n: int) -> Callable[[], str | None]:
        def run() -> str | None:
            rng = random.Random(SEED + n)
            sock = _tls(stack, intruder)
            try:
                _send_quietly(sock, settings() + fuzz_frames(rng, rng.randint(1, 20)))
                return hangs_up(sock, preface=True, deadline=15)
            finally:
                _close(sock)

        return run

    results = in_parallel({str(n): case(n) for n in range(FUZZ_CONNECTIONS)}, 24)
    kept = [n for n, how in results.items() if how is None]
    assert not kept, f"still open after 15 s (replay: GATEWAY_FUZZ_SEED={SEED}, cases {kept})"
    _assert_unharmed(stack, connects)


def test_a_gateway_answering_connect_with_bad_hpack_is_dropped_and_the_engineer_told(
    stack: Stack, intruder: tuple[Path, Path], connects: int
) -> None:
    sock = _tls(stack, intruder)
    reader = FrameReader(preface=True)
    engineer = H2Client(stack.ports["relay_eng"], stack.pki.ca_cert)
    try:
        sock.sendall(settings())
        wait_until(
            "the intruder to be registered",
            lambda: stack.relay_metric("relay_gateways_connected") == 2.0,
            deadline=10,
        )
        # An engineer the relay lets ask for the intruder (erin may reach her gateway only).
        ivan = add_engineer(stack.layout.engineers, "ivan", gateways=[INTRUDER, stack.gateway_id])
        auth = [(b"authorization", f"Bearer {ivan}".encode())]
        sid = engineer.open("web", [*auth, (b"gateway", INTRUDER.encode())])
        engineer.flush()
        asked = wait_for_frame(sock, reader, lambda f: f.type == HEADERS, deadline=10)
        assert asked is not None, "the relay never forwarded the engineer's CONNECT"
        # ":status 200" (static index 8) followed by an index far past any table.
        bad = b"\x88" + BAD_HPACK["index-out-of-table"]
        sock.sendall(frame(HEADERS, END_HEADERS, asked.stream_id, bad))
        assert hangs_up(sock, preface=True, deadline=10, reader=reader) is not None
        wait_until("the engineer's answer", lambda: _pump_until_done(engineer, sid), deadline=10)
        answer = engineer.forget(sid)
        assert answer.status == 503, answer
        assert answer.headers.get(b"tunnel-error") == b"gateway-offline", answer.headers
        # The engineer's connection carries on: ask about the real gateway on it.
        info = engineer.open(
            "relay", [*auth, (b"gateway", stack.gateway_id.encode())], method="GET"
        )
        engineer.end(info)
        wait_until("the gateway info", lambda: _pump_until_done(engineer, info), deadline=10)
        assert engineer.forget(info).status == 200
    finally:
        engineer.close()
        _close(sock)
    _assert_unharmed(stack, connects)


def _pump_until_done(client: H2Client, sid: int) -> bool:
    if not client.streams[sid].done:
        client.pump()
    return client.streams[sid].done


# -- bytes that are not TLS, or stop half-way -----------------------------------------------------


def test_non_tls_bytes_and_cut_records_end_only_that_connection(
    stack: Stack, connects: int
) -> None:
    """Each case on both listeners; a cut record is followed by our half-close (EOF)."""
    cut = {"half-a-client-hello", "record-header-only"}

    def case(port: str, name: str, data: bytes) -> Callable[[], bool]:
        def run() -> bool:
            sock = _raw(stack, port)
            try:
                _send_quietly(sock, data)
                if name in cut:
                    sock.shutdown(socket.SHUT_WR)
                return closed_by_peer(sock, 10)
            finally:
                _close(sock)

        return run

    garbage = tls_garbage(random.Random(SEED))
    cases = {
        f"{port}:{name}": case(port, name, data)
        for port in ("relay_gw", "relay_eng")
        for name, data in garbage.items()
    }
    results = in_parallel(cases)
    kept = sorted(name for name, closed in results.items() if not closed)
    assert not kept, f"the relay kept these connections open: {kept}"
    _assert_unharmed(stack, connects)


# -- what a hostile peer must not be able to do for long ------------------------------------------


def test_connections_that_stall_before_http2_are_dropped(
    stack: Stack, intruder: tuple[Path, Path]
) -> None:
    """A peer that opens TCP, or half a handshake, or TLS without HTTP/2, and then waits must
    not hold a socket on the relay for ever (anyone can do this to the engineer listener)."""
    deadline = 20.0

    def tcp_only(port: str) -> socket.socket:
        return _raw(stack, port)

    def half_hello(port: str) -> socket.socket:
        sock = _raw(stack, port)
        sock.sendall(tls_garbage(random.Random(SEED))["half-a-client-hello"])
        return sock

    stalls: dict[str, Callable[[], socket.socket]] = {
        "gateway listener: TCP, nothing sent": lambda: tcp_only("relay_gw"),
        "gateway listener: half a ClientHello": lambda: half_hello("relay_gw"),
        "gateway listener: TLS done, no HTTP/2": lambda: _tls(stack, intruder),
        "engineer listener: TCP, nothing sent": lambda: tcp_only("relay_eng"),
        "engineer listener: half a ClientHello": lambda: half_hello("relay_eng"),
        "engineer listener: TLS done, no preface": lambda: _tls(stack, None, "relay_eng"),
    }

    def case(open_: Callable[[], socket.socket]) -> Callable[[], bool]:
        def run() -> bool:
            sock = open_()
            try:
                return closed_by_peer(sock, deadline)
            finally:
                _close(sock)

        return run

    results = in_parallel({name: case(open_) for name, open_ in stalls.items()})
    kept = sorted(name for name, closed in results.items() if not closed)
    assert not kept, f"the relay still holds these connections after {deadline:g} s: {kept}"


def test_a_protocol_error_hangs_up_at_once(stack: Stack, intruder: tuple[Path, Path]) -> None:
    """GOAWAY, then the connection closes: it is not held open until an abort timer fires."""
    sock = _tls(stack, intruder)
    try:
        sock.sendall(settings() + broken_frames()["settings-length-not-multiple-of-6"])
        goaway = wait_for_frame(sock, FrameReader(preface=True), lambda f: f.type == GOAWAY, 5)
        assert goaway is not None, "no GOAWAY for a malformed SETTINGS frame"
        assert closed_by_peer(sock, 2.0), "GOAWAY sent, but the connection stayed open for 2 s"
    finally:
        _close(sock)


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def test_anonymous_clients_cannot_make_the_relay_buffer_megabytes(
    stack: Stack, connects: int
) -> None:
    """No token, no certificate: on the engineer listener, frames that declare more than the
    relay's 1 MiB SETTINGS_MAX_FRAME_SIZE, or a header block continued for ever, are refused
    as they start, not buffered whole first."""
    pid = stack.procs["relay"].popen.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = _rss_kib(pid, "VmRSS")

    def oversized_frame() -> bytes:
        size = (1 << 24) - 1
        return frame(DATA, 0, 1, b"", length=size) + b"\x00" * (size - 1)

    def endless_header_block() -> bytes:
        start = frame(HEADERS, 0, 1, hpack_block(CONNECT_WEB))
        return start + frame(CONTINUATION, 0, 1, b"\x00" * (1 << 20)) * 62

    socks = []
    try:
        for make in (oversized_frame, oversized_frame, endless_header_block, endless_header_block):
            sock = _tls(stack, None, "relay_eng")
            socks.append(sock)
            _send_quietly(sock, PREFACE + settings() + make())
        peak = _rss_kib(pid, "VmHWM")
    finally:
        for sock in socks:
            _close(sock)
    grown_mib = (peak - before) / 1024
    assert grown_mib < 32, f"4 anonymous connections grew the relay's RSS by {grown_mib:.0f} MiB"
    _assert_unharmed(stack, connects)


# -- a rogue relay against the real gateway -------------------------------------------------------


def _send(data: bytes) -> Callable[[socket.socket], None]:
    return lambda sock: sock.sendall(data)


def _after_client_hello(data: bytes) -> Callable[[socket.socket], None]:
    def act(sock: socket.socket) -> None:
        sock.recv(65536)
        sock.sendall(data)

    return act


def rogue_script(rng: random.Random) -> list[Misbehaviour]:
    preface = PREFACE + settings()
    bad_connect = hpack_block(CONNECT_WEB) + BAD_HPACK["index-out-of-table"]
    return [
        Misbehaviour("garbage after TLS", _send(rng.randbytes(4096))),
        Misbehaviour(
            "truncated frame, then close",
            _send(preface + frame(HEADERS, END_HEADERS, 1, hpack_block(CONNECT_WEB))[:6]),
            closes=True,
        ),
        Misbehaviour("fuzzed frames", _send(preface + fuzz_frames(rng, 40))),
        Misbehaviour(
            "CONNECT with bad HPACK", _send(preface + frame(HEADERS, END_HEADERS, 1, bad_connect))
        ),
        Misbehaviour(
            "broken SETTINGS",
            _send(PREFACE + broken_frames()["settings-length-not-multiple-of-6"]),
        ),
        Misbehaviour(
            "stalls mid-frame",
            _send(preface + settings(ack=True) + frame(DATA, 0, 1, b"x" * 10, length=1000)),
        ),
        Misbehaviour("silent after TLS", lambda sock: None),
        Misbehaviour(
            "not TLS",
            _after_client_hello(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
            tls=False,
        ),
        Misbehaviour(
            "truncated ServerHello, then close",
            _after_client_hello(b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03"),
            tls=False,
            closes=True,
        ),
    ]


def test_gateway_drops_a_rogue_relay_and_comes_up_on_the_real_one() -> None:
    """Each misbehaviour meets a fresh gateway connection (the gateway redials by itself); then
    the real relay takes the port and the tunnel comes up without help. Everything that went
    wrong is collected, so one run shows all of it."""
    s, tmp = make_stack()
    script = rogue_script(random.Random(SEED))
    rogue = RogueRelay(
        s.ports["relay_gw"],
        cert=s.pki.relay_cert,
        key=s.pki.relay_key,
        ca=s.pki.ca_cert,
        script=script,
    )
    problems: list[str] = []
    try:
        s.start_processor()
        rogue.start()
        gateway = s.start_gateway(wait_up=False)
        wait_until(
            "the gateway to meet every misbehaviour",
            lambda: rogue.finished,
            deadline=150,
            proc=gateway,
        )
        rogue.stop()
        report = "\n".join(
            f"  {r.name}: closed by the gateway={r.peer_closed} after {r.seconds:.1f}s {r.error}"
            for r in rogue.rounds
        )
        print(f"rogue rounds:\n{report}")
        for r, m in zip(rogue.rounds, script, strict=True):
            if r.error or not (m.closes or r.peer_closed):
                problems.append(f"the gateway did not drop the rogue relay in {r.name!r}")
        assert gateway.popen.poll() is None, gateway.tail()
        # The real relay takes over the same port; the gateway comes up by itself.
        s.start_relay()
        s.wait_tunnel_up(deadline=30)
        s.start_connect()
        assert download_and_verify(s.ports["forward"], 1 << 20, timeout=30) == 1 << 20
        log = gateway.text()
        for expected in (
            "HTTP/2 protocol error from relay",  # garbage, bad HPACK, broken SETTINGS
            "no heartbeat answer from relay",  # the relay that stalls mid-frame
            "no TLS handshake and HTTP/2 settings within",  # the relay that is silent after TLS
            "cannot open the tunnel to relay",  # not TLS, truncated ServerHello
        ):
            if expected not in log:
                problems.append(f"the gateway log lacks {expected!r}")
        if "Traceback" in log:
            # Twisted indents a traceback with a tab; the exception is its one line of the form
            # "\tpackage.Exception: message".
            raised = Counter(
                line.strip()
                for line in log.splitlines()
                if line.strip()
                and line.startswith("\t")
                and not line.startswith(("\t ", "\tTraceback"))
            )
            problems.append(
                f"the gateway logged {log.count('Traceback')} tracebacks:\n"
                + "\n".join(f"  {n} x {line}" for line, n in raised.most_common())
            )
        assert not problems, "\n".join(problems)
    finally:
        rogue.stop()
        s.stop_all()
        tmp.cleanup()
