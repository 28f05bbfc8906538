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
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

from attrs import frozen

from gateway._files import FileWriteError, write_atomically, write_private
from gateway.demo import stack
from gateway.demo.stack import PROBE_ERRORS, PROBE_USER_AGENT, Ports, Process, loopback
from gateway.demo.tomlfile import Value
from gateway.pki import PKIError
from gateway.relay.credentials import CredentialFileError

__all__ = ["run_demo"]

GATEWAY_ID: Final = "demo-gateway"
ENGINEER: Final = "demo-engineer"
TARGET: Final = stack.WEB
MODES: Final = ("attended", "unattended")

DEMO_REASON: Final = "gateway demo: a look at the demo processor"
"""Why the demo's own engineer client asks, in attended mode (the plant reads it)."""
EXAMPLE_REASON: Final = "ticket 4711: recalibrate camera"
"""The reason in the printed command for another engineer."""
REQUEST_TIMEOUT: Final = 1800
"""Seconds the demo's gateway lets a request wait in attended mode (the default is 5 minutes,
little time to read the summary and try both ways in); then it is denied."""
PLACEHOLDER: Final = "..."
"""The word of demo.json's ``control`` command lines that stands for a control command."""

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
WRITTEN_BY: Final = "`gateway demo`"

TOTP_ENGINEER: Final = "demo-engineer-2fa"
"""The demo's second portal login: a password and a second factor (TOTP)."""
GROUP: Final = "pickit"
"""The demo's target group: a processor whose UI spans two ports (its page on one opens its
WebSocket on the other by the page's own host name), served by the portal on one host name."""
GROUP_MEMBERS: Final = ("pickit-ui", "pickit-ws")
GROUP_HOST: Final = "127.0.0.3"
"""Where the group's processors listen: the portal serves the same port numbers on 127.0.0.1,
and ``gateway connect --group`` on 127.0.0.2 (its default ``--bind``)."""
GROUP_BIND: Final = "127.0.0.2"
PORTAL_DOMAIN: Final = "portal.localhost"
"""The demo portal's host name: browsers resolve ``*.localhost`` to loopback, so each target's
origin (``web--demo-gateway.portal.localhost``) works without DNS."""

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2


class DemoError(Exception):
    """Something a user can act on; ``str()`` is one line, ``log`` the file worth reading."""

    def __init__(
        self, message: str, log: Path | None = None, *, exit_code: int = EXIT_FAILED
    ) -> None:
        super().__init__(message)
        self.log = log
        self.exit_code = exit_code
        # Now, before stopping adds more; the demo's own probes would crowd out what went wrong.
        self.tail = (
            stack.log_tail(log, LOG_TAIL_LINES, without=PROBE_USER_AGENT) if log is not None else []
        )


class PortTaken(DemoError):
    """A child could not listen on the port picked for it: worth a retry on new ports."""


class StopRequested(Exception):
    """SIGINT/SIGTERM/SIGHUP arrived: not a failure, the user wants everything stopped."""


@frozen
class Layout(stack.Layout):
    """Where a demo keeps its files: all in one folder, so the configs use plain relative paths."""

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def demo_json(self) -> Path:
        return self.workdir / "demo.json"

    @property
    def stopped_json(self) -> Path:
        """demo.json once the demo stopped: its token stays readable, and a script waiting for
        demo.json to appear is not fooled by a stack that is gone."""
        return self.workdir / "demo.stopped.json"

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
    """One ``python -m gateway ...`` process of the demo, with the title its messages use.

    ``optional``: once the demo runs, this child may end without ending the demo (the engineer
    client ends when the plant denies its request or ends its session: that is the product
    working, and the rest of the stack is still worth trying).
    """

    def __init__(self, title: str, program: Process, *, optional: bool = False) -> None:
        self.title = title
        self.program = program
        self.optional = optional
        self.reported = False

    @property
    def log(self) -> Path:
        return self.program.log

    def failure(self, when: str) -> DemoError | None:
        """Why this child is no use any more, or None while it runs."""
        code = self.program.popen.poll()
        if code is None:
            return None
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        message = f"the {self.title} {how} {when}"
        tail = "\n".join(stack.log_tail(self.log, 50, without=PROBE_USER_AGENT))
        if _LISTEN_FAILED.search(tail):
            return PortTaken(message + " (its port was taken)", self.log)
        return DemoError(message, self.log)


class Children:
    """The running children, started in order and stopped in reverse order."""

    def __init__(self, layout: Layout, stop: StopSignal) -> None:
        self.layout = layout
        self.stop_signal = stop
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        title: str,
        args: Sequence[str],
        extra_env: dict[str, str] | None = None,
        *,
        optional: bool = False,
    ) -> Child:
        """Start ``python -m gateway ARGS`` logging to ``logs/NAME.log`` (truncated each run)."""
        env = dict(os.environ)
        env.pop("GATEWAY_TOKEN", None)  # only the engineer client gets a token
        env.update({"GATEWAY_EXIT_WITH_PARENT": "1", "PYTHONUNBUFFERED": "1"})
        env.update(extra_env or {})
        program = Process.start(
            name,
            stack.python_gateway(args),
            log=self.layout.logs / f"{name}.log",
            cwd=self.layout.workdir,
            env=env,
            own_group=True,  # see StopSignal: the terminal's Ctrl-C is ours to relay
        )
        child = Child(title, program, optional=optional)
        self.children.append(child)
        return child

    def first_failure(self, when: str = "during startup") -> DemoError | None:
        for child in self.children:
            problem = child.failure(when)
            if problem is not None:
                return problem
        return None

    def watch(self, tell: Callable[[Child], None]) -> DemoError | None:
        """While the demo runs: the first failure of a child the demo cannot do without; an
        optional child that ended is told about once (``tell``) and otherwise left be."""
        for child in self.children:
            problem = child.failure("while the demo was running")
            if problem is None:
                continue
            if not child.optional:
                return problem
            if not child.reported:
                child.reported = True
                tell(child)
        return None

    def stop(self) -> None:
        """SIGTERM every child (last started first), wait up to STOP_GRACE, then SIGKILL."""
        programs = [child.program for child in self.children]
        stack.stop_together(programs, STOP_GRACE, hurry=lambda: self.stop_signal.hurry)
        self.children.clear()


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
        # An earlier run's demo.json describes processes that are gone, and its token is
        # about to be replaced: only the files of this run may be found here.
        for old in (layout.demo_json, layout.stopped_json):
            old.unlink(missing_ok=True)
        yield layout


def make_credentials(layout: Layout) -> str:
    """A fresh throw-away CA, relay and gateway certificates and engineer token; the token."""
    stack.make_pki(layout, GATEWAY_ID, ca_name="Gateway demo vendor CA (throw-away)", force=True)
    # The demo's engineer may reach the demo gateway, and only it.
    return stack.make_engineer(layout.engineers, ENGINEER, gateways=[GATEWAY_ID])


def make_portal_login(layout: Layout) -> dict[str, str]:
    """The portal's certificate (the domain and ``*.domain``, from the throw-away CA), a fresh
    password for the demo's engineer, and a second engineer who also has a second factor:
    ``password``, and ``totp_name``, ``totp_password``, ``totp_secret``."""
    import secrets

    from gateway.pki import issue_relay_certificate
    from gateway.relay.credentials import add_engineer
    from gateway.relay.portal.passwords import set_password
    from gateway.relay.portal.totp import enrol

    issue_relay_certificate(
        layout.ca,
        layout.ca_key,
        portal_cert(layout),
        portal_key(layout),
        names=[PORTAL_DOMAIN, f"*.{PORTAL_DOMAIN}"],
        force=True,
    )
    password = secrets.token_urlsafe(12)
    set_password(layout.engineers, ENGINEER, password)
    add_engineer(layout.engineers, TOTP_ENGINEER, gateways=[GATEWAY_ID])
    totp_password = secrets.token_urlsafe(12)
    set_password(layout.engineers, TOTP_ENGINEER, totp_password)
    _, secret = enrol(layout.engineers, TOTP_ENGINEER)
    return {
        "password": password,
        "totp_name": TOTP_ENGINEER,
        "totp_password": totp_password,
        "totp_secret": secret,
    }


def portal_cert(layout: Layout) -> Path:
    return layout.pki / "portal.pem"


def portal_key(layout: Layout) -> Path:
    return layout.pki / "portal.key"


def portal_url(port: int, target: str | None = None) -> str:
    host = PORTAL_DOMAIN if target is None else f"{target}--{GATEWAY_ID}.{PORTAL_DOMAIN}"
    return f"https://{host}:{port}/"


def _addr(port: int) -> str:
    return str(loopback(port))


def relay_toml(
    layout: Layout,
    ports: Ports,
    portal_port: int | None = None,
    group_ports: tuple[int, int] | None = None,
) -> str:
    portal: dict[str, Value] | None = None
    if portal_port is not None:
        portal = {
            "listen": loopback(portal_port),
            "domain": PORTAL_DOMAIN,
            "cert": portal_cert(layout),
            "key": portal_key(layout),
        }
    text = stack.relay_toml(
        layout, ports, written_by=WRITTEN_BY, service={"drain_timeout": 3}, portal=portal
    )
    if portal is not None and group_ports is not None:
        text = text.replace(
            f'domain = "{PORTAL_DOMAIN}"',
            f'domain = "{PORTAL_DOMAIN}"\nextra_ports = [{group_ports[0]}, {group_ports[1]}]'
            "   # the target group's ports",
            1,
        )
    return text


def group_toml(group_ports: tuple[int, int]) -> str:
    """gateway.toml's group: two http targets on GROUP_HOST and the ``[[target_group]]``."""
    lines = ["", "# A processor whose UI spans two ports, served as one group by the portal."]
    for name, port in zip(GROUP_MEMBERS, group_ports, strict=True):
        lines += ["[[target]]", f'name = "{name}"', f'address = "{GROUP_HOST}:{port}"']
        lines += ['kind = "http"', ""]
    members = ", ".join(f'"{m}"' for m in GROUP_MEMBERS)
    lines += ["[[target_group]]", f'name = "{GROUP}"', f"members = [{members}]", ""]
    return "\n".join(lines)


def start_group(children: Children, group_ports: tuple[int, int]) -> None:
    """The group's two processors: the page's on the first port, its WebSocket on the second."""
    ui_port, ws_port = group_ports
    for name, port, extra in (
        ("pickit-ui", ui_port, ["--ws-port", str(ws_port)]),
        ("pickit-ws", ws_port, []),
    ):
        child = children.start(
            name,
            f"group processor {name}",
            ["demo-processor", "--listen", f"{GROUP_HOST}:{port}", *extra],
        )

        def listening(port: int = port) -> str | None:
            try:
                with socket.create_connection((GROUP_HOST, port), timeout=0.5):
                    return None
            except OSError as e:
                return str(e)

        wait_until(children, child, "listen", listening)


def gateway_toml(layout: Layout, ports: Ports, mode: str) -> str:
    access: dict[str, Value] = {"request_timeout": REQUEST_TIMEOUT} if mode == "attended" else {}
    return stack.gateway_toml(
        layout,
        ports,
        gateway_id=GATEWAY_ID,
        mode=mode,
        written_by=WRITTEN_BY,
        relay={"reconnect_max_delay": 5},
        service={"drain_timeout": 3},
        access=access,
    )


def forget_earlier_mode(layout: Layout) -> None:
    """The gateway keeps the plant's last mode in its state directory, and that wins over the
    config at start (BRIEF section 3): an earlier demo's choice must not override ``--mode``."""
    from gateway.edge.state import MODE_FILE

    try:
        (layout.gateway_state / MODE_FILE).unlink(missing_ok=True)
    except OSError as e:
        raise DemoError(f"cannot remove an earlier demo's access mode: {e.strerror or e}") from None


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


def connect_args(
    layout: Layout,
    ports: Ports,
    listen: int,
    token: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    return stack.connect_args(
        relay=loopback(ports.relay_engineers),
        ca=layout.ca,
        gateway_id=GATEWAY_ID,
        target=TARGET,
        listen=loopback(listen),
        token=token,
        extra=extra,
    )


def own_client_flags(mode: str) -> list[str]:
    """Attended: the demo's own engineer client asks the plant, with a reason (a client without
    a session is refused and exits); its connections wait until the request is approved."""
    return ["--reason", DEMO_REASON] if mode == "attended" else []


def control_command(*words: str) -> str:
    """A command line for demo.json's ``control``: ``gateway ... -c /abs/gateway.toml``."""
    return shlex.join([*gateway_command(), *words])


def demo_info(
    layout: Layout,
    ports: Ports,
    token: str,
    mode: str,
    request: str | None,
    portal: tuple[int, dict[str, str]] | None = None,
    group_ports: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """demo.json: the contract in BRIEF section 3 (scripts and tests read it).

    ``connect_group_command``: ``gateway connect --group`` for the demo's target group, each
    member on its own port number at 127.0.0.2; ``connect_group_url`` the group's page then.

    ``control``: how to run the control commands against this demo's daemons, one command line
    per program in which the word `PLACEHOLDER` (``...``) stands for the command and its
    arguments (``requests``, ``approve r-4f2a9c``; ``sessions`` for the relay).  ``request``:
    the demo's own engineer client's request, waiting for the plant (attended mode; else None).
    """
    own = connect_args(layout, ports, ports.forward, token, own_client_flags(mode))
    command = [*gateway_command(), *own]
    return {
        "workdir": str(layout.workdir),
        "gateway_id": GATEWAY_ID,
        "status_url": stack.url(ports.status),
        "metrics_url": stack.url(_required(ports.metrics), "/metrics"),
        "relay_metrics_url": stack.url(ports.relay_metrics, "/metrics"),
        "processor_url": stack.url(ports.processor),
        "forward_url": stack.url(ports.forward),
        "relay_address": _addr(ports.relay_engineers),
        "relay_gateway_address": _addr(ports.relay_gateways),
        "relay_ca": str(layout.ca),
        "engineer_token": token,
        "connect_command": shlex.join(command),
        "targets": {TARGET: _addr(ports.processor)},
        "config": {"gateway": str(layout.gateway_config), "relay": str(layout.relay_config)},
        "mode": mode,
        "control": {
            "gateway": control_command(PLACEHOLDER, "-c", str(layout.gateway_config)),
            "relay": control_command("relay", PLACEHOLDER, "-c", str(layout.relay_config)),
        },
        "request": request,
        **_portal_info(portal),
        **_group_info(layout, ports, token, mode, group_ports),
    }


def _group_info(
    layout: Layout, ports: Ports, token: str, mode: str, group_ports: tuple[int, int] | None
) -> dict[str, Any]:
    if group_ports is None:
        return {}
    args = connect_args(layout, ports, ports.forward, token)
    at = args.index("--target")
    args[at : at + 4] = ["--group", GROUP, "--bind", GROUP_BIND]  # --target T --listen A
    if mode == "attended":
        args += ["--reason", EXAMPLE_REASON]
    return {
        "connect_group_command": shlex.join([*gateway_command(), *args]),
        "connect_group_url": f"http://{GROUP_BIND}:{group_ports[0]}/",
    }


def _portal_info(portal: tuple[int, dict[str, str]] | None) -> dict[str, Any]:
    """demo.json's portal keys: its URL, the demo logins (without and with a second factor)
    and each target's own origin."""
    if portal is None:
        return {}
    port, logins = portal
    from gateway.relay.portal.totp import provisioning_uri

    secret = logins["totp_secret"]
    return {
        "portal_url": portal_url(port),
        "portal_login": {"name": ENGINEER, "password": logins["password"]},
        "portal_login_totp": {
            "name": logins["totp_name"],
            "password": logins["totp_password"],
            "totp_secret": secret,
            "totp_uri": provisioning_uri(secret, logins["totp_name"]),
        },
        "portal_target_urls": {TARGET: portal_url(port, TARGET), GROUP: portal_url(port, GROUP)},
    }


def control_line(info: dict[str, Any], program: str, *command: str) -> str:
    """demo.json's ``control`` line for ``program`` with ``command`` in the placeholder's place."""
    words = shlex.split(info["control"][program])
    at = words.index(PLACEHOLDER)
    return shlex.join([*words[:at], *command, *words[at + 1 :]])


def another_client(
    layout: Layout, ports: Ports, token: str, extra: Sequence[str] = (), port: int | None = None
) -> str:
    """A second engineer client's command line, to paste as printed.

    Its ``--listen`` is a port that is free now: the demo's own client holds the forward port.
    The token goes in ``GATEWAY_TOKEN``, as the README recommends, not on the command line.
    ``extra``: ``--reason TEXT`` or ``--code CODE`` (attended mode).
    """
    args = connect_args(layout, ports, port or stack.free_port(), extra=extra)
    return f"GATEWAY_TOKEN={shlex.quote(token)} " + shlex.join([*gateway_command(), *args])


def _required(port: int | None) -> int:
    assert port is not None, "the demo's gateway always has a metrics listener"
    return port


# --------------------------------------------------------------------------------------------
# Readiness


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    return stack.http_get(url, timeout)


def wait_until(
    children: Children, child: Child, what: str, probe: Callable[[], str | None]
) -> None:
    """Poll ``probe`` (None: ready; else what is missing) until ready, a child dies or time's up.

    Every child is checked on every round: a relay that died explains a gateway that never
    comes up better than the gateway's own timeout would.
    """
    deadline = time.monotonic() + STAGE_TIMEOUT
    missing = "not checked yet"
    delay = POLL / 2
    while True:
        children.stop_signal.check()
        problem = children.first_failure()
        if problem is not None:
            raise problem
        try:
            result = probe()
        except PROBE_ERRORS as e:
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


def start_stack(
    children: Children, layout: Layout, ports: Ports, mode: str, token: str
) -> str | None:
    """Start the four processes in dependency order, each ready before the next starts.

    Attended mode: the engineer client asks the plant; the id of its request, once the gateway
    has it, is the answer (None in unattended mode, where the forward is tried instead)."""
    processor = children.start(
        "processor", "demo processor", stack.processor_args(loopback(ports.processor))
    )
    page: dict[str, bytes] = {}

    def processor_ready() -> str | None:
        status, body = _get(stack.url(ports.processor))
        if status != 200:
            return f"GET / answered {status}"
        page["body"] = body
        return None

    wait_until(children, processor, "answer HTTP", processor_ready)

    relay = children.start("relay", "relay", stack.relay_args(layout.relay_config))

    def relay_ready() -> str | None:
        _get(stack.url(ports.relay_metrics, "/metrics"))
        return stack.listening(ports.relay_gateways) or stack.listening(ports.relay_engineers)

    wait_until(children, relay, "start listening", relay_ready)

    gateway = children.start("gateway", "gateway", stack.run_args(layout.gateway_config))
    wait_until(
        children, gateway, "bring its tunnel to the relay up", lambda: stack.tunnel_up(ports)
    )

    client = children.start(
        "connect",
        "engineer client",
        connect_args(layout, ports, ports.forward, extra=own_client_flags(mode)),
        {"GATEWAY_TOKEN": token},
        optional=True,
    )
    wait_until(children, client, "open its local port", lambda: stack.listening(ports.forward))
    if mode == "attended":
        # Nothing to fetch before the plant approves; the request must be there to say how.
        return wait_for_request(children, client, ports)

    def forward_serves_page() -> str | None:
        status, body = _get(stack.url(ports.forward), timeout=5)
        if status != 200:
            return f"GET / through the tunnel answered {status}"
        if body != page["body"]:
            return "GET / through the tunnel did not return the processor's page"
        return None

    wait_until(children, client, "forward a request to the processor", forward_serves_page)
    return None


def wait_for_request(children: Children, client: Child, ports: Ports) -> str:
    """The id of the demo engineer's request, once the gateway's status shows it waiting."""
    asked: dict[str, str] = {}

    def request_waiting() -> str | None:
        report = json.loads(_get(stack.url(ports.status, "/api/status"))[1])
        for request in report.get("access", {}).get("requests", []):
            if request.get("engineer") == ENGINEER and request.get("reason") == DEMO_REASON:
                asked["id"] = str(request["id"])
                return None
        return "the gateway has no request from the demo engineer yet"

    wait_until(children, client, "ask the plant for a session", request_waiting)
    return asked["id"]


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


def summary(info: dict[str, Any], mode: str, ways_in: Sequence[str]) -> str:
    """What the demo prints once it runs; ``ways_in``: how other engineers get in (and, in
    attended mode, how the plant lets them in), from `ways_in_unattended` or `ways_in_attended`.
    """
    lines = [
        f"The remote service gateway demo is running ({mode} mode).",
        "",
        f"  Open in your browser:  {info['forward_url']}",
        "      the demo processor, reached through engineer client -> relay -> tunnel -> gateway",
    ]
    if mode == "attended":
        lines += [
            "      attended mode: the demo's engineer client has asked the plant for a session",
            f"      (request {info['request']}); the page loads once the plant approves it:",
        ]
    lines += [*ways_in, ""]
    lines += [
        *_portal_lines(info),
        f"  Gateway status page:   {info['status_url']}   (JSON: {info['status_url']}api/status)",
        f"  Gateway metrics:       {info['metrics_url']}",
        f"  Relay metrics:         {info['relay_metrics_url']}",
        f"  Processor directly:    {info['processor_url']}",
        f"  The support desk's view on the relay:  {control_line(info, 'relay', 'sessions')}",
        "",
        f"  Work dir: {info['workdir']}",
        "    relay.toml, gateway.toml (reusable), certificates; logs in logs/;",
        "    demo.json (URLs, engineer token) while the demo runs, demo.stopped.json after",
        "",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


def _portal_lines(info: dict[str, Any]) -> list[str]:
    if "portal_url" not in info:
        return []
    login, second = info["portal_login"], info["portal_login_totp"]
    code = f"python3 -c 'import pyotp; print(pyotp.TOTP(\"{second['totp_secret']}\").now())'"
    return [
        f"  Engineer portal:       {info['portal_url']}",
        f"      log in as {login['name']!r} with password {login['password']!r}; Open the",
        f"      target, or go straight to {info['portal_target_urls'][TARGET]}",
        f"      with a second factor: {second['name']!r}, password {second['password']!r}, and",
        f"      the code of the moment (an authenticator app with {second['totp_uri']},",
        f"      or: {code})",
        f"      a processor whose UI spans two ports (target group {GROUP!r}):",
        f"      {info['portal_target_urls'][GROUP]}",
        *_group_lines(info),
        "      (the certificate is from the demo's throw-away CA: the browser warns unless",
        f"      {info['relay_ca']} is imported as a trusted authority)",
        "",
    ]


def _group_lines(info: dict[str, Any]) -> list[str]:
    """The group without the portal: ``gateway connect --group``, the token in the
    environment (as the README recommends), and where its page is then."""
    if "connect_group_command" not in info:
        return []
    words = shlex.split(info["connect_group_command"])
    at = words.index("--token")
    token = words[at + 1]
    del words[at : at + 2]
    return [
        f"      or on this machine, each member on its own port at {GROUP_BIND}, then open "
        f"{info['connect_group_url']}:",
        f"        GATEWAY_TOKEN={shlex.quote(token)} {shlex.join(words)}",
    ]


def ways_in_unattended(another: str) -> list[str]:
    return ["", "  Another engineer client, on a port that is free now:", f"    {another}"]


def ways_in_attended(info: dict[str, Any], ask: str, with_code: str) -> list[str]:
    """Both ways in (BRIEF section 3): ask and be approved, or a code the plant reads out."""
    request = info["request"]
    approve_url = f"{info['status_url']}api/requests/{request}/approve"
    curl = ["curl", "-X", "POST", "-H", "content-type: application/json", "-d", "{}"]
    return [
        f"        click Approve on the gateway status page ({info['status_url']}), or run:",
        f"        {control_line(info, 'gateway', 'approve', request)}",
        f"      what is waiting:  {control_line(info, 'gateway', 'requests')}",
        f"      or approve through the status listener ({info['status_url']}), from this machine:",
        f"        {shlex.join([*curl, approve_url])}",
        "",
        "  Another engineer asks the same way (on a port that is free now):",
        f"    {ask}",
        "  or gets in at once with a session code that the plant makes and reads out:",
        f"    {control_line(info, 'gateway', 'code')}",
        f"    {with_code}",
        f"  The plant denies with:  {control_line(info, 'gateway', 'deny', 'REQUEST')} "
        "--reason TEXT",
        f"  and ends a session with:  {control_line(info, 'gateway', 'end', 'SESSION')}",
    ]


def own_client_ended(child: Child) -> None:
    """The engineer client ended while the demo runs (denied, its session ended or expired)."""
    said = [
        line.removeprefix("gateway connect: ")
        for line in stack.log_tail(child.log, 20)
        if line.startswith("gateway connect: ")  # its words for the engineer, not Twisted's
    ]
    why = f": {said[-1]}" if said else f" (see {child.log})"
    _say(f"gateway demo: the demo's engineer client has stopped{why}")
    _say("    the rest of the demo keeps running; start another engineer client as shown above")


# --------------------------------------------------------------------------------------------
# Entry point


def run_demo(workdir: Path | None, mode: str) -> int:
    """Run the demo until a signal; the exit code (0: stopped on request, 1: failed, 2: usage)."""
    if mode not in MODES:
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
        portal_logins = make_portal_login(layout)
    except (OSError, PKIError, CredentialFileError) as e:
        raise DemoError(f"cannot create the demo's certificates and token: {e}") from None
    _say(f"gateway demo: starting in {layout.workdir} ...")
    children = Children(layout, stop)
    try:
        ports, portal_port, group_ports, request = _start_with_retries(
            children, layout, mode, token
        )
        info = demo_info(
            layout, ports, token, mode, request, (portal_port, portal_logins), group_ports
        )
        _write(layout.demo_json, json.dumps(info, indent=2) + "\n", private=True)  # the token
        if mode == "attended":
            asking, coded = stack.free_ports(2)
            ways = ways_in_attended(
                info,
                another_client(layout, ports, token, ["--reason", EXAMPLE_REASON], asking),
                another_client(layout, ports, token, ["--code", "CODE"], coded),
            )
        else:
            ways = ways_in_unattended(another_client(layout, ports, token))
        _say(summary(info, mode, ways))
        while True:
            stop.check()
            # The engineer client ends with its session (denied, ended or expired by the
            # plant): the demo goes on, and says so.
            problem = children.watch(own_client_ended)
            if problem is not None:
                raise problem
            time.sleep(POLL * 2)
    except StopRequested:
        _say("gateway demo: stopping ...")
        return EXIT_OK
    finally:
        children.stop()  # on every way out: a signal, a failure, or a bug
        kept = _retire(layout)
        if stop.received is not None:
            _say(f"gateway demo: stopped. The work dir stays for you: {layout.workdir}")
            _say("    relay.toml, gateway.toml (reusable), certificates; logs in logs/")
            if kept is not None:
                _say(f"    the engineer token is kept in {kept.name} (demo.json is there only")
                _say("    while the demo runs)")


def _retire(layout: Layout) -> Path | None:
    """Rename demo.json, which promises a running stack, once the stack is gone.

    Its engineer token is the only copy (the relay keeps hashes), so it is kept under another
    name rather than deleted; whoever waits for demo.json to appear is not misled.
    """
    try:
        os.replace(layout.demo_json, layout.stopped_json)
    except FileNotFoundError:
        return None
    except OSError as e:
        _say(f"gateway demo: cannot rename {layout.demo_json}: {e.strerror or e}", file=sys.stderr)
        return None
    return layout.stopped_json


def _write(path: Path, text: str, *, private: bool = False) -> None:
    try:
        if private:
            write_private(path, text)
        else:
            write_atomically(path, text)
    except FileWriteError as e:
        raise DemoError(str(e)) from None


def _start_with_retries(
    children: Children, layout: Layout, mode: str, token: str
) -> tuple[Ports, int, tuple[int, int], str | None]:
    """The ports the stack runs on, the portal's, the target group's, and the demo client's
    request (attended)."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        ports = Ports.pick()
        portal_port, *group = stack.free_ports(3)
        group_ports = (group[0], group[1])
        _write(layout.relay_config, relay_toml(layout, ports, portal_port, group_ports))
        _write(layout.gateway_config, gateway_toml(layout, ports, mode) + group_toml(group_ports))
        forget_earlier_mode(layout)
        try:
            start_group(children, group_ports)
            request = start_stack(children, layout, ports, mode, token)
            return ports, portal_port, group_ports, request
        except PortTaken as e:
            children.stop()
            if attempt == PORT_ATTEMPTS:
                raise
            _say(f"gateway demo: {e}; retrying on other ports", file=sys.stderr)
    raise AssertionError("unreachable")
