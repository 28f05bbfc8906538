"""A real stack across an emulated slow uplink, for end-to-end tests (root only).

The namespaces are the WAN benchmark's (`bench.netns`): plant (demo processor, `gateway run`),
router (a tbf modem queue both ways), vendor (relay, `gateway connect`). The gateway dials the
relay's address across the router, as at a plant; everything else is the product's defaults
with the tests' short heartbeats. Setup that cannot be done fails the test with the reason: a
slow-uplink test that quietly skips would prove nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.netns import VENDOR_IP, Link, NetnsError, Topology, in_netns
from gateway.config import Address, Target
from gateway.demo import stack as shared
from gateway.demo.stack import PROBE_ERRORS, loopback
from tests.helpers.processes import HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, Proc, start, wait_until

GATEWAY_ID = "wan-gateway"
SETUP_DEADLINE = 20.0


@dataclass
class UplinkStack:
    topo: Topology
    workdir: Path
    ports: shared.Ports
    procs: dict[str, Proc] = field(default_factory=dict)

    def _start(
        self, name: str, ns: str, args: list[str], env: dict[str, str] | None = None
    ) -> Proc:
        proc = start(name, args, self.workdir, env, prefix=self.topo.exec_argv(ns, []))
        self.procs[name] = proc
        return proc

    def _wait_listening(self, ns: str, port: int, what: str, proc: Proc) -> None:
        wait_until(
            what,
            lambda: self.topo.listening(ns, port),
            deadline=SETUP_DEADLINE,
            proc=proc,
        )

    def _relay_sees_gateway(self) -> bool:
        def probe() -> bool:
            try:
                value = shared.scrape(
                    shared.url(self.ports.relay_metrics, "/metrics"), "relay_gateways_connected"
                )
            except PROBE_ERRORS:
                return False
            return value == 1.0

        return in_netns(self.topo.vendor, probe, timeout=10)

    def start_all(self) -> None:
        topo, ports = self.topo, self.ports
        layout = shared.Layout(self.workdir)
        names = [*shared.RELAY_NAMES, VENDOR_IP]
        shared.make_pki(layout, GATEWAY_ID, ca_name="Slow uplink test CA", relay_names=names)
        token = shared.make_engineer(layout.engineers, "wan", gateways=[GATEWAY_ID])
        relay_listen = Address(VENDOR_IP, ports.relay_gateways)
        layout.relay_config.write_text(
            shared.relay_toml(
                layout,
                ports,
                written_by="the slow-uplink test",
                relay_names=names,
                gateways={
                    "listen": relay_listen,
                    "heartbeat_interval": HEARTBEAT_INTERVAL,
                    "heartbeat_timeout": HEARTBEAT_TIMEOUT,
                },
                service={"drain_timeout": 2},
            )
        )
        layout.gateway_config.write_text(
            shared.gateway_toml(
                layout,
                ports,
                gateway_id=GATEWAY_ID,
                targets=[Target(shared.WEB, loopback(ports.processor))],
                written_by="the slow-uplink test",
                relay={"address": relay_listen},
                service={"drain_timeout": 2},
            )
        )
        processor = self._start(
            "processor", topo.plant, shared.processor_args(loopback(ports.processor))
        )
        self._wait_listening(topo.plant, ports.processor, "the processor listening", processor)
        relay = self._start("relay", topo.vendor, shared.relay_args(layout.relay_config))
        self._wait_listening(topo.vendor, ports.relay_gateways, "the relay listening", relay)
        gateway = self._start("gateway", topo.plant, shared.run_args(layout.gateway_config))
        wait_until(
            "the gateway's tunnel across the uplink",
            self._relay_sees_gateway,
            deadline=SETUP_DEADLINE,
            proc=gateway,
        )
        connect = self._start(
            "connect",
            topo.vendor,
            shared.connect_args(
                relay=loopback(ports.relay_engineers),
                ca=layout.ca,
                gateway_id=GATEWAY_ID,
                listen=loopback(ports.forward),
            ),
            env={"GATEWAY_TOKEN": token},
        )
        self._wait_listening(topo.vendor, ports.forward, "gateway connect listening", connect)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()


@contextmanager
def uplink_stack(link: Link) -> Iterator[UplinkStack]:
    """Processor, relay, gateway and `gateway connect` across `link`; all stopped and the
    namespaces removed afterwards, whatever happened."""
    topo = Topology()
    try:
        topo.up()
        topo.shape(link)
    except (NetnsError, OSError) as e:
        topo.down()
        pytest.fail(
            f"cannot set up the emulated uplink (network namespaces, veth, tbf; needs root): {e}",
            pytrace=False,
        )
    tmp = tempfile.TemporaryDirectory(prefix="gw-wan-")
    s = UplinkStack(topo, Path(tmp.name), shared.Ports.pick())
    try:
        s.start_all()
        yield s
    finally:
        s.stop_all()
        topo.down()
        tmp.cleanup()
