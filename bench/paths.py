"""The ways from the load client to the target that the benchmark compares.

Each path is set up fresh for every run as separate processes on loopback and torn down after it.
`start` returns the port the load client dials once a real echo has made it through end to end;
`roots` are the pids whose process trees are the tunnel (their CPU and memory are measured).
A path with `http` set is measured with the load generator's HTTP/1.1 modes, and only in the
`measures` it names (`measure.py`).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

from bench import keys, portal
from bench.procs import BenchError, Proc, Supervisor, echo_probe, free_ports, wait_until
from gateway.config import Target, TargetKind
from gateway.demo import stack
from gateway.demo.stack import PROBE_ERRORS, loopback
from gateway.demo.tomlfile import Table
from gateway.pki import issue_relay_certificate

READY_TIMEOUT = 30.0
GATEWAY_ID = "bench-gw"
BENCH_STREAM_LIMITS = {
    "streams_per_engineer": 100_000,
    "streams_per_target": 100_000,
    "streams_per_tunnel": 100_000,
}
"""The gateway's [limits] for the benchmark: it measures the tunnel, not the limits."""
BENCH_RELAY_LIMITS: dict[str, Table] = {
    "gateways": {"max_streams_per_tunnel": 60_000},
    "engineers": {"max_streams_per_connection": 60_000},
}
"""The relay's stream limits for the benchmark, likewise (1000 idle streams on one connection)."""


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, read from /proc (no connection is made,
    so a tunnel does not see a stray stream before the benchmark starts)."""
    return stack.listening(port) is None


HTTP_PROBE_BODY = b"probe"
HTTP_PROBE_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 5\r\n\r\n"
    + HTTP_PROBE_BODY
)


def http_probe(port: int) -> bool:
    """One verified HTTP/1.1 echo (`POST /echo`) through the path: an http target's follower
    would end a stream that starts with `ECHO`."""
    request = b"POST /echo HTTP/1.1\r\nHost: bench\r\nContent-Length: 5\r\n\r\n" + HTTP_PROBE_BODY
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(2)
            s.sendall(request)
            got = b""
            while len(got) < len(HTTP_PROBE_ANSWER):
                chunk = s.recv(len(HTTP_PROBE_ANSWER) - len(got))
                if not chunk:
                    return False
                got += chunk
            return got == HTTP_PROBE_ANSWER
    except OSError:
        return False


def find_program(*names: str) -> str | None:
    extra = os.pathsep.join(["/usr/sbin", "/usr/bin", "/sbin"])
    for name in names:
        found = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + extra)
        if found:
            return found
    return None


class TunnelPath(ABC):
    """One way from load client to target."""

    name: str  # key in the JSON
    title: str  # column heading
    http = False  # the load generator speaks HTTP/1.1 (target.c's HTTP mode) on this path
    measures: tuple[str, ...] = ("idle", "ttfb", "rtt", "conc", "bulk", "fair")  # measure.py
    ttfb_mode = "ttfb"  # the load generator's new-connection mode (HTTP over TLS: http-ttfb)

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.details: dict[str, str] = {}

    def prepare(self, workdir: Path) -> None:  # noqa: B027  (optional hook)
        """Once per benchmark: keys, certificates, anything that is not a process.
        Raises BenchError when the path cannot run here; the reason is shown in the table."""

    @abstractmethod
    def start(self, sup: Supervisor, target_port: int) -> int:
        """Start the processes; return the port the load client dials, once it works."""

    def roots(self) -> list[int]:
        return [p.pid for p in self.procs]

    def loadgen_options(self) -> list[str]:
        """Options before the load generator's mode (``--tls``, ``--host``, ``--cookie``)."""
        return []

    def check_alive(self) -> None:
        for proc in self.procs:
            if not proc.alive():
                raise BenchError(proc.why_dead())

    def stop(self, sup: Supervisor) -> None:
        """Stop in reverse order of start (the dialling side first)."""
        for proc in reversed(self.procs):
            sup.stop(proc)
        self.procs = []

    def _ready(self, port: int) -> None:
        wait_until(lambda: listening(port), self.procs, READY_TIMEOUT, f"{self.name} listener")
        probe = http_probe if self.http else echo_probe
        wait_until(lambda: probe(port), self.procs, READY_TIMEOUT, f"{self.name} echo")


class Direct(TunnelPath):
    name, title = "direct", "direct"

    def start(self, sup: Supervisor, target_port: int) -> int:
        return target_port


class Stunnel(TunnelPath):
    """Client-side stunnel (plaintext in, TLS with a client certificate out) to a server-side
    stunnel (verifies that certificate, forwards to the target): two hops, mutual TLS."""

    name, title = "stunnel", "stunnel"

    def prepare(self, workdir: Path) -> None:
        program = find_program("stunnel4", "stunnel")
        if program is None:
            raise BenchError("stunnel not installed (run bench/install-deps.sh)")
        self.program = program
        self.dir = workdir
        self.tls = keys.make_tls(workdir / "pki")
        version = version_text([program, "-version"])
        self.details["version"] = _first_match(r"stunnel \S+", version, "?")

    def _config(self, name: str, accept: int, connect: int, client: bool) -> Path:
        t = self.tls
        cert, key = (t.client_cert, t.client_key) if client else (t.server_cert, t.server_key)
        lines = [
            "foreground = yes",
            "pid =",
            "debug = warning",  # per-connection notices would cost the peer log writes
            "[bench]",
            f"accept = 127.0.0.1:{accept}",
            f"connect = 127.0.0.1:{connect}",
            f"cert = {cert}",
            f"key = {key}",
            f"CAfile = {t.ca}",
            "verifyChain = yes",
            "sslVersionMin = TLSv1.2",
            "socket = l:TCP_NODELAY=1",
            "socket = r:TCP_NODELAY=1",
        ]
        lines += ["client = yes", "checkHost = localhost"] if client else ["requireCert = yes"]
        path = self.dir / f"{name}.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, sup: Supervisor, target_port: int) -> int:
        server_port, client_port = free_ports(2)
        server = self._config("stunnel-server", server_port, target_port, client=False)
        client = self._config("stunnel-client", client_port, server_port, client=True)
        self.procs.append(sup.start("stunnel-server", [self.program, str(server)]))
        wait_until(lambda: listening(server_port), self.procs, READY_TIMEOUT, "stunnel server")
        self.procs.append(sup.start("stunnel-client", [self.program, str(client)]))
        self._ready(client_port)
        if "tls" not in self.details:
            self.details["tls"] = tls_summary(
                server_port,
                self.tls.ca,
                ["-cert", str(self.tls.client_cert), "-key", str(self.tls.client_key)],
            )
        return client_port


class OpenSSH(TunnelPath):
    """`sshd` with its own config on a high port, and `ssh -N -R` from the target's side:
    load client -> port forwarded by sshd -> ssh client -> target."""

    name, title = "openssh", "OpenSSH"

    def prepare(self, workdir: Path) -> None:
        sshd, ssh = find_program("sshd"), find_program("ssh")
        if sshd is None or ssh is None:
            raise BenchError("sshd or ssh not installed (run bench/install-deps.sh)")
        self.sshd, self.ssh = sshd, ssh
        self.dir = workdir
        self.keys = keys.make_ssh(workdir / "keys")
        self.user = _user()
        if os.geteuid() == 0:  # sshd's privilege separation directory, normally made at boot
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.details["version"] = version_text([ssh, "-V"]).strip()

    def _ssh_argv(self, sshd_port: int, *extra: str) -> list[str]:
        k = self.keys
        return [
            self.ssh,
            "-F",
            "/dev/null",
            "-p",
            str(sshd_port),
            "-i",
            str(k.user_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={k.known_hosts}",
            "-o",
            f"HostKeyAlias={k.host_alias}",
            *extra,
            f"{self.user}@127.0.0.1",
        ]

    def start(self, sup: Supervisor, target_port: int) -> int:
        sshd_port, forward_port = free_ports(2)
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {sshd_port}",
                    "ListenAddress 127.0.0.1",
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
                    "PermitTTY no",
                    "PrintMotd no",
                    "UseDNS no",
                    "LogLevel INFO",
                ]
            )
            + "\n"
        )
        self.procs.append(sup.start("sshd", [self.sshd, "-D", "-e", "-f", str(config)]))
        wait_until(lambda: listening(sshd_port), self.procs, READY_TIMEOUT, "sshd")
        forward = f"127.0.0.1:{forward_port}:127.0.0.1:{target_port}"
        argv = self._ssh_argv(sshd_port, "-N", "-o", "ExitOnForwardFailure=yes", "-R", forward)
        self.procs.append(sup.start("ssh", argv))
        self._ready(forward_port)
        if "cipher" not in self.details:
            self.details["cipher"] = self._negotiated(sshd_port)
        return forward_port

    def _negotiated(self, sshd_port: int) -> str:
        """The cipher and MAC of a separate short session (the tunnel itself runs without -v)."""
        argv = self._ssh_argv(sshd_port, "-v", "-N", "-o", "ConnectTimeout=10")
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except OSError as e:
            return f"unknown ({e})"
        lines = []
        try:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode(errors="replace")
                lines.append(line)
                if "Authenticated to" in line or len(lines) > 400:
                    break
        finally:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stderr is not None:
                proc.stderr.close()
        text = "".join(lines)
        return _first_match(r"(?<=server->client cipher: ).*", text, "unknown").strip()


class Ours(TunnelPath):
    """`gateway relay`, `gateway run` (dials the relay, mutual TLS, HTTP/2) and the engineer's
    `gateway connect`: load client -> connect -> relay -> tunnel -> gateway -> target.

    Laid out and configured as every throw-away stack is (`gateway.demo.stack`), with the
    product's defaults: nothing tuned for the benchmark."""

    name, title = "ours", "ours"
    kind = TargetKind.TCP

    def __init__(self, repo: Path, extra_env: Mapping[str, str]) -> None:
        super().__init__()
        self.repo = repo
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH", "")) if p)
        env.pop("GATEWAY_TOKEN", None)  # only the engineer client gets one
        env.update(extra_env)
        self.env = env
        if extra_env:
            self.details["env"] = " ".join(f"{k}={v}" for k, v in sorted(extra_env.items()))

    def prepare(self, workdir: Path) -> None:
        self.layout = stack.Layout(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        version = version_text(stack.python_gateway(["--version"]), self.env)
        self.details["version"] = version.splitlines()[-1]
        try:
            stack.make_pki(self.layout, GATEWAY_ID, ca_name="Benchmark CA", force=True)
            self.token = stack.make_engineer(self.layout.engineers, "bench", gateways=[GATEWAY_ID])
        except Exception as e:  # PKIError, CredentialFileError, FileWriteError, OSError
            raise BenchError(f"cannot make the benchmark's certificates and token: {e}") from e

    def _gateway_connected(self) -> bool:
        try:
            connected = stack.scrape(
                stack.url(self.ports.relay_metrics, "/metrics"), "relay_gateways_connected"
            )
        except PROBE_ERRORS:
            return False
        return connected == 1.0

    def start(self, sup: Supervisor, target_port: int) -> int:
        ports = self._start_tunnel(sup, target_port)
        layout, env = self.layout, self.env
        connect = stack.python_gateway(
            stack.connect_args(
                relay=loopback(ports.relay_engineers),
                ca=layout.ca,
                gateway_id=GATEWAY_ID,
                listen=loopback(ports.forward),
            )
        )
        client_env = {**env, "GATEWAY_TOKEN": self.token}
        self.procs.append(sup.start("connect", connect, cwd=self.repo, env=client_env))
        self._ready(ports.forward)
        if "tls" not in self.details:
            self.details["tls"] = (
                tls_summary(ports.relay_engineers, layout.ca, []) + " (engineer listener)"
            )
        return ports.forward

    def _portal_section(self, ports: stack.Ports) -> Table | None:
        """relay.toml's ``[portal]``, if the path uses the portal."""
        return None

    def _before_relay(self) -> None:
        """After relay.toml is written, before the relay starts."""

    def _start_tunnel(self, sup: Supervisor, target_port: int) -> stack.Ports:
        """The relay and the gateway, the gateway's tunnel up."""
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
        layout, env = self.layout, self.env
        layout.relay_config.write_text(
            stack.relay_toml(
                layout,
                ports,
                written_by="the benchmark",
                gateways=BENCH_RELAY_LIMITS["gateways"],
                engineers=BENCH_RELAY_LIMITS["engineers"],
                portal=self._portal_section(ports),
            )
        )
        layout.gateway_config.write_text(
            stack.gateway_toml(
                layout,
                ports,
                gateway_id=GATEWAY_ID,
                targets=[Target("web", loopback(target_port), kind=self.kind)],
                written_by="the benchmark",
                # One engineer, one target, 1000 idle connections: above the default limits.
                limits=BENCH_STREAM_LIMITS,
            )
        )
        self._before_relay()
        relay = stack.python_gateway(stack.relay_args(layout.relay_config))
        self.procs.append(sup.start("relay", relay, cwd=self.repo, env=env))
        wait_until(
            lambda: listening(ports.relay_gateways), self.procs, READY_TIMEOUT, "relay listener"
        )
        gateway = stack.python_gateway(stack.run_args(layout.gateway_config))
        self.procs.append(sup.start("gateway", gateway, cwd=self.repo, env=env))
        wait_until(self._gateway_connected, self.procs, READY_TIMEOUT, "gateway tunnel")
        return ports


class OursTcpHttp(Ours):
    """Ours with a `tcp` target, driven with HTTP/1.1 requests: the reference for `OursHttp`."""

    name, title = "ours-tcp-http", "ours, tcp target, HTTP load"
    http = True
    measures = ("rtt", "getrtt", "bulk")


class OursHttp(Ours):
    """Ours with the target allowlisted as `kind = "http"`: the gateway follows every request
    (`gateway.edge.httpfollow`). Compared with `OursTcpHttp` in the same run."""

    name, title = "ours-http", "ours, http target, HTTP load"
    kind = TargetKind.HTTP
    http = True
    measures = ("rtt", "getrtt", "bulk")


class OursPortal(Ours):
    """The browser's path: the load generator speaks HTTPS (TLS, HTTP/1.1) to the relay's
    engineer portal with a logged-in engineer's origin pass, the portal proxies each connection
    through the tunnel to the gateway, and the gateway to the target: two processes, like
    stunnel's two hops, no engineer client.

    The engineer's password is set with `gateway relay set-password`; the pass is obtained as a
    browser obtains it on Open (`bench.portal`), fresh for every run.  The target is allowlisted
    as `kind = "http"`, as the README configures processor UIs for the portal (so `view` works
    on it): the gateway follows every request, as on ours-http."""

    name, title = "ours-portal", "ours, portal (HTTPS)"
    kind = TargetKind.HTTP
    http = True
    measures = ("ttfb", "rtt", "getrtt", "bulk")
    ttfb_mode = "http-ttfb"
    engineer = "bench"
    target = "web"
    domain = "bench.localhost"

    def prepare(self, workdir: Path) -> None:
        super().prepare(workdir)
        layout = self.layout
        self.portal_cert = layout.pki / "portal.pem"
        self.portal_key = layout.pki / "portal.key"
        try:
            issue_relay_certificate(
                layout.ca,
                layout.ca_key,
                self.portal_cert,
                self.portal_key,
                names=[self.domain, f"*.{self.domain}"],
                force=True,
            )
        except Exception as e:  # PKIError, OSError
            raise BenchError(f"cannot make the portal's certificate: {e}") from e
        self.password = secrets.token_urlsafe(18)
        self.password_set = False
        self.pass_token = ""

    @property
    def origin_host(self) -> str:
        return f"{self.target}--{GATEWAY_ID}.{self.domain}"

    def loadgen_options(self) -> list[str]:
        return [
            *("--tls", str(self.layout.ca), "--host", self.origin_host),
            *("--cookie", f"{portal.PASS_COOKIE}={self.pass_token}"),
        ]

    def _portal_section(self, ports: stack.Ports) -> Table | None:
        return {
            "listen": loopback(ports.forward),
            "domain": self.domain,
            "cert": self.portal_cert,
            "key": self.portal_key,
        }

    def _before_relay(self) -> None:
        if self.password_set:
            return
        argv = stack.python_gateway(
            ["relay", "set-password", self.engineer, "-c", str(self.layout.relay_config)]
        )
        try:
            done = subprocess.run(
                argv,
                input=self.password + "\n",
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                cwd=self.repo,
                env=self.env,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BenchError(f"gateway relay set-password: {e}") from e
        if done.returncode != 0:
            raise BenchError(f"gateway relay set-password: {done.stderr.strip()[-300:]}")
        self.password_set = True

    def start(self, sup: Supervisor, target_port: int) -> int:
        ports = self._start_tunnel(sup, target_port)
        port, ca = ports.forward, self.layout.ca
        wait_until(lambda: listening(port), self.procs, READY_TIMEOUT, "portal listener")
        self.pass_token = portal.log_in(
            ca, port, self.domain, GATEWAY_ID, self.target, self.engineer, self.password
        )
        wait_until(
            lambda: portal.echo_probe(ca, port, self.origin_host, self.pass_token),
            self.procs,
            READY_TIMEOUT,
            "portal echo",
        )
        if "tls" not in self.details:
            self.details["tls"] = (
                tls_summary(port, ca, ["-servername", self.origin_host]) + " (portal)"
            )
        return port


def tls_summary(port: int, ca: Path, extra: list[str]) -> str:
    """Protocol and cipher suite that `openssl s_client` negotiates with a listener."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca), "-brief"]
    try:
        done = subprocess.run(
            argv + extra, capture_output=True, timeout=10, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    text = done.stderr.decode(errors="replace") + done.stdout.decode(errors="replace")
    protocol = _first_match(r"(?<=Protocol version: )\S+", text, "?")
    cipher = _first_match(r"(?<=Ciphersuite: )\S+", text, "?")
    return f"{protocol} {cipher}"


def version_text(argv: list[str], env: Mapping[str, str] | None = None) -> str:
    """What a `--version`-style command prints on either stream, whatever its exit code."""
    try:
        done = subprocess.run(
            argv, capture_output=True, timeout=30, check=False, stdin=subprocess.DEVNULL, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    return (done.stdout + done.stderr).decode(errors="replace").strip() or "unknown"


def _first_match(pattern: str, text: str, default: str) -> str:
    match = re.search(pattern, text)
    return match.group(0) if match else default


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
