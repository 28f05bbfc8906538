"""The real processes of the scale benchmark: relay, probe gateway, processor, engineer client.

Each is the product's own program (``python -m gateway ...``), laid out, configured and started
as every throw-away stack is (`gateway.demo.stack`); what is the benchmark's own is its tuning:
the relay keeps the default heartbeat unless told otherwise and may run with A/B patches
(``bench.scale.patched_relay``), and the probe gateway redials with a 2 s cap.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from attrs import define, field

from bench.scale.stats import parse_netstat, parse_status_kib
from bench.scale.swarm import process_usage
from gateway.demo import stack as shared
from gateway.demo.stack import PROBE_ERRORS, Process, loopback, url
from gateway.promtext import metric_value

PROBE_GATEWAY = "probe-gateway"


def netstat() -> dict[str, int]:
    """Kernel TCP counters (system-wide: other users of the machine add to them)."""
    try:
        return parse_netstat(Path("/proc/net/netstat").read_text())
    except OSError:
        return {}


@define
class Stack:
    """A throw-away PKI, configs and the real processes, all in ``workdir``."""

    workdir: Path
    heartbeat_interval: float | None = None
    heartbeat_timeout: float | None = None
    relay_patches: list[str] = field(factory=list)
    _ports: shared.Ports | None = None
    token: str = ""
    children: dict[str, Process] = field(factory=dict)
    relay_starts: int = 0

    @property
    def layout(self) -> shared.Layout:
        return shared.Layout(self.workdir, pki=self.workdir / "pki")

    @property
    def ports(self) -> shared.Ports:
        if self._ports is None:
            raise RuntimeError("Stack.prepare() picks the ports")
        return self._ports

    @property
    def ca(self) -> Path:
        return self.layout.ca

    @property
    def ca_key(self) -> Path:
        return self.layout.ca_key

    @property
    def relay_gateway_address(self) -> str:
        return str(loopback(self.ports.relay_gateways))

    def prepare(self) -> None:
        layout = self.layout
        shared.make_pki(layout, PROBE_GATEWAY, ca_name="Scale bench CA", force=True)
        self._ports = shared.Ports.pick(metrics=False)
        self.token = shared.make_engineer(layout.engineers, "scale-bench", gateways=[PROBE_GATEWAY])
        layout.relay_config.write_text(
            shared.relay_toml(
                layout,
                self.ports,
                written_by="the scale benchmark",
                gateways={
                    "heartbeat_interval": self.heartbeat_interval,
                    "heartbeat_timeout": self.heartbeat_timeout,
                },
            )
        )
        # The probe gateway: a real `gateway run` with one target, redialling with a 2 s cap so
        # that engineer requests sample the relay during a storm instead of our own backoff.
        layout.gateway_config.write_text(
            shared.gateway_toml(
                layout,
                self.ports,
                gateway_id=PROBE_GATEWAY,
                written_by="the scale benchmark",
                relay={"reconnect_max_delay": 2},
            )
        )

    # -- processes ------------------------------------------------------------------------------

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        child = Process.start(
            name,
            argv,
            log=self.workdir / f"{name}.log",
            cwd=self.workdir,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            append=True,
            own_group=True,
        )
        self.children[name] = child
        return child

    def _wait_port(self, child: Process, port: int, deadline: float = 30.0) -> float:
        start = time.monotonic()
        while not shared.answers(port):
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
        args = shared.relay_args(self.layout.relay_config)
        if self.relay_patches:
            patches = [f"--patch={patch}" for patch in self.relay_patches]
            argv = [sys.executable, "-m", "bench.scale.patched_relay", *patches, *args]
        else:
            argv = shared.python_gateway(args)
        child = self._start("relay", argv)
        return self._wait_port(child, self.ports.relay_metrics)

    @property
    def relay(self) -> Process:
        return self.children["relay"]

    def start_probe(self) -> None:
        """Processor, probe gateway and engineer client (``gateway connect``)."""
        ports, layout = self.ports, self.layout
        listen = loopback(ports.processor)
        proc = self._start("processor", shared.python_gateway(shared.processor_args(listen)))
        self._wait_port(proc, ports.processor)
        self._start("gateway", shared.python_gateway(shared.run_args(layout.gateway_config)))
        args = shared.connect_args(
            relay=loopback(ports.relay_engineers),
            ca=layout.ca,
            gateway_id=PROBE_GATEWAY,
            listen=loopback(ports.forward),
        )
        connect = self._start(
            "connect", shared.python_gateway(args), env={"GATEWAY_TOKEN": self.token}
        )
        self._wait_port(connect, ports.forward)

    def stop(self, name: str) -> None:
        child = self.children.pop(name, None)
        if child is not None:
            child.stop()

    def stop_all(self, *, graceful: bool = True) -> None:
        for name in reversed(list(self.children)):
            if graceful:
                self.stop(name)
            else:
                self.children.pop(name).kill()

    # -- observing the relay ----------------------------------------------------------------------

    def relay_metrics(self) -> str | None:
        try:
            return shared.http_get(url(self.ports.relay_metrics, "/metrics"))[1].decode()
        except PROBE_ERRORS:
            return None

    def relay_metric(self, name: str) -> float | None:
        text = self.relay_metrics()
        return None if text is None else metric_value(text, name)

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
        try:
            return parse_status_kib(Path(f"/proc/{self.relay.pid}/status").read_text(), field_name)
        except OSError:
            return None
