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
from gateway.pki import PKIError
from gateway.relay.credentials import CredentialFileError

__all__ = ["run_demo"]

GATEWAY_ID: Final = "demo-gateway"
ENGINEER: Final = "demo-engineer"
TARGET: Final = stack.WEB

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
    """One ``python -m gateway ...`` process of the demo, with the title its messages use."""

    def __init__(self, title: str, program: Process) -> None:
        self.title = title
        self.program = program

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
        self, name: str, title: str, args: Sequence[str], extra_env: dict[str, str] | None = None
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
        child = Child(title, program)
        self.children.append(child)
        return child

    def first_failure(
        self, when: str = "during startup", *, may_end: frozenset[str] = frozenset()
    ) -> DemoError | None:
        """``may_end``: names of children whose end is no failure (told by the caller)."""
        for child in self.children:
            if child.program.name in may_end:
                continue
            problem = child.failure(when)
            if problem is not None:
                return problem
        return None

    def ended(self, names: frozenset[str]) -> bool:
        """Has one of the children named ``names`` exited?"""
        return any(
            c.program.name in names and c.program.popen.poll() is not None for c in self.children
        )

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


def _addr(port: int) -> str:
    return str(loopback(port))


def relay_toml(layout: Layout, ports: Ports) -> str:
    return stack.relay_toml(layout, ports, written_by=WRITTEN_BY, service={"drain_timeout": 3})


def gateway_toml(layout: Layout, ports: Ports, mode: str) -> str:
    return stack.gateway_toml(
        layout,
        ports,
        gateway_id=GATEWAY_ID,
        mode=mode,
        written_by=WRITTEN_BY,
        relay={"reconnect_max_delay": 5},
        service={"drain_timeout": 3},
    )


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


DEMO_REASON = "gateway demo: a look at the demo processor"
CLIENT = frozenset({"connect"})
"""The demo's engineer client: it may end while the demo runs (its session ended)."""


def connect_args(layout: Layout, ports: Ports, listen: int, token: str | None = None) -> list[str]:
    return stack.connect_args(
        relay=loopback(ports.relay_engineers),
        ca=layout.ca,
        gateway_id=GATEWAY_ID,
        target=TARGET,
        listen=loopback(listen),
        token=token,
    )


def demo_info(layout: Layout, ports: Ports, token: str) -> dict[str, Any]:
    """demo.json: the contract in BRIEF section 3 (scripts and tests read it)."""
    command = [*gateway_command(), *connect_args(layout, ports, ports.forward, token)]
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
    }


def another_client(layout: Layout, ports: Ports, token: str) -> str:
    """A second engineer client's command line, to paste as printed.

    Its ``--listen`` is a port that is free now: the demo's own client holds the forward port.
    The token goes in ``GATEWAY_TOKEN``, as the README recommends, not on the command line.
    """
    args = connect_args(layout, ports, stack.free_port())
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


def start_stack(children: Children, layout: Layout, ports: Ports, mode: str, token: str) -> None:
    """Start the four processes in dependency order, each ready before the next starts."""
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

    # Attended: the demo's client asks the plant (a client without a session would be refused
    # and exit); its connections wait until the request is approved.
    ask = ["--reason", DEMO_REASON] if mode == "attended" else []
    client = children.start(
        "connect",
        "engineer client",
        [*connect_args(layout, ports, ports.forward), *ask],
        {"GATEWAY_TOKEN": token},
    )
    wait_until(children, client, "open its local port", lambda: stack.listening(ports.forward))
    if mode == "attended":
        return  # refused until a session is approved, by design: nothing to fetch yet

    def forward_serves_page() -> str | None:
        status, body = _get(stack.url(ports.forward), timeout=5)
        if status != 200:
            return f"GET / through the tunnel answered {status}"
        if body != page["body"]:
            return "GET / through the tunnel did not return the processor's page"
        return None

    wait_until(children, client, "forward a request to the processor", forward_serves_page)


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


def summary(info: dict[str, Any], mode: str, another: str) -> str:
    lines = [
        f"The remote service gateway demo is running ({mode} mode).",
        "",
        f"  Open in your browser:  {info['forward_url']}",
        "      the demo processor, reached through engineer client -> relay -> tunnel -> gateway",
    ]
    if mode == "attended":
        lines += [
            "      attended mode: the engineer client has asked the plant for a session; the",
            "      page opens once the request is approved on the status page or with",
            "      `gateway approve` (the engineer client's log shows it waiting).",
        ]
    lines += [
        f"  Gateway status page:   {info['status_url']}   (JSON: {info['status_url']}api/status)",
        f"  Gateway metrics:       {info['metrics_url']}",
        f"  Relay metrics:         {info['relay_metrics_url']}",
        f"  Processor directly:    {info['processor_url']}",
        "",
        "  Another engineer client, on a port that is free now:",
        f"    {another}",
        "",
        f"  Work dir: {info['workdir']}",
        "    relay.toml, gateway.toml (reusable), certificates; logs in logs/;",
        "    demo.json (URLs, engineer token) while the demo runs, demo.stopped.json after",
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
    children = Children(layout, stop)
    try:
        ports = _start_with_retries(children, layout, mode, token)
        info = demo_info(layout, ports, token)
        _write(layout.demo_json, json.dumps(info, indent=2) + "\n", private=True)  # the token
        _say(summary(info, mode, another_client(layout, ports, token)))
        client_ended = False
        while True:
            stop.check()
            # The engineer client ends with its session (ended or denied by the plant): the
            # demo goes on, and says how to start another.
            problem = children.first_failure("while the demo was running", may_end=CLIENT)
            if problem is not None:
                raise problem
            if not client_ended and children.ended(CLIENT):
                client_ended = True
                _say(
                    "gateway demo: the engineer client has ended (see logs/connect.log); "
                    f"start another one with:\n    {another_client(layout, ports, token)}"
                )
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


def _start_with_retries(children: Children, layout: Layout, mode: str, token: str) -> Ports:
    for attempt in range(1, PORT_ATTEMPTS + 1):
        ports = Ports.pick()
        _write(layout.relay_config, relay_toml(layout, ports))
        _write(layout.gateway_config, gateway_toml(layout, ports, mode))
        try:
            start_stack(children, layout, ports, mode, token)
            return ports
        except PortTaken as e:
            children.stop()
            if attempt == PORT_ATTEMPTS:
                raise
            _say(f"gateway demo: {e}; retrying on other ports", file=sys.stderr)
    raise AssertionError("unreachable")
