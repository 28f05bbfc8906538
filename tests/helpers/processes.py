"""Real processes on loopback for end-to-end tests: a throw-away PKI, configs, and readiness.

Every wait polls a readiness signal (a port that answers, a status field, a metric) against a
deadline; a child that dies early fails the test at once with its log file named.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from attrs import define, field

from gateway.relay.credentials import add_engineer
from tests.helpers.pki import TestPKI, make_pki

DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data: bytes = response.read()
        return data


@define
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    _file: IO[bytes] = field(repr=False)

    def text(self) -> str:
        return self.log.read_text("utf-8", "replace")

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._file.close()
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


def start(name: str, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> Proc:
    log = workdir / f"{name}.log"
    file = log.open("ab")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        stdout=file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=workdir,
        env=full_env,
    )
    return Proc(name, popen, log, file)


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

    def url(self, name: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def write_configs(self, *, mode: str = "unattended", extra_targets: str = "") -> None:
        (self.workdir / "relay.toml").write_text(
            f"""[gateways]
listen = "127.0.0.1:{self.ports["relay_gw"]}"
ca = "{self.pki.ca_cert}"
cert = "{self.pki.relay_cert}"
key = "{self.pki.relay_key}"
heartbeat_interval = 2
heartbeat_timeout = 3
[engineers]
listen = "127.0.0.1:{self.ports["relay_eng"]}"
tokens = "engineers.toml"
[metrics]
listen = "127.0.0.1:{self.ports["relay_metrics"]}"
[service]
drain_timeout = 2
"""
        )
        (self.workdir / "gateway.toml").write_text(
            f"""[relay]
address = "127.0.0.1:{self.ports["relay_gw"]}"
ca = "{self.pki.ca_cert}"
cert = "{self.pki.gateway_cert}"
key = "{self.pki.gateway_key}"
heartbeat_interval = 2
heartbeat_timeout = 3
reconnect_max_delay = 2
[[target]]
name = "web"
address = "127.0.0.1:{self.ports["processor"]}"
[[target]]
name = "stopped"
address = "127.0.0.1:{self.ports["dead"]}"
connect_timeout = 2
{extra_targets}
[access]
mode = "{mode}"
[status]
listen = "127.0.0.1:{self.ports["status"]}"
[metrics]
listen = "127.0.0.1:{self.ports["gw_metrics"]}"
[service]
drain_timeout = 2
half_close_timeout = 3
"""
        )

    def start_processor(self) -> Proc:
        proc = start(
            "processor",
            ["demo-processor", "--listen", f"127.0.0.1:{self.ports['processor']}"],
            self.workdir,
        )
        self.procs["processor"] = proc
        wait_until("processor listening", lambda: port_open(self.ports["processor"]), proc=proc)
        return proc

    def start_relay(self) -> Proc:
        proc = start("relay", ["relay", "-c", "relay.toml"], self.workdir)
        self.procs["relay"] = proc
        wait_until("relay metrics", lambda: port_open(self.ports["relay_metrics"]), proc=proc)
        return proc

    def start_gateway(self, *, wait_up: bool = True) -> Proc:
        proc = start("gateway", ["run", "-c", "gateway.toml"], self.workdir)
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
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

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
    ) -> Proc:
        args = [
            "connect",
            "--relay",
            f"127.0.0.1:{self.ports['relay_eng']}",
            "--ca",
            str(self.pki.ca_cert),
            "--gateway",
            gateway or self.gateway_id,
            "--target",
            target,
            "--listen",
            f"127.0.0.1:{self.ports[port_key]}",
        ]
        proc = start(name, args, self.workdir, env={"GATEWAY_TOKEN": token or self.token})
        self.procs[name] = proc
        wait_until(f"{name} listening", lambda: port_open(self.ports[port_key]), proc=proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()


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
    ports = {n: free_port() for n in names}
    token = add_engineer(workdir / "engineers.toml", "erin")
    stack = Stack(workdir, pki, token, ports)
    stack.write_configs(mode=mode)
    return stack, tmp
