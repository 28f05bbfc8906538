"""``gateway demo``: the whole stack on loopback, as separate processes, ready to try.

A newcomer runs one command and gets what a plant and a vendor would run: a throw-away vendor CA,
a relay, a gateway dialling out to it, an engineer client and a demo processor, each its own
``python -m gateway`` process with its own log, wired together by the same configuration files a
user would write (kept in the work directory so they can be read and reused).  Nothing here is a
shortcut the real programs do not take: if the demo works, the product's own paths work.

This is not a Twisted daemon: it starts processes, polls them with short blocking requests and
waits for a signal, so plain ``subprocess`` and ``urllib`` keep it simple.  It never leaves a
process behind: children are stopped on every way out, and each child also dies with the demo
if the demo is killed outright (``GATEWAY_EXIT_WITH_PARENT``, see ``gateway.cli``).

Work directory rules: the default is a new temporary directory.  ``--workdir DIR`` may be new,
empty, or hold an earlier demo; an earlier demo's files (certificates, token, configs, logs) are
regenerated from scratch each run, so a run never depends on what an older one left behind.  A
non-empty directory that is not a demo's is refused rather than overwritten, and a directory in
which a demo is still running is refused too (a lock held for the demo's lifetime).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

from attrs import frozen

from gateway.pki import PKIError, create_ca, issue_gateway_certificate, issue_relay_certificate
from gateway.relay.credentials import CredentialFileError, add_engineer

__all__ = ["run_demo"]

GATEWAY_ID: Final = "demo-gateway"
ENGINEER: Final = "demo-engineer"
TARGET: Final = "web"
LOOPBACK: Final = "127.0.0.1"

STAGE_TIMEOUT: Final = 30.0
"""Seconds each startup stage may take.  Generous: a cold Python start of a child on a slow CI
machine takes seconds, and a stage that is merely slow must not be reported as broken."""

STOP_GRACE: Final = 10.0
"""Seconds children get to drain after SIGTERM before SIGKILL (their own drain is shorter)."""

PORT_ATTEMPTS: Final = 3
"""Free ports are picked by binding port 0 and releasing it, so another program may take one
before our child binds it; then the whole stack is restarted on fresh ports, a few times."""

_LISTEN_FAILED: Final = re.compile(
    r"cannot listen|couldn't listen|address already in use", re.IGNORECASE
)
"""How our programs report a port taken (their one line, or Twisted's CannotListenError)."""

POLL: Final = 0.1
LOG_TAIL_LINES: Final = 10
MARKER: Final = ".gateway-demo"

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

_PROBE_USER_AGENT: Final = "gateway-demo-probe"
# urllib honours http_proxy from the environment; loopback checks must never go to a proxy.
_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_OPENER.addheaders = [("User-Agent", _PROBE_USER_AGENT)]


class DemoError(Exception):
    """Something a user can act on; ``str()`` is one line, ``log`` the file worth reading."""

    def __init__(
        self, message: str, log: Path | None = None, *, exit_code: int = EXIT_FAILED
    ) -> None:
        super().__init__(message)
        self.log = log
        self.exit_code = exit_code
        self.tail = _tail_lines(log) if log is not None else []  # now, before stopping adds more


class PortTaken(DemoError):
    """A child could not listen on the port picked for it: worth a retry on new ports."""


class StopRequested(Exception):
    """SIGINT/SIGTERM/SIGHUP arrived: not a failure, the user wants everything stopped."""


@frozen
class Ports:
    """Every loopback port of one run; picked together so they are distinct."""

    processor: int
    relay_gateways: int
    relay_engineers: int
    relay_metrics: int
    status: int
    metrics: int
    forward: int


@frozen
class Layout:
    """Where a demo keeps its files; all in one folder so the configs use plain relative paths."""

    workdir: Path

    @property
    def ca(self) -> Path:
        return self.workdir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.workdir / "ca.key"

    @property
    def relay_cert(self) -> Path:
        return self.workdir / "relay.pem"

    @property
    def relay_key(self) -> Path:
        return self.workdir / "relay.key"

    @property
    def gateway_cert(self) -> Path:
        return self.workdir / "gateway.pem"

    @property
    def gateway_key(self) -> Path:
        return self.workdir / "gateway.key"

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
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def demo_json(self) -> Path:
        return self.workdir / "demo.json"

    @property
    def marker(self) -> Path:
        return self.workdir / MARKER


# --------------------------------------------------------------------------------------------
# Signals


class StopSignal:
    """Turns the first stop signal into a flag the wait loops check; a second one hurries.

    Children run in their own process groups, so an interactive Ctrl-C reaches only the demo,
    which then stops each child with exactly one SIGTERM: a child that got the terminal's SIGINT
    as well would count our SIGTERM as its second signal and skip its graceful drain.
    """

    SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: int | None = None
        self.hurry = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            self.hurry = True
        self.received = signum

    def check(self) -> None:
        if self.received is not None:
            raise StopRequested()


# --------------------------------------------------------------------------------------------
# Children


class Child:
    """One ``python -m gateway ...`` process of the demo and the log file it writes to."""

    def __init__(self, name: str, title: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.title = title
        self.process = process
        self.log = log

    def failure(self, when: str) -> DemoError | None:
        """Why this child is no use any more, or None while it runs."""
        code = self.process.poll()
        if code is None:
            return None
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        message = f"the {self.title} {how} {when}"
        if _LISTEN_FAILED.search(_tail_text(self.log)):
            return PortTaken(message + " (its port was taken)", self.log)
        return DemoError(message, self.log)


class Stack:
    """The running children, started in order and stopped in reverse order."""

    def __init__(self, layout: Layout, stop: StopSignal) -> None:
        self.layout = layout
        self.stop_signal = stop
        self.children: list[Child] = []

    def start(
        self, name: str, title: str, args: Sequence[str], extra_env: dict[str, str] | None = None
    ) -> Child:
        """Start ``python -m gateway ARGS`` logging to ``logs/NAME.log`` (truncated each run)."""
        log = self.layout.logs / f"{name}.log"
        env = dict(os.environ)
        env.pop("GATEWAY_TOKEN", None)  # only the engineer client gets a token
        env.update({"GATEWAY_EXIT_WITH_PARENT": "1", "PYTHONUNBUFFERED": "1"})
        env.update(extra_env or {})
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.layout.workdir,
                env=env,
                process_group=0,  # see StopSignal: the terminal's Ctrl-C is ours to relay
            )
        child = Child(name, title, process, log)
        self.children.append(child)
        return child

    def first_failure(self, when: str = "during startup") -> DemoError | None:
        for child in self.children:
            problem = child.failure(when)
            if problem is not None:
                return problem
        return None

    def stop(self) -> None:
        """SIGTERM every child (last started first), wait up to STOP_GRACE, then SIGKILL."""
        alive = [c for c in reversed(self.children) if c.process.poll() is None]
        for child in alive:
            _send(child.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while any(c.process.poll() is None for c in alive):
            if time.monotonic() > deadline or self.stop_signal.hurry:
                break
            time.sleep(POLL)
        for child in alive:
            if child.process.poll() is None:
                _send(child.process, signal.SIGKILL)
            child.process.wait()
        self.children.clear()


def _send(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)


def _tail_lines(path: Path, count: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines of a log worth showing, read from its end so a huge log costs nothing.

    The demo's own readiness probes appear in access logs; they would crowd out the lines that
    say what went wrong, so they are left out.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            data = f.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return [line for line in lines if _PROBE_USER_AGENT not in line][-count:]


def _tail_text(path: Path) -> str:
    return "\n".join(_tail_lines(path, 50))


# --------------------------------------------------------------------------------------------
# Work directory, PKI, configuration


@contextlib.contextmanager
def claimed_workdir(requested: Path | None) -> Iterator[Layout]:
    """Create or check the work directory and hold its lock while the demo runs.

    The lock (``flock`` on the marker file, released by the kernel however we exit) is what
    makes a second demo in the same directory fail at once instead of clobbering the first.
    """
    if requested is None:
        try:
            workdir = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
        except OSError as e:
            raise DemoError(f"cannot create a temporary work dir: {e.strerror or e}") from None
    else:
        workdir = requested.expanduser().absolute()
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            foreign = not (workdir / MARKER).exists() and any(workdir.iterdir())
        except OSError as e:
            raise DemoError(
                f"cannot use --workdir {workdir}: {e.strerror or e}", exit_code=EXIT_USAGE
            ) from None
        if foreign:
            raise DemoError(
                f"--workdir {workdir} is not empty and holds no earlier demo; "
                "give a new or empty directory (the demo writes keys and configs there)",
                exit_code=EXIT_USAGE,
            )
    layout = Layout(workdir)
    try:
        lock = open(layout.marker, "a+")  # noqa: SIM115 -- held open until the demo ends
    except OSError as e:
        raise DemoError(
            f"cannot use --workdir {workdir}: {e.strerror or e}", exit_code=EXIT_USAGE
        ) from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise DemoError(f"cannot lock {layout.marker}: {e.strerror or e}") from None
            lock.seek(0)
            owner = lock.read().strip().splitlines()[-1:] or ["?"]
            raise DemoError(
                f"another gateway demo is running in {workdir} ({owner[0]}); stop it first "
                "or give another --workdir",
                exit_code=EXIT_USAGE,
            ) from None
        lock.truncate(0)
        lock.write(
            "This folder belongs to `gateway demo`, which regenerates its files on every run.\n"
            f"pid {os.getpid()}\n"
        )
        lock.flush()
        # A demo.json from an earlier run describes processes that are gone.
        with contextlib.suppress(FileNotFoundError):
            layout.demo_json.unlink()
        yield layout


def make_credentials(layout: Layout) -> str:
    """A fresh throw-away CA, relay and gateway certificates and engineer token; the token."""
    create_ca(layout.ca, layout.ca_key, name="Gateway demo vendor CA (throw-away)", force=True)
    issue_relay_certificate(
        layout.ca,
        layout.ca_key,
        layout.relay_cert,
        layout.relay_key,
        names=["localhost", LOOPBACK],
        force=True,
    )
    issue_gateway_certificate(
        layout.ca,
        layout.ca_key,
        layout.gateway_cert,
        layout.gateway_key,
        gateway_id=GATEWAY_ID,
        force=True,
    )
    with contextlib.suppress(FileNotFoundError):
        layout.engineers.unlink()  # tokens are stored hashed: old ones cannot be shown again
    return add_engineer(layout.engineers, ENGINEER)


def free_ports() -> Ports:
    """Seven distinct free loopback ports (all held open together, then released)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(7):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((LOOPBACK, 0))
        p = [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
    return Ports(p[0], p[1], p[2], p[3], p[4], p[5], p[6])


def _addr(port: int) -> str:
    return f"{LOOPBACK}:{port}"


def relay_toml(ports: Ports) -> str:
    return f"""\
# relay.toml written by `gateway demo`: the vendor relay, on loopback only.
# Run it yourself with:  gateway relay -c relay.toml
# Paths are relative to this file's folder.

[gateways]                      # where gateways dial in (mutual TLS)
listen = "{_addr(ports.relay_gateways)}"       # a real relay listens on 0.0.0.0:443
ca   = "ca.pem"                 # the CA that signs gateway certificates
cert = "relay.pem"              # this relay's certificate (names: localhost, 127.0.0.1)
key  = "relay.key"

[engineers]                     # where engineer clients (`gateway connect`) come in (TLS)
listen = "{_addr(ports.relay_engineers)}"
tokens = "engineers.toml"       # engineer tokens, stored hashed
                                # add one with: gateway relay add-engineer NAME -c relay.toml

[metrics]
listen = "{_addr(ports.relay_metrics)}"        # Prometheus text at /metrics

[service]
drain_timeout = 3               # seconds to let streams finish on shutdown (demo: short)
"""


def gateway_toml(ports: Ports, mode: str) -> str:
    return f"""\
# gateway.toml written by `gateway demo`: the edge daemon, on loopback only.
# Run it yourself with:  gateway run -c gateway.toml
# Paths are relative to this file's folder.

[relay]
address = "{_addr(ports.relay_gateways)}"     # the relay's gateway listener (host:port)
ca   = "ca.pem"                 # the CA that signed the relay's certificate (pinned)
cert = "gateway.pem"            # this gateway's certificate; its subject is the id {GATEWAY_ID}
key  = "gateway.key"
reconnect_max_delay = 5         # seconds; a real gateway backs off up to 60
# proxy = "http://proxy.plant.local:3128"   # optional HTTP CONNECT proxy

[[target]]                      # the allowlist: nothing else is reachable through the gateway
name = "{TARGET}"
address = "{_addr(ports.processor)}"          # the demo processor

[access]
mode = "{mode}"                 # attended | unattended | disabled

[status]
listen = "{_addr(ports.status)}"              # status page, and JSON at /api/status

[metrics]
listen = "{_addr(ports.metrics)}"             # Prometheus text at /metrics

[service]
drain_timeout = 3               # seconds to let streams finish on shutdown (demo: short)
"""


def _write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Readers see the old file or the whole new one, never a half-written one."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def gateway_command() -> list[str]:
    """How a user runs ``gateway`` from this installation: what the printed commands start with.

    ``gateway`` if it is on PATH and is this installation's script, else that script's full
    path, else ``python -m gateway`` with this interpreter.
    """
    script = Path(sys.executable).parent / "gateway"
    on_path = shutil.which("gateway")
    if on_path is not None and script.exists() and Path(on_path).resolve() == script.resolve():
        return ["gateway"]
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


def connect_args(layout: Layout, ports: Ports) -> list[str]:
    return [
        "connect",
        "--relay",
        _addr(ports.relay_engineers),
        "--ca",
        str(layout.ca),
        "--gateway",
        GATEWAY_ID,
        "--target",
        TARGET,
        "--listen",
        _addr(ports.forward),
    ]


def demo_info(layout: Layout, ports: Ports, token: str) -> dict[str, Any]:
    """demo.json: the contract in BRIEF section 3 (scripts and tests read it)."""
    args = connect_args(layout, ports)
    ca = args.index("--ca") + 2
    command = [*gateway_command(), *args[:ca], "--token", token, *args[ca:]]
    return {
        "workdir": str(layout.workdir),
        "gateway_id": GATEWAY_ID,
        "status_url": f"http://{_addr(ports.status)}/",
        "metrics_url": f"http://{_addr(ports.metrics)}/metrics",
        "relay_metrics_url": f"http://{_addr(ports.relay_metrics)}/metrics",
        "processor_url": f"http://{_addr(ports.processor)}/",
        "forward_url": f"http://{_addr(ports.forward)}/",
        "relay_address": _addr(ports.relay_engineers),
        "relay_gateway_address": _addr(ports.relay_gateways),
        "relay_ca": str(layout.ca),
        "engineer_token": token,
        "connect_command": shlex.join(command),
        "targets": {TARGET: _addr(ports.processor)},
        "config": {"gateway": str(layout.gateway_config), "relay": str(layout.relay_config)},
    }


# --------------------------------------------------------------------------------------------
# Readiness


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """One GET; raises OSError (or an http.client error) when nothing sensible came back."""
    with _OPENER.open(url, timeout=timeout) as response:
        return int(response.status), bytes(response.read())


_PROBE_ERRORS: Final = (OSError, http.client.HTTPException, ValueError)


def _listening(port: int) -> str | None:
    """Whether something listens on loopback ``port``, without connecting to it.

    A probe connection would not be free: through ``gateway connect`` it opens a tunnel stream
    (counted, logged, audited), and on the relay it counts as a failed TLS handshake.  So read
    the kernel's socket table; only where there is none (not Linux) connect after all.
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
        fields = line.split()
        if len(fields) > 3 and fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
            return None
    return f"nothing listens on port {port} yet"


def _metric(text: str, name: str) -> float | None:
    """The sum of a metric's samples in Prometheus text, or None if it is absent."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)", re.MULTILINE)
    values = [float(v) for v in pattern.findall(text)]
    return sum(values) if values else None


def wait_until(stack: Stack, child: Child, what: str, probe: Callable[[], str | None]) -> None:
    """Poll ``probe`` (None: ready; else what is missing) until ready, a child dies or time's up.

    Every child is checked on every round: a relay that died explains a gateway that never
    comes up better than the gateway's own timeout would.
    """
    deadline = time.monotonic() + STAGE_TIMEOUT
    missing = "not checked yet"
    delay = POLL / 2
    while True:
        stack.stop_signal.check()
        problem = stack.first_failure()
        if problem is not None:
            raise problem
        try:
            result = probe()
        except _PROBE_ERRORS as e:
            result = str(e)
        if result is None:
            return
        missing = result
        if time.monotonic() > deadline:
            raise DemoError(
                f"the {child.title} did not {what} within {STAGE_TIMEOUT:.0f} s ({missing})",
                child.log,
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)  # quick when things are quick, quiet when they are not


def start_stack(stack: Stack, layout: Layout, ports: Ports, mode: str, token: str) -> None:
    """Start the four processes in dependency order, each ready before the next starts."""
    processor = stack.start(
        "processor", "demo processor", ["demo-processor", "--listen", _addr(ports.processor)]
    )
    page: dict[str, bytes] = {}

    def processor_ready() -> str | None:
        status, body = _get(f"http://{_addr(ports.processor)}/")
        if status != 200:
            return f"GET / answered {status}"
        page["body"] = body
        return None

    wait_until(stack, processor, "answer HTTP", processor_ready)

    relay = stack.start("relay", "relay", ["relay", "-c", str(layout.relay_config)])
    relay_metrics = f"http://{_addr(ports.relay_metrics)}/metrics"

    def relay_ready() -> str | None:
        _get(relay_metrics)
        return _listening(ports.relay_gateways) or _listening(ports.relay_engineers)

    wait_until(stack, relay, "start listening", relay_ready)

    gateway = stack.start("gateway", "gateway", ["run", "-c", str(layout.gateway_config)])

    def tunnel_up() -> str | None:
        status = json.loads(_get(f"http://{_addr(ports.status)}/api/status")[1])
        tunnel = status.get("tunnel") if isinstance(status, dict) else None
        if not isinstance(tunnel, dict):
            return "the status JSON has no tunnel object"
        if tunnel.get("state") != "up":
            error = tunnel.get("last_error")
            return f"tunnel is {tunnel.get('state')!r}" + (f": {error}" if error else "")
        connected = _metric(_get(relay_metrics)[1].decode(), "relay_gateways_connected")
        if not connected or connected < 1:
            return f"relay_gateways_connected is {connected} on the relay"
        return None

    wait_until(stack, gateway, "bring its tunnel to the relay up", tunnel_up)

    client = stack.start(
        "connect",
        "engineer client",
        connect_args(layout, ports),
        {"GATEWAY_TOKEN": token},
    )
    wait_until(stack, client, "open its local port", lambda: _listening(ports.forward))
    if mode == "attended":
        return  # refused until a session is approved, by design: nothing to fetch yet

    def forward_serves_page() -> str | None:
        status, body = _get(f"http://{_addr(ports.forward)}/", timeout=5)
        if status != 200:
            return f"GET / through the tunnel answered {status}"
        if body != page["body"]:
            return "GET / through the tunnel did not return the processor's page"
        return None

    wait_until(stack, client, "forward a request to the processor", forward_serves_page)


# --------------------------------------------------------------------------------------------
# Output


def _say(text: str = "", *, file: IO[str] | None = None) -> None:
    """Print, but never fail over it: a closed pipe or a hung-up terminal must not keep the
    demo from stopping its children."""
    with contextlib.suppress(OSError):
        print(text, file=file or sys.stdout, flush=True)


def report_failure(error: DemoError) -> None:
    where = f"; see {error.log}" if error.log is not None else ""
    _say(f"gateway demo: {error}{where}", file=sys.stderr)
    if error.tail:
        _say(f"--- last {len(error.tail)} lines of {error.log} ---", file=sys.stderr)
        for line in error.tail:
            _say(f"    {line}", file=sys.stderr)


def summary(info: dict[str, Any], mode: str) -> str:
    lines = [
        f"The remote service gateway demo is running ({mode} mode).",
        "",
        f"  Open in your browser:  {info['forward_url']}",
        "      the demo processor, reached through engineer client -> relay -> tunnel -> gateway",
    ]
    if mode == "attended":
        lines += [
            "      attended mode: the gateway refuses this forward until the plant approves a",
            "      session on the status page (so the demo did not try it); the engineer",
            "      client's log shows the gateway's answer.",
        ]
    lines += [
        f"  Gateway status page:   {info['status_url']}   (JSON: {info['status_url']}api/status)",
        f"  Gateway metrics:       {info['metrics_url']}",
        f"  Relay metrics:         {info['relay_metrics_url']}",
        f"  Processor directly:    {info['processor_url']}",
        "",
        "  Another engineer client (change --listen to a free port):",
        f"    {info['connect_command']}",
        "",
        f"  Work dir: {info['workdir']}",
        "    relay.toml, gateway.toml (reusable), certificates, demo.json; logs in logs/",
        "",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Entry point


def run_demo(workdir: Path | None, mode: str) -> int:
    """Run the demo until a signal; the exit code (0: stopped on request, 1: failed, 2: usage)."""
    if mode not in ("attended", "unattended"):
        _say(f"gateway demo: --mode {mode!r} is not attended or unattended", file=sys.stderr)
        return EXIT_USAGE
    stop = StopSignal()
    stop.install()
    try:
        with claimed_workdir(workdir) as layout:
            return _run(layout, mode, stop)
    except DemoError as e:
        report_failure(e)
        return e.exit_code
    except StopRequested:
        return EXIT_OK
    finally:
        stop.restore()


def _run(layout: Layout, mode: str, stop: StopSignal) -> int:
    try:
        layout.logs.mkdir(exist_ok=True)
        token = make_credentials(layout)
    except (OSError, PKIError, CredentialFileError) as e:
        raise DemoError(f"cannot create the demo's certificates and token: {e}") from None
    _say(f"gateway demo: starting in {layout.workdir} ...")
    stack = Stack(layout, stop)
    try:
        ports = _start_with_retries(stack, layout, mode, token)
        info = demo_info(layout, ports, token)
        _write_atomically(layout.demo_json, json.dumps(info, indent=2) + "\n", 0o600)  # token
        _say(summary(info, mode))
        while True:
            stop.check()
            problem = stack.first_failure("while the demo was running")
            if problem is not None:
                raise problem
            time.sleep(POLL * 2)
    except StopRequested:
        _say("gateway demo: stopping ...")
        return EXIT_OK
    finally:
        stack.stop()  # on every way out: a signal, a failure, or a bug
        # demo.json promises a running stack; once that is gone, so is the promise.
        with contextlib.suppress(FileNotFoundError):
            layout.demo_json.unlink()
        if stop.received is not None:
            _say(f"gateway demo: stopped. The work dir stays for you: {layout.workdir}")


def _start_with_retries(stack: Stack, layout: Layout, mode: str, token: str) -> Ports:
    for attempt in range(1, PORT_ATTEMPTS + 1):
        ports = free_ports()
        _write_atomically(layout.relay_config, relay_toml(ports))
        _write_atomically(layout.gateway_config, gateway_toml(ports, mode))
        try:
            start_stack(stack, layout, ports, mode, token)
            return ports
        except PortTaken as e:
            stack.stop()
            if attempt == PORT_ATTEMPTS:
                raise
            _say(f"gateway demo: {e}; retrying on other ports", file=sys.stderr)
    raise AssertionError("unreachable")
