"""The real processes of the scale benchmark: relay, probe gateway, processor, engineer client.

Each is the product's own program (``python -m gateway ...``) started the way an operator would,
with a config written here; the relay uses the default heartbeat unless told otherwise.  The
vendor PKI comes from ``gateway.pki`` (EC P-256), the engineer token from ``add_engineer``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

from attrs import define, field

from bench.scale.stats import parse_netstat, prometheus_value
from bench.scale.swarm import process_usage
from gateway.pki import create_ca, issue_gateway_certificate, issue_relay_certificate
from gateway.relay.credentials import add_engineer

PROBE_GATEWAY = "probe-gateway"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def netstat() -> dict[str, int]:
    """Kernel TCP counters (system-wide: other users of the machine add to them)."""
    try:
        return parse_netstat(Path("/proc/net/netstat").read_text())
    except OSError:
        return {}


@define
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    _file: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill9(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        self._file.close()

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._file.close()


@define
class Stack:
    """A throw-away PKI, configs and the real processes, all in ``workdir``."""

    workdir: Path
    heartbeat_interval: float | None = None
    heartbeat_timeout: float | None = None
    relay_patches: list[str] = field(factory=list)
    ports: dict[str, int] = field(factory=dict)
    token: str = ""
    children: dict[str, Child] = field(factory=dict)
    relay_starts: int = 0

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def ca(self) -> Path:
        return self.pki / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.pki / "ca.key"

    @property
    def relay_gateway_address(self) -> str:
        return f"127.0.0.1:{self.ports['relay_gw']}"

    def prepare(self) -> None:
        self.pki.mkdir(parents=True, exist_ok=True)
        create_ca(self.ca, self.ca_key, name="Scale bench CA", force=True)
        issue_relay_certificate(
            self.ca,
            self.ca_key,
            self.pki / "relay.pem",
            self.pki / "relay.key",
            names=["127.0.0.1", "localhost"],
            force=True,
        )
        issue_gateway_certificate(
            self.ca,
            self.ca_key,
            self.pki / "probe.pem",
            self.pki / "probe.key",
            gateway_id=PROBE_GATEWAY,
            force=True,
        )
        names = ["relay_gw", "relay_eng", "relay_metrics", "processor", "forward", "status"]
        self.ports = {name: free_port() for name in names}
        tokens = self.workdir / "engineers.toml"
        tokens.unlink(missing_ok=True)
        self.token = add_engineer(tokens, "scale-bench")
        heartbeat = ""
        if self.heartbeat_interval is not None:
            heartbeat += f"heartbeat_interval = {self.heartbeat_interval}\n"
        if self.heartbeat_timeout is not None:
            heartbeat += f"heartbeat_timeout = {self.heartbeat_timeout}\n"
        (self.workdir / "relay.toml").write_text(
            f"""[gateways]
listen = "127.0.0.1:{self.ports["relay_gw"]}"
ca = "pki/ca.pem"
cert = "pki/relay.pem"
key = "pki/relay.key"
{heartbeat}
[engineers]
listen = "127.0.0.1:{self.ports["relay_eng"]}"
tokens = "engineers.toml"

[metrics]
listen = "127.0.0.1:{self.ports["relay_metrics"]}"
"""
        )
        # The probe gateway: a real `gateway run` with one target, redialling with a 2 s cap so
        # that engineer requests sample the relay during a storm instead of our own backoff.
        (self.workdir / "gateway.toml").write_text(
            f"""[relay]
address = "127.0.0.1:{self.ports["relay_gw"]}"
ca = "pki/ca.pem"
cert = "pki/probe.pem"
key = "pki/probe.key"
reconnect_max_delay = 2

[[target]]
name = "web"
address = "127.0.0.1:{self.ports["processor"]}"

[access]
mode = "unattended"

[status]
listen = "127.0.0.1:{self.ports["status"]}"
"""
        )

    # -- processes ------------------------------------------------------------------------------

    def _start(
        self,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        module: list[str] | None = None,
    ) -> Child:
        log = self.workdir / f"{name}.log"
        file = log.open("ab")
        popen = subprocess.Popen(
            [sys.executable, *(module or ["-m", "gateway"]), *args],
            stdout=file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
        child = Child(name, popen, log, file)
        self.children[name] = child
        return child

    def _wait_port(self, child: Child, port: int, deadline: float = 30.0) -> float:
        start = time.monotonic()
        while not port_open(port):
            if not child.alive():
                raise RuntimeError(
                    f"{child.name} exited ({child.popen.returncode}):\n{child.tail()}"
                )
            if time.monotonic() - start > deadline:
                raise RuntimeError(f"{child.name} not listening after {deadline:g}s")
            time.sleep(0.01)
        return time.monotonic() - start

    def start_relay(self) -> float:
        """Start the relay; returns the seconds until its listeners answer."""
        self.relay_starts += 1
        module = None
        if self.relay_patches:
            module = ["-m", "bench.scale.patched_relay"]
            module += [f"--patch={patch}" for patch in self.relay_patches]
        child = self._start("relay", ["relay", "-c", "relay.toml"], module=module)
        return self._wait_port(child, self.ports["relay_metrics"])

    @property
    def relay(self) -> Child:
        return self.children["relay"]

    def start_probe(self) -> None:
        """Processor, probe gateway and engineer client (``gateway connect``)."""
        proc = self._start(
            "processor", ["demo-processor", "--listen", f"127.0.0.1:{self.ports['processor']}"]
        )
        self._wait_port(proc, self.ports["processor"])
        self._start("gateway", ["run", "-c", "gateway.toml"])
        connect = self._start(
            "connect",
            [
                "connect",
                "--relay",
                f"127.0.0.1:{self.ports['relay_eng']}",
                "--ca",
                str(self.ca),
                "--gateway",
                PROBE_GATEWAY,
                "--target",
                "web",
                "--listen",
                f"127.0.0.1:{self.ports['forward']}",
            ],
            env={"GATEWAY_TOKEN": self.token},
        )
        self._wait_port(connect, self.ports["forward"])

    def stop(self, name: str) -> None:
        child = self.children.pop(name, None)
        if child is not None:
            child.stop()

    def stop_all(self, *, graceful: bool = True) -> None:
        for name in reversed(list(self.children)):
            if graceful:
                self.stop(name)
            else:
                self.children.pop(name).kill9()

    # -- observing the relay ----------------------------------------------------------------------

    def relay_metrics(self) -> str | None:
        url = f"http://127.0.0.1:{self.ports['relay_metrics']}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text: str = response.read().decode()
                return text
        except OSError:
            return None

    def relay_metric(self, name: str) -> float | None:
        text = self.relay_metrics()
        return None if text is None else prometheus_value(text, name)

    def connected(self) -> int:
        value = self.relay_metric("relay_gateways_connected")
        return -1 if value is None else int(value)

    def relay_usage(self) -> tuple[float, int]:
        """(CPU-seconds, RSS KiB) of the relay process now."""
        got = process_usage(self.relay.pid)
        if got is None:
            raise RuntimeError(f"relay is gone:\n{self.relay.tail()}")
        return got

    def relay_status_kib(self, field_name: str) -> int | None:
        from bench.scale.stats import parse_status_kib

        try:
            return parse_status_kib(Path(f"/proc/{self.relay.pid}/status").read_text(), field_name)
        except OSError:
            return None
