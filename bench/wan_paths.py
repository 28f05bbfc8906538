"""The four paths of bench/paths.py laid across the emulated uplink (bench/netns.py).

The plant namespace holds the target (the processor) and the plant's end of each tunnel, the
vendor namespace the load client and the vendor's end; only the tunnel's own connection crosses
the router, and it is dialled the way the product dials it: from the plant to the vendor. The
stunnel pair is the exception that a vendor-side client forces (it dials the plant's server).

| path | vendor: loadgen -> ... | WAN connection | plant: ... -> target |
|---|---|---|---|
| direct | loadgen | loadgen -> target | target |
| stunnel | stunnel client | vendor -> plant (TLS) | stunnel server |
| openssh | port forwarded by sshd | plant -> vendor (`ssh -tt -R`) | ssh |
| ours | `gateway connect` -> relay | plant -> vendor (gateway -> relay) | `gateway run` |

Each path's `wan_port` is the server port of its WAN connection: the harness finds that
connection's sockets in `ss` output by it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bench import netns
from bench.netns import PLANT_IP, VENDOR_IP, Topology
from bench.paths import (
    BENCH_STREAM_LIMITS,
    GATEWAY_ID,
    READY_TIMEOUT,
    Direct,
    OpenSSH,
    Ours,
    Stunnel,
    TunnelPath,
)
from bench.procs import BenchError, Proc, Supervisor, free_ports, wait_until
from gateway.config import Address, Target
from gateway.demo import stack
from gateway.demo.stack import PROBE_ERRORS, loopback

LOOPBACK = "127.0.0.1"


class WanPath:
    """What the WAN harness needs of a path on top of `TunnelPath`."""

    topo: Topology
    wan_port: int
    procs: list[Proc]
    name: str

    def ns_start(self, sup: Supervisor, ns: str, name: str, argv: list[str], **kw: object) -> Proc:
        proc = sup.start(name, self.topo.exec_argv(ns, argv), **kw)  # type: ignore[arg-type]
        self.procs.append(proc)
        return proc

    def wait_listening(self, ns: str, port: int, what: str) -> None:
        wait_until(lambda: self.topo.listening(ns, port), self.procs, READY_TIMEOUT, what)

    def wait_echo(self, host: str, port: int) -> None:
        """The load client's end (vendor) listens and one verified echo made it through."""
        if host == LOOPBACK:
            self.wait_listening(self.topo.vendor, port, f"{self.name} listener")
        wait_until(
            lambda: self.topo.echo(self.topo.vendor, host, port),
            self.procs,
            READY_TIMEOUT,
            f"{self.name} echo",
        )

    def wan_start(self, sup: Supervisor, target_port: int) -> tuple[str, int]:
        """Start the path; return the (host, port) the load client dials from the vendor."""
        raise NotImplementedError


class WanDirect(WanPath, Direct):
    title = "direct TCP"

    def __init__(self, topo: Topology) -> None:
        Direct.__init__(self)
        self.topo = topo

    def wan_start(self, sup: Supervisor, target_port: int) -> tuple[str, int]:
        self.wan_port = target_port
        self.wait_echo(PLANT_IP, target_port)
        return PLANT_IP, target_port


class WanStunnel(WanPath, Stunnel):
    def __init__(self, topo: Topology) -> None:
        Stunnel.__init__(self)
        self.topo = topo

    def wan_start(self, sup: Supervisor, target_port: int) -> tuple[str, int]:
        server_port, client_port = free_ports(2)
        self.wan_port = server_port
        server = self._config("stunnel-server", server_port, target_port, client=False)
        client = self._config("stunnel-client", client_port, server_port, client=True)
        # The server listens on the plant's address, the client dials it across the router.
        _rewrite(server, f"accept = {LOOPBACK}:{server_port}", f"accept = {PLANT_IP}:{server_port}")
        _rewrite(
            client, f"connect = {LOOPBACK}:{server_port}", f"connect = {PLANT_IP}:{server_port}"
        )
        self.ns_start(sup, self.topo.plant, "stunnel-server", [self.program, str(server)])
        self.wait_listening(self.topo.plant, server_port, "stunnel server")
        self.ns_start(sup, self.topo.vendor, "stunnel-client", [self.program, str(client)])
        self.wait_echo(LOOPBACK, client_port)
        return LOOPBACK, client_port


class WanOpenSSH(WanPath, OpenSSH):
    """sshd in the vendor namespace; `ssh -tt -R` from the plant with a remote command that
    waits, as a support login with a terminal does (an interactive session: sshd sets
    TCP_NODELAY, unlike for `ssh -N`, see bench/README.md)."""

    title = "`ssh -tt -R`"

    def __init__(self, topo: Topology) -> None:
        OpenSSH.__init__(self)
        self.topo = topo

    def wan_start(self, sup: Supervisor, target_port: int) -> tuple[str, int]:
        sshd_port, forward_port = free_ports(2)
        self.wan_port = sshd_port
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {sshd_port}",
                    f"ListenAddress {VENDOR_IP}",
                    f"HostKey {self.keys.host_key}",
                    "PidFile none",
                    f"AuthorizedKeysFile {self.keys.authorized_keys}",
                    "UsePAM no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",
                    "AllowTcpForwarding remote",
                    "GatewayPorts no",
                    "X11Forwarding no",
                    "PermitTTY yes",
                    "PrintMotd no",
                    "PrintLastLog no",
                    "UseDNS no",
                    "LogLevel INFO",
                ]
            )
            + "\n"
        )
        self.ns_start(sup, self.topo.vendor, "sshd", [self.sshd, "-D", "-e", "-f", str(config)])
        self.wait_listening(self.topo.vendor, sshd_port, "sshd")
        forward = f"{LOOPBACK}:{forward_port}:{LOOPBACK}:{target_port}"
        argv = self._ssh_argv(sshd_port, "-tt", "-o", "ExitOnForwardFailure=yes", "-R", forward)
        argv[-1] = argv[-1].replace("@127.0.0.1", f"@{VENDOR_IP}")
        argv.append("exec sleep 2147483647")
        # stdin a pipe that stays open: the terminal session lasts until the harness stops it.
        self.ns_start(sup, self.topo.plant, "ssh", argv, stdin_pipe=True)
        self.wait_echo(LOOPBACK, forward_port)
        return LOOPBACK, forward_port


class WanOurs(WanPath, Ours):
    """Relay and `gateway connect` in the vendor namespace, `gateway run` in the plant dialling
    the relay's address across the router; the product's defaults otherwise."""

    def __init__(self, topo: Topology, repo: Path, extra_env: Mapping[str, str]) -> None:
        Ours.__init__(self, repo, extra_env)
        self.topo = topo

    def prepare(self, workdir: Path) -> None:
        super().prepare(workdir)
        try:  # again, with the relay's WAN address on its certificate
            stack.make_pki(
                self.layout,
                GATEWAY_ID,
                ca_name="Benchmark CA",
                relay_names=[*stack.RELAY_NAMES, VENDOR_IP],
                force=True,
            )
        except Exception as e:  # PKIError, OSError
            raise BenchError(f"cannot make the benchmark's certificates: {e}") from e

    def _connected(self) -> bool:
        def probe() -> bool:
            try:
                value = stack.scrape(
                    stack.url(self.ports.relay_metrics, "/metrics"), "relay_gateways_connected"
                )
            except PROBE_ERRORS:
                return False
            return value == 1.0

        return netns.in_netns(self.topo.vendor, probe)

    def wan_start(self, sup: Supervisor, target_port: int) -> tuple[str, int]:
        p = free_ports(6)
        self.ports = ports = stack.Ports(
            processor=target_port,
            relay_gateways=p[0],
            relay_engineers=p[1],
            relay_metrics=p[2],
            status=p[3],
            metrics=p[4],
            forward=p[5],
        )
        self.wan_port = ports.relay_gateways
        layout, env = self.layout, self.env
        layout.relay_config.write_text(
            stack.relay_toml(
                layout,
                ports,
                written_by="the WAN benchmark",
                relay_names=[*stack.RELAY_NAMES, VENDOR_IP],
                gateways={"listen": Address(VENDOR_IP, ports.relay_gateways)},
            )
        )
        layout.gateway_config.write_text(
            stack.gateway_toml(
                layout,
                ports,
                gateway_id=GATEWAY_ID,
                targets=[Target("web", loopback(target_port))],
                written_by="the WAN benchmark",
                relay={"address": Address(VENDOR_IP, ports.relay_gateways)},
                limits=BENCH_STREAM_LIMITS,
            )
        )
        vendor, plant = self.topo.vendor, self.topo.plant
        relay = stack.python_gateway(stack.relay_args(layout.relay_config))
        self.ns_start(sup, vendor, "relay", relay, cwd=self.repo, env=env)
        self.wait_listening(vendor, ports.relay_gateways, "relay listener")
        gateway = stack.python_gateway(stack.run_args(layout.gateway_config))
        self.ns_start(sup, plant, "gateway", gateway, cwd=self.repo, env=env)
        wait_until(self._connected, self.procs, READY_TIMEOUT, "gateway tunnel")
        connect = stack.python_gateway(
            stack.connect_args(
                relay=loopback(ports.relay_engineers),
                ca=layout.ca,
                gateway_id=GATEWAY_ID,
                listen=loopback(ports.forward),
            )
        )
        client_env = {**env, "GATEWAY_TOKEN": self.token}
        self.ns_start(sup, vendor, "connect", connect, cwd=self.repo, env=client_env)
        self.wait_echo(LOOPBACK, ports.forward)
        return LOOPBACK, ports.forward

    def metrics_pages(self) -> dict[str, tuple[str, str]]:
        """Where each of our processes' /metrics is: name -> (namespace, url)."""
        return {
            "gateway": (self.topo.plant, stack.url(self.ports.metrics or 0, "/metrics")),
            "relay": (self.topo.vendor, stack.url(self.ports.relay_metrics, "/metrics")),
        }


def _rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if old not in text:
        raise BenchError(f"{path.name}: expected the line {old!r}")
    path.write_text(text.replace(old, new))


def make_wan_paths(
    names: list[str], topo: Topology, repo: Path, ours_env: Mapping[str, str]
) -> list[TunnelPath]:
    every: dict[str, TunnelPath] = {
        "direct": WanDirect(topo),
        "stunnel": WanStunnel(topo),
        "openssh": WanOpenSSH(topo),
        "ours": WanOurs(topo, repo, ours_env),
    }
    return [every[n] for n in ("direct", "stunnel", "openssh", "ours") if n in names]
