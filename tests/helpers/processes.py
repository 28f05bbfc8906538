"""Real processes on loopback for end-to-end tests: a throw-away PKI, configs, and readiness.

The stack is laid out, configured and started the way the demo and the benchmarks do it
(`gateway.demo.stack`); what is the tests' own is their tuning (short heartbeats and drains, so
faults show within seconds), a second target that nothing listens on, and spare forward ports.

Every wait polls a readiness signal (a port that answers, a status field, a metric) against a
deadline; a child that dies early fails the test at once with its log file named.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attrs import define, field

from gateway.config import Address, Target, TargetKind, parse_address
from gateway.demo import stack as shared
from gateway.demo.stack import Process, free_port, loopback, url
from gateway.demo.tomlfile import Value
from gateway.promtext import metric_value
from tests.helpers.pki import TestPKI, make_pki

__all__ = [
    "DEADLINE",
    "Proc",
    "Stack",
    "free_port",
    "fresh_stack",
    "http_get",
    "make_stack",
    "port_open",
    "running_stack",
    "start",
    "wait_until",
]

DEADLINE = 30.0

Proc = Process
"""A started program of a test stack (``popen``, ``log``, ``text()``, ``tail()``, ``stop()``)."""

HEARTBEAT_INTERVAL = 2
HEARTBEAT_TIMEOUT = 3
RECONNECT_CAP = 2
"""The tests' heartbeat and redial settings (tests/fault derives its recovery bounds from them)."""


def wait_until(
    what: str, check: Callable[[], bool], *, deadline: float = DEADLINE, proc: Proc | None = None
) -> None:
    end = time.monotonic() + deadline
    while True:
        if check():
            return
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(
                f"{proc.name} exited ({proc.popen.returncode}) before {what}:\n{proc.tail()}"
            )
        if time.monotonic() > end:
            extra = f"\n{proc.tail()}" if proc is not None else ""
            raise AssertionError(f"timed out after {deadline:g}s waiting for {what}{extra}")
        time.sleep(0.02)


def port_open(port: int) -> bool:
    return shared.answers(port)


def http_get(address: str, timeout: float = 5.0) -> bytes:
    return shared.http_get(address, timeout)[1]


def start(
    name: str,
    args: list[str],
    workdir: Path,
    env: dict[str, str] | None = None,
    *,
    prefix: list[str] | None = None,
) -> Proc:
    """``python -m gateway ARGS`` in ``workdir``, appending to ``NAME.log`` there (a restarted
    program's log keeps what its predecessor wrote); ``prefix``: a command that execs it (such as
    ``prlimit``)."""
    return Process.start(
        name,
        [*(prefix or []), *shared.python_gateway(args)],
        log=workdir / f"{name}.log",
        cwd=workdir,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        append=True,
    )


@define
class Stack:
    """Processor, relay, gateway and engineer client, each a real process."""

    workdir: Path
    pki: TestPKI
    token: str
    ports: dict[str, int]
    procs: dict[str, Proc] = field(factory=dict)

    @property
    def gateway_id(self) -> str:
        return self.pki.gateway_id

    @property
    def layout(self) -> shared.Layout:
        return shared.Layout(self.workdir, pki=self.pki.directory)

    @property
    def stack_ports(self) -> shared.Ports:
        p = self.ports
        return shared.Ports(
            processor=p["processor"],
            relay_gateways=p["relay_gw"],
            relay_engineers=p["relay_eng"],
            relay_metrics=p["relay_metrics"],
            status=p["status"],
            metrics=p["gw_metrics"],
            forward=p["forward"],
        )

    def url(self, name: str, path: str = "/") -> str:
        return url(self.ports[name], path)

    def write_configs(
        self,
        *,
        mode: str = "unattended",
        extra_targets: str = "",
        access: dict[str, Value] | None = None,
        limits: dict[str, Value] | None = None,
        engineers: dict[str, Value] | None = None,
    ) -> None:
        """relay.toml and gateway.toml; ``extra_targets``: more ``[[target]]`` tables (TOML);
        ``access``: more ``[access]`` keys (``{"request_timeout": 3}``); ``limits``: the
        gateway's ``[limits]`` (default `E2E_LIMITS`); ``engineers``: more of the relay's
        ``[engineers]`` keys (``{"login_lockout": 1}``)."""
        layout, ports = self.layout, self.stack_ports
        layout.relay_config.write_text(
            shared.relay_toml(
                layout,
                ports,
                written_by="the end-to-end tests",
                relative=False,  # tests swap certificates by replacing their paths
                gateways={
                    "heartbeat_interval": HEARTBEAT_INTERVAL,
                    "heartbeat_timeout": HEARTBEAT_TIMEOUT,
                },
                service={"drain_timeout": 2},
                engineers=dict(engineers or {}),
            )
        )
        targets = [
            Target("web", loopback(self.ports["processor"]), kind=TargetKind.HTTP),
            Target("stopped", loopback(self.ports["dead"]), connect_timeout=2),
            *_targets(extra_targets),
        ]
        layout.gateway_config.write_text(
            shared.gateway_toml(
                layout,
                ports,
                gateway_id=self.gateway_id,
                mode=mode,
                targets=targets,
                written_by="the end-to-end tests",
                relative=False,  # tests swap certificates by replacing their paths
                relay={
                    "heartbeat_interval": HEARTBEAT_INTERVAL,
                    "heartbeat_timeout": HEARTBEAT_TIMEOUT,
                    "reconnect_max_delay": RECONNECT_CAP,
                },
                service={"drain_timeout": 2, "half_close_timeout": 3},
                access=dict(access or {}),
                limits=dict(E2E_LIMITS if limits is None else limits),
            )
        )

    def start_processor(self) -> Proc:
        proc = start(
            "processor", shared.processor_args(loopback(self.ports["processor"])), self.workdir
        )
        self.procs["processor"] = proc
        wait_until("processor listening", lambda: port_open(self.ports["processor"]), proc=proc)
        return proc

    def start_relay(self, *, nofile: int | None = None) -> Proc:
        """``nofile``: the relay's descriptor limit, as a service manager sets it (``prlimit``
        execs the relay, so the process is the relay itself)."""
        prefix = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] if nofile else None
        proc = start(
            "relay", shared.relay_args(self.layout.relay_config), self.workdir, prefix=prefix
        )
        self.procs["relay"] = proc
        wait_until("relay metrics", lambda: port_open(self.ports["relay_metrics"]), proc=proc)
        return proc

    def start_gateway(
        self, *, wait_up: bool = True, nofile: int | None = None, env: dict[str, str] | None = None
    ) -> Proc:
        """``nofile``: the gateway's descriptor limit (as for `start_relay`); ``env``: more
        environment (``TMPDIR``, to see what it writes there)."""
        prefix = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] if nofile else None
        proc = start(
            "gateway",
            shared.run_args(self.layout.gateway_config),
            self.workdir,
            env=env,
            prefix=prefix,
        )
        self.procs["gateway"] = proc
        if wait_up:
            self.wait_tunnel_up()
        return proc

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(http_get(self.url("status", "/api/status")))
        return result

    def tunnel_state(self) -> str | None:
        try:
            return str(self.status()["tunnel"]["state"])
        except OSError:
            return None

    def relay_metric(self, name: str) -> float | None:
        try:
            text = http_get(self.url("relay_metrics", "/metrics")).decode()
        except OSError:
            return None
        return metric_value(text, name)

    def wait_tunnel_up(self, deadline: float = DEADLINE) -> None:
        wait_until(
            "the tunnel to come up",
            lambda: (
                self.tunnel_state() == "up" and self.relay_metric("relay_gateways_connected") == 1.0
            ),
            deadline=deadline,
            proc=self.procs.get("gateway"),
        )

    def start_connect(
        self,
        name: str = "connect",
        *,
        target: str = "web",
        token: str | None = None,
        port_key: str = "forward",
        gateway: str | None = None,
        extra: Sequence[str] = (),
        wait_listening: bool = True,
    ) -> Proc:
        """``extra``: more flags (``--reason``, ``--code``); ``wait_listening=False`` for a client
        expected to exit before it listens."""
        args = shared.connect_args(
            relay=loopback(self.ports["relay_eng"]),
            ca=self.pki.ca_cert,
            gateway_id=gateway or self.gateway_id,
            target=target,
            listen=loopback(self.ports[port_key]),
            extra=extra,
        )
        proc = start(name, args, self.workdir, env={"GATEWAY_TOKEN": token or self.token})
        self.procs[name] = proc
        if wait_listening:
            wait_until(f"{name} listening", lambda: port_open(self.ports[port_key]), proc=proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()


E2E_LIMITS: dict[str, Value] = {"streams_per_target": 64}
"""The tests' gateway lets 64 streams reach one target (the product's default is 32): the tunnel
tests open 50 connections to the demo processor at once."""


def _targets(toml: str) -> list[Target]:
    """``[[target]]`` tables given as TOML text, as the stack's renderer takes them."""
    found = []
    for table in tomllib.loads(toml).get("target", []) if toml.strip() else []:
        address: Address = parse_address(table["address"])
        timeout = table.get("connect_timeout")
        found.append(
            Target(
                table["name"],
                address,
                connect_timeout=5.0 if timeout is None else float(timeout),
                kind=TargetKind(table.get("kind", "tcp")),
                view_websocket=bool(table.get("view_websocket", False)),
            )
        )
    return found


@contextmanager
def fresh_stack() -> Iterator[Stack]:
    """Configs and PKI for a stack, nothing started; every process started is stopped after."""
    s, tmp = make_stack()
    try:
        yield s
    finally:
        s.stop_all()
        tmp.cleanup()


@contextmanager
def running_stack() -> Iterator[Stack]:
    """Processor, relay, gateway (tunnel up) and an engineer client on ``forward``."""
    with fresh_stack() as s:
        s.start_processor()
        s.start_relay()
        s.start_gateway()
        s.start_connect()
        yield s


def make_stack(mode: str = "unattended") -> tuple[Stack, tempfile.TemporaryDirectory[str]]:
    tmp = tempfile.TemporaryDirectory(prefix="gw-e2e-")
    workdir = Path(tmp.name)
    pki = make_pki(workdir / "pki", gateway_id="e2e-gateway")
    names = [
        "relay_gw",
        "relay_eng",
        "relay_metrics",
        "status",
        "gw_metrics",
        "processor",
        "dead",
        "forward",
        "forward2",
        "forward3",
    ]
    ports = dict(zip(names, shared.free_ports(len(names)), strict=True))
    # erin may reach the stack's gateway and "nowhere", the gateway that never connects (the
    # relay answers unknown-gateway only to an engineer authorised to ask for it).
    token = shared.make_engineer(
        shared.Layout(workdir).engineers, "erin", gateways=["e2e-gateway", "nowhere"]
    )
    stack = Stack(workdir, pki, token, ports)
    stack.write_configs(mode=mode)
    return stack, tmp
