"""The plant's side and the engineer's side of a session, driven as people drive them.

* `control` / `control_json`: ``python -m gateway COMMAND ... -c gateway.toml [--json]`` as plant
  staff run it (approve, deny, code, end, access, requests, sessions);
* `audit_records` / `verify_audit`: the gateway's and the relay's audit trails read with
  ``gateway audit --json`` and ``gateway relay audit --json`` (``--verify``), as an auditor would;
* `Download`: a large download through the engineer's forward, in a thread, that notes when its
  last byte came and how the connection ended, to measure how soon ending a session stops it;
  `StreamDownload` the same on a raw stream through the relay that takes no notice of the
  session's end, so that only the gateway (or the relay) cutting it stops it;
* `add_engineer` / `expired_engineer`: more engineers in the relay's ``engineers.toml``.

Blocking calls with bounded timeouts: every wait in the tests stays bounded.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Self

from gateway.demo.stack import python_gateway
from gateway.relay.credentials import add_engineer as store_engineer
from gateway.wire import AUTHORIZATION_HEADER, GATEWAY_HEADER, SESSION_HEADER
from tests.helpers.processes import Proc, Stack, wait_until

__all__ = [
    "SIDES",
    "Download",
    "Side",
    "StreamDownload",
    "add_engineer",
    "audit_records",
    "control",
    "control_json",
    "expired_engineer",
    "finished",
    "record_time",
    "records_of",
    "relay_command",
    "told",
    "verify_audit",
]

Side = Literal["gateway", "relay"]
SIDES: tuple[Side, ...] = ("gateway", "relay")
COMMAND_TIMEOUT = 60.0
STREAM_WINDOW = 1 << 20
"""The stream window `tests.helpers.rogue.H2Client` asks for."""


def control(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """``gateway ARGS -c gateway.toml``: a control command as plant staff run it."""
    return subprocess.run(
        python_gateway([*args, "-c", str(stack.layout.gateway_config)]),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        cwd=stack.workdir,
        check=False,
    )


def control_json(stack: Stack, *args: str) -> Any:
    """``gateway ARGS -c gateway.toml --json``, which must succeed: its answer."""
    done = control(stack, *args, "--json")
    assert done.returncode == 0, f"gateway {' '.join(args)}: exit {done.returncode}: {done.stderr}"
    return json.loads(done.stdout)


def relay_command(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """``gateway relay ARGS -c relay.toml``."""
    return subprocess.run(
        python_gateway(["relay", *args, "-c", str(stack.layout.relay_config)]),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        cwd=stack.workdir,
        check=False,
    )


def _audit(stack: Stack, side: Side, *flags: str) -> subprocess.CompletedProcess[str]:
    if side == "gateway":
        return control(stack, "audit", *flags)
    return relay_command(stack, "audit", *flags)


def audit_records(stack: Stack, side: Side) -> list[dict[str, Any]]:
    """Every record of one side's trail, as ``audit --json`` prints them."""
    shown = _audit(stack, side, "--json")
    assert shown.returncode == 0, f"{side} audit: exit {shown.returncode}: {shown.stderr}"
    return [json.loads(line) for line in shown.stdout.splitlines() if line.strip()]


def records_of(records: list[dict[str, Any]], event: str, **fields: Any) -> list[dict[str, Any]]:
    """The records of ``event`` whose fields have the values given."""
    return [
        r for r in records if r["event"] == event and all(r.get(k) == v for k, v in fields.items())
    ]


def verify_audit(stack: Stack, side: Side) -> str:
    """``audit --verify`` must pass; its line ("audit trail OK: N records in M files")."""
    verified = _audit(stack, side, "--verify")
    assert verified.returncode == 0, f"{side} audit --verify: {verified.stdout}{verified.stderr}"
    assert verified.stdout.startswith("audit trail OK: "), verified.stdout
    return verified.stdout.strip()


def record_time(record: dict[str, Any]) -> float:
    """A record's ``time`` (``2024-05-01T12:00:00.123Z``) as POSIX seconds."""
    return datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00")).timestamp()


def add_engineer(stack: Stack, name: str, *gateways: str) -> str:
    """``gateway relay add-engineer NAME --gateways ...``, as the vendor runs it: the token."""
    added = relay_command(stack, "add-engineer", name, "--gateways", ",".join(gateways))
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token and "\n" not in token, added.stdout
    return token


def expired_engineer(stack: Stack, name: str, *gateways: str) -> str:
    """An engineer whose token stopped working yesterday (``--expires`` only takes days to come,
    so the entry is written as one made earlier would read now)."""
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date()
    return store_engineer(stack.layout.engineers, name, gateways=gateways, expires=yesterday)


def finished(proc: Proc, timeout: float = 30.0) -> tuple[int, list[str]]:
    """Wait (bounded) for an engineer client to exit: its exit code and its ``gateway connect:``
    lines."""
    try:
        code = proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{proc.name} still running after {timeout:g}s:\n{proc.tail()}"
        ) from None
    return code, told(proc)


def told(proc: Proc) -> list[str]:
    """What an engineer client has told its user so far."""
    prefix = "gateway connect: "
    return [line[len(prefix) :] for line in proc.text().splitlines() if line.startswith(prefix)]


class _Reading:
    """A download read as fast as it comes, in a thread of its own.

    It notes the wall-clock time (comparable with the audit trail's) of the first and the last
    byte, how many came, and how it ended: ``closed``, ``reset``, or ``abandoned`` (`close`
    before either).  The size asked for is so large that only someone ending the stream stops
    it.
    """

    def __init__(self, name: str, size: int) -> None:
        self.size = size
        self.received = 0
        self.head = b""
        self.first_byte: float | None = None
        self.last_byte: float | None = None
        self.ended: float | None = None
        self.how: str | None = None
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def request(self) -> bytes:
        return f"GET /download?size={self.size} HTTP/1.1\r\nHost: processor\r\n\r\n".encode()

    def start(self) -> Self:
        self._thread.start()
        return self

    def _run(self) -> None:
        raise NotImplementedError

    def _got(self, data: bytes) -> None:
        if not data:
            return
        now = time.time()
        if self.first_byte is None:
            self.first_byte = now
            self.head = data[:200]
        self.last_byte = now
        self.received += len(data)

    def _end(self, how: str) -> None:
        self.how = how
        self.ended = time.time()

    @property
    def done(self) -> bool:
        return self.ended is not None

    def wait_flowing(self, at_least: int = 8 << 20, deadline: float = 30.0) -> None:
        """Until ``at_least`` bytes have come (a download in progress, not one about to start)."""
        wait_until(
            f"{at_least} bytes of the download",
            lambda: self.received >= at_least or self.done,
            deadline=deadline,
        )
        assert not self.done, f"the download ended ({self.how}) after {self.received} bytes"
        assert self.head.startswith(b"HTTP/1.1 200 "), self.head

    def wait_ended(self, deadline: float = 10.0) -> None:
        wait_until("the download to end", lambda: self.done, deadline=deadline)

    def close(self) -> None:
        self._quit.set()
        self._thread.join(5)


class Download(_Reading):
    """``GET /download?size=N`` through the engineer's local forward (``gateway connect``): what
    the engineer's browser sees."""

    def __init__(self, port: int, size: int = 1 << 38) -> None:
        super().__init__(f"download:{port}", size)
        self.port = port

    def _run(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except OSError as e:
            self._end(f"connect failed: {e}")
            return
        try:
            sock.sendall(self.request)
            sock.settimeout(0.2)
            while not self._quit.is_set():
                try:
                    data = sock.recv(1 << 18)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    self._end("reset")
                    return
                if not data:
                    self._end("closed")
                    return
                self._got(data)
            self._end("abandoned")
        finally:
            sock.close()


class StreamDownload(_Reading):
    """The same download on a stream of its own through the relay, by a client that ignores
    everything but its bytes (no session stream, no goodbye): only the gateway or the relay
    cutting the stream stops it, whatever the engineer's program would do of its own accord.

    ``session``: the session the stream names (``session`` header), as ``gateway connect`` does.
    """

    def __init__(self, stack: Stack, token: str, session: str | None, size: int = 1 << 38) -> None:
        super().__init__(f"stream-download:{session}", size)
        self.stack = stack
        self.token = token
        self.session = session

    def _run(self) -> None:
        from h2.settings import SettingCodes

        from tests.helpers.rogue import H2Client, PeerClosed

        stack = self.stack
        try:
            client = H2Client(stack.ports["relay_eng"], stack.pki.ca_cert, timeout=10)
        except OSError as e:
            self._end(f"connect failed: {e}")
            return
        headers = [
            (AUTHORIZATION_HEADER, f"Bearer {self.token}".encode()),
            (GATEWAY_HEADER, stack.gateway_id.encode()),
        ]
        if self.session is not None:
            headers.append((SESSION_HEADER, self.session.encode()))
        try:
            # H2Client's first SETTINGS frame carries h2's acknowledged values (65535), while h2
            # credits our streams as if the peer had its 1 MiB window: say the window again, so
            # that both ends count it alike and the client's window updates keep the bytes coming.
            while client.h2.local_settings.initial_window_size != STREAM_WINDOW:
                client.pump()
            client.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
            sid = client.open("web", headers)
            client.send(sid, self.request)
            client.flush()
            client.sock.settimeout(0.2)
            result = client.streams[sid]
            while not self._quit.is_set():
                try:
                    client.pump()
                except AssertionError:  # nothing came within the socket's timeout
                    continue
                except (PeerClosed, OSError):
                    self._end("closed")
                    return
                self._got(bytes(result.body))
                result.body.clear()
                if result.reset is not None:
                    self._end("reset")
                    return
                if result.ended or (result.status is not None and result.status != 200):
                    self._end("closed" if result.status == 200 else f"refused {result.status}")
                    return
            self._end("abandoned")
        finally:
            client.sock.close()
