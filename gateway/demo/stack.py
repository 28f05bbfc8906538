"""One throw-away stack of the product's programs: files, PKI, configs, commands, processes.

``gateway demo``, the end-to-end, fault and hostile tests and both benchmarks run the same four
programs (demo processor, relay, gateway, engineer client) as separate processes on loopback,
configured by the same files a user writes.  This module is the one place that knows how: where
the files go, how the certificates and the engineer token are made, what ``relay.toml`` and
``gateway.toml`` say (with a note on every key: users read the demo's copies to learn the
format), which command line starts each program, how to tell that it is ready, and how to stop
it.  A new config key or section is written here once and every user of the stack gets it;
callers add their own values through keyword arguments (``service={"drain_timeout": 3}``).

This is not Twisted code: callers poll with short blocking calls, so ``subprocess`` and
``urllib`` keep it simple.  Each caller keeps its own policy (how long to wait, how to report a
failure); the mechanics are here.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

from attrs import Factory, field, fields, frozen

from gateway.config import Address, Target, TargetKind
from gateway.demo.tomlfile import Section, Table, Value, merged, render
from gateway.pki import create_ca, issue_gateway_certificate, issue_relay_certificate
from gateway.promtext import metric_value
from gateway.relay.credentials import add_engineer

__all__ = [
    "LOOPBACK",
    "PROBE_ERRORS",
    "PROBE_USER_AGENT",
    "RELAY_NAMES",
    "WEB",
    "Layout",
    "Ports",
    "Process",
    "answers",
    "connect_args",
    "free_port",
    "free_ports",
    "gateway_toml",
    "http_get",
    "listening",
    "log_tail",
    "loopback",
    "make_engineer",
    "make_pki",
    "processor_args",
    "python_gateway",
    "relay_args",
    "relay_toml",
    "run_args",
    "scrape",
    "stop_together",
    "tunnel_problem",
    "tunnel_up",
    "url",
]

LOOPBACK: Final = "127.0.0.1"
RELAY_NAMES: Final = ("localhost", LOOPBACK)
"""The names on a stack's relay certificate: what a loopback client may dial it by."""

WEB: Final = "web"
"""The target name of the demo processor in every stack."""

# --------------------------------------------------------------------------------------------
# Ports


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (all held, then released).

    Another program may take one before our child binds it; callers that cannot afford that
    retry on fresh ports (the demo does).
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((LOOPBACK, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    [port] = free_ports(1)
    return port


def loopback(port: int) -> Address:
    return Address(LOOPBACK, port)


def url(port: int, path: str = "/") -> str:
    return f"http://{LOOPBACK}:{port}{path}"


@frozen
class Ports:
    """Every loopback port of one stack.  ``metrics`` is the gateway's; None: no listener."""

    processor: int
    relay_gateways: int
    relay_engineers: int
    relay_metrics: int
    status: int
    metrics: int | None
    forward: int

    @classmethod
    def pick(cls, *, metrics: bool = True) -> Ports:
        """Fresh ports, picked together so they are distinct."""
        p = free_ports(7)
        return cls(p[0], p[1], p[2], p[3], p[4], p[5] if metrics else None, p[6])


# --------------------------------------------------------------------------------------------
# Files, certificates, the engineer token


@frozen
class Layout:
    """Where one stack keeps its files: configs and the token file in ``workdir``, certificates
    in ``pki`` (the same folder unless given)."""

    workdir: Path
    pki: Path = field(default=Factory(lambda self: self.workdir, takes_self=True))

    @property
    def ca(self) -> Path:
        return self.pki / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.pki / "ca.key"

    @property
    def relay_cert(self) -> Path:
        return self.pki / "relay.pem"

    @property
    def relay_key(self) -> Path:
        return self.pki / "relay.key"

    @property
    def gateway_cert(self) -> Path:
        return self.pki / "gateway.pem"

    @property
    def gateway_key(self) -> Path:
        return self.pki / "gateway.key"

    @property
    def engineers(self) -> Path:
        return self.workdir / "engineers.toml"

    @property
    def relay_config(self) -> Path:
        return self.workdir / "relay.toml"

    @property
    def gateway_config(self) -> Path:
        return self.workdir / "gateway.toml"

    @property
    def relay_state(self) -> Path:
        """The relay's state directory: its own, so the two audit trails stay apart."""
        return self.workdir / "relay-state"

    @property
    def gateway_state(self) -> Path:
        """The gateway's state directory (mode, audit trail, control socket)."""
        return self.workdir / "gateway-state"


def make_pki(
    layout: Layout,
    gateway_id: str,
    *,
    ca_name: str,
    relay_names: Sequence[str] = RELAY_NAMES,
    force: bool = False,
) -> None:
    """A new vendor CA, a relay certificate for ``relay_names`` and one gateway's certificate.

    EC P-256 keys (``gateway.pki``'s default): made in milliseconds, the product's own profiles.
    Without ``force`` existing files are refused, so two stacks sharing a folder fail loudly.
    """
    layout.pki.mkdir(parents=True, exist_ok=True)
    create_ca(layout.ca, layout.ca_key, name=ca_name, force=force)
    issue_relay_certificate(
        layout.ca,
        layout.ca_key,
        layout.relay_cert,
        layout.relay_key,
        names=list(relay_names),
        force=force,
    )
    issue_gateway_certificate(
        layout.ca,
        layout.ca_key,
        layout.gateway_cert,
        layout.gateway_key,
        gateway_id=gateway_id,
        force=force,
    )


def make_engineer(tokens: Path, name: str, *, gateways: Sequence[str] = ()) -> str:
    """A new token file holding one engineer, authorised for ``gateways`` (patterns over
    gateway ids; none: no gateway at all); returns the token.

    Tokens are stored hashed, so those of an earlier file could never be shown again: the file
    is started afresh rather than added to.
    """
    tokens.unlink(missing_ok=True)
    return add_engineer(tokens, name, gateways=gateways)


# --------------------------------------------------------------------------------------------
# Configuration files

_GATEWAY_NOTES: Final[Mapping[tuple[str, str], str]] = {
    ("relay", "address"): "the relay's gateway listener (host:port)",
    ("relay", "ca"): "the CA that signed the relay's certificate (pinned)",
    ("relay", "cert"): "this gateway's certificate; its subject is the id {gateway_id}",
    ("relay", "connect_timeout"): "seconds to reach the relay (default 10)",
    ("relay", "reconnect_max_delay"): "seconds; redials back off up to this (default 30)",
    ("relay", "heartbeat_interval"): "seconds between PINGs to the relay (default 10)",
    ("relay", "heartbeat_timeout"): "seconds a PING may go unanswered (default 10)",
    ("relay", "proxy"): "HTTP CONNECT proxy to reach the relay through",
    ("target", ""): "the allowlist: nothing else is reachable through the gateway",
    ("target", "connect_timeout"): "seconds to reach the target (default 5)",
    ("target", "kind"): "http: the gateway follows requests (view-only: GET, HEAD, OPTIONS)",
    ("target", "view_websocket"): "view-only sessions may open WebSockets (uninspected)",
    ("access", "mode"): "attended | unattended | disabled",
    ("status", "listen"): "status page, and JSON at /api/status",
    ("metrics", "listen"): "Prometheus text at /metrics",
    ("service", "drain_timeout"): "seconds to let streams finish on shutdown (default 10)",
    ("service", "half_close_timeout"): "seconds a half-closed connection may stay (default 30)",
    ("service", "state_dir"): "access mode, audit trail (gateway audit), control socket",
}

_GATEWAY_HINTS: Final[Mapping[str, tuple[str, str]]] = {
    "relay": ("proxy", '# proxy = "http://proxy.plant.local:3128"   # optional HTTP CONNECT proxy'),
}
"""A commented-out example line per section, shown while its key is not set."""

_RELAY_NOTES: Final[Mapping[tuple[str, str], str]] = {
    ("gateways", ""): "where gateways dial in (mutual TLS)",
    ("gateways", "listen"): "a real relay listens on 0.0.0.0:443",
    ("gateways", "ca"): "the CA that signs gateway certificates",
    ("gateways", "cert"): "this relay's certificate (names: {relay_names})",
    ("gateways", "heartbeat_interval"): "seconds between PINGs to each gateway (default 10)",
    ("gateways", "heartbeat_timeout"): "seconds a PING may go unanswered (default 10)",
    ("engineers", ""): "where engineer clients (`gateway connect`) come in (TLS)",
    ("engineers", "tokens"): (
        "engineer tokens, stored hashed\n"
        "add one with: gateway relay add-engineer NAME -c relay.toml"
    ),
    ("metrics", "listen"): "Prometheus text at /metrics",
    ("service", "drain_timeout"): "seconds to let streams finish on shutdown (default 10)",
    ("service", "state_dir"): "the relay's audit trail (gateway relay audit -c relay.toml)",
}


def relay_toml(
    layout: Layout,
    ports: Ports,
    *,
    written_by: str = "a throw-away stack",
    relay_names: Sequence[str] = RELAY_NAMES,
    relative: bool = True,
    **sections: Table,
) -> str:
    """``relay.toml`` for this stack: listeners on loopback, paths relative to ``workdir``
    (absolute without ``relative``: for tests that edit a config by replacing a path in it).

    ``sections`` add or override keys per section (``gateways={"heartbeat_interval": 2}``) or
    add whole sections (``service={"drain_timeout": 3}``).
    """
    body = [
        Section(
            "gateways",
            {
                "listen": loopback(ports.relay_gateways),
                "ca": layout.ca,
                "cert": layout.relay_cert,
                "key": layout.relay_key,
            },
        ),
        Section(
            "engineers",
            {"listen": loopback(ports.relay_engineers), "tokens": layout.engineers},
        ),
        Section("metrics", {"listen": loopback(ports.relay_metrics)}),
        Section("service", {"state_dir": layout.relay_state}),
    ]
    title = [
        f"relay.toml written by {written_by}: the vendor relay, on loopback only.",
        "Run it yourself with:  gateway relay -c relay.toml",
    ]
    notes = {"relay_names": ", ".join(relay_names)}
    base = layout.workdir if relative else None
    return render(title, merged(body, sections), _RELAY_NOTES, {}, notes, base)


def gateway_toml(
    layout: Layout,
    ports: Ports,
    *,
    gateway_id: str,
    mode: str = "unattended",
    targets: Sequence[Target] | None = None,
    target_notes: Mapping[str, str] | None = None,
    written_by: str = "a throw-away stack",
    relative: bool = True,
    **sections: Table,
) -> str:
    """``gateway.toml`` for this stack; ``targets`` default to ``web``, the demo processor.

    ``relative`` and ``sections`` as for `relay_toml` (``relay={"reconnect_max_delay": 5}``).
    A target's ``connect_timeout`` is written when it is not the default.
    """
    if targets is None:
        targets = [Target(WEB, loopback(ports.processor), kind=TargetKind.HTTP)]
        target_notes = {WEB: "the demo processor", **(target_notes or {})}
    default_timeout = fields(Target).connect_timeout.default
    body = [
        Section(
            "relay",
            {
                "address": loopback(ports.relay_gateways),
                "ca": layout.ca,
                "cert": layout.gateway_cert,
                "key": layout.gateway_key,
            },
        )
    ]
    for target in targets:
        keys: dict[str, Value] = {"name": target.name, "address": target.address}
        if target.connect_timeout != default_timeout:
            keys["connect_timeout"] = target.connect_timeout
        if target.kind is not TargetKind.TCP:
            keys["kind"] = target.kind.value
        if target.view_websocket:
            keys["view_websocket"] = True
        note = (target_notes or {}).get(target.name, "")
        body.append(Section("target", keys, array=True, key_notes={"address": note}))
    body.append(Section("access", {"mode": mode}))
    body.append(Section("status", {"listen": loopback(ports.status)}))
    if ports.metrics is not None:
        body.append(Section("metrics", {"listen": loopback(ports.metrics)}))
    body.append(Section("service", {"state_dir": layout.gateway_state}))
    title = [
        f"gateway.toml written by {written_by}: the edge daemon, on loopback only.",
        "Run it yourself with:  gateway run -c gateway.toml",
    ]
    notes = {"gateway_id": gateway_id}
    base = layout.workdir if relative else None
    return render(title, merged(body, sections), _GATEWAY_NOTES, _GATEWAY_HINTS, notes, base)


# --------------------------------------------------------------------------------------------
# Command lines


def python_gateway(args: Sequence[str]) -> list[str]:
    """``args`` for this interpreter's ``gateway``: what every stack starts its programs with."""
    return [sys.executable, "-m", "gateway", *args]


def processor_args(listen: Address) -> list[str]:
    return ["demo-processor", "--listen", str(listen)]


def relay_args(config: Path) -> list[str]:
    return ["relay", "-c", str(config)]


def run_args(config: Path) -> list[str]:
    return ["run", "-c", str(config)]


def connect_args(
    *,
    relay: Address,
    ca: Path,
    gateway_id: str,
    listen: Address,
    target: str = WEB,
    token: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """``gateway connect`` arguments; without ``token`` it comes from ``GATEWAY_TOKEN``, which
    keeps it out of the process list (what the README recommends).  ``extra``: more flags
    (``["--reason", "ticket 4711"]`` or ``["--code", "123456"]``)."""
    secret = ["--token", token] if token is not None else []
    return [
        "connect",
        "--relay",
        str(relay),
        "--ca",
        str(ca),
        *secret,
        "--gateway",
        gateway_id,
        "--target",
        target,
        "--listen",
        str(listen),
        *extra,
    ]


# --------------------------------------------------------------------------------------------
# Processes


class Process:
    """One program of a stack and the log file it writes; stopped with a signal, then SIGKILL.

    Its output goes to a file: an unread pipe would block the child once the pipe is full.
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        append: bool = False,
        own_group: bool = False,
    ) -> Process:
        """Start ``argv`` writing to ``log`` (truncated unless ``append``).

        ``own_group``: in a process group of its own, so a terminal's Ctrl-C reaches only us
        and we decide how each child is stopped.
        """
        with open(log, "ab" if append else "wb") as out:  # the child keeps its own copy
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                process_group=0 if own_group else None,
            )
        return cls(name, popen, log)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text("utf-8", "replace")

    def tail_lines(self, count: int = 25, *, without: str | None = None) -> list[str]:
        return log_tail(self.log, count, without=without)

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.tail_lines(lines))

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig``, wait up to ``timeout`` seconds, then SIGKILL; the exit code."""
        if self.alive():
            self.send(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.wait()

    def kill(self) -> None:
        if self.alive():
            self.send(signal.SIGKILL)
        self.popen.wait(10)


def log_tail(log: Path, count: int = 25, *, without: str | None = None) -> list[str]:
    """The last lines of a log, read from its end so a huge log costs nothing; lines
    containing ``without`` (say, our own probes in an access log) are left out."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            data = f.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if without is not None:
        lines = [line for line in lines if without not in line]
    return lines[-count:] if count > 0 else []


def stop_together(
    processes: Sequence[Process], timeout: float, *, hurry: Callable[[], bool] = lambda: False
) -> None:
    """SIGTERM all (last started first), wait up to ``timeout`` for all, then SIGKILL the rest.

    Together, so that each drains while the others do: stopping one after the other would add
    their drain times up.  ``hurry`` (checked while waiting) cuts the wait short.
    """
    alive = [p for p in reversed(processes) if p.alive()]
    for process in alive:
        process.send(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(p.alive() for p in alive) and time.monotonic() < deadline and not hurry():
        time.sleep(0.05)
    for process in alive:
        process.kill()


# --------------------------------------------------------------------------------------------
# Readiness

PROBE_USER_AGENT: Final = "gateway-demo-probe"
"""Sent with every probe, so a log tail can leave the probes out."""

PROBE_ERRORS: Final = (OSError, http.client.HTTPException, ValueError)
"""What a probe of a program that is not ready (yet) may raise."""

# urllib honours http_proxy from the environment; loopback probes must never go to a proxy.
_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_OPENER.addheaders = [("User-Agent", PROBE_USER_AGENT)]


def http_get(address: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET, never through a proxy; raises one of `PROBE_ERRORS` when nothing sensible came
    back (urllib raises for 4xx and 5xx answers too)."""
    with _OPENER.open(address, timeout=timeout) as response:
        return int(response.status), bytes(response.read())


def answers(port: int, timeout: float = 0.5) -> bool:
    """Whether loopback ``port`` accepts a connection (one is made and closed)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def listening(port: int) -> str | None:
    """None once something listens on loopback ``port``, else what is missing; no connection.

    A probe connection would not be free: through ``gateway connect`` it opens a tunnel stream
    (counted, logged, audited), and on the relay it counts as a failed TLS handshake.  So the
    kernel's socket table is read; only where there is none (not Linux) is a connection made.
    """
    try:
        table = Path("/proc/net/tcp").read_text("ascii")
    except OSError:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return None
        except OSError as e:
            return f"port {port} does not accept connections ({e.strerror or e})"
    wanted = f"0100007F:{port:04X}"  # 127.0.0.1 in the kernel's byte order
    for line in table.splitlines()[1:]:
        row = line.split()
        if len(row) > 3 and row[1] == wanted and row[3] == "0A":  # 0A: LISTEN
            return None
    return f"nothing listens on port {port} yet"


def scrape(address: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """A metric's value on a ``/metrics`` page (see `gateway.promtext.metric_value`)."""
    return metric_value(http_get(address)[1].decode("utf-8", "replace"), name, labels)


def tunnel_problem(status: object) -> str | None:
    """None when a status report (``/api/status``) says the tunnel is up, else why not."""
    tunnel = status.get("tunnel") if isinstance(status, dict) else None
    if not isinstance(tunnel, dict):
        return "the status JSON has no tunnel object"
    if tunnel.get("state") != "up":
        error = tunnel.get("last_error")
        return f"tunnel is {tunnel.get('state')!r}" + (f": {error}" if error else "")
    return None


def tunnel_up(ports: Ports) -> str | None:
    """None when the gateway says its tunnel is up and the relay counts it; else what is not."""
    problem = tunnel_problem(json.loads(http_get(url(ports.status, "/api/status"))[1]))
    if problem is not None:
        return problem
    connected = scrape(url(ports.relay_metrics, "/metrics"), "relay_gateways_connected")
    if not connected or connected < 1:
        return f"relay_gateways_connected is {connected} on the relay"
    return None
