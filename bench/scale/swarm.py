"""Many simulated gateways in a few processes, each a real mutual-TLS HTTP/2 tunnel.

A worker process issues one certificate per simulated gateway with the product's own PKI code
(``gateway.pki.issue_gateway_certificate``, EC P-256, each its own key and subject CN) and runs,
per gateway, exactly what ``gateway run`` runs for its tunnel: ``GatewayTunnelService`` (a
``ClientService`` with the full-jitter ``Backoff``) dialling ``TLSClientEndpoint(HostnameEndpoint)``
with ``client_options`` (pinned CA, host name checked, ALPN h2) and speaking HTTP/2 through
``TunnelConnection(client_side=False)`` with PING heartbeats and the same handshake deadline.
The only additions are a source address per worker (``127.0.0.x``, so thousands of tunnels never
run out of ephemeral ports) and counters around the endpoint and the tunnel state, which is how
the benchmark sees every connect, loss and retry.  Simulated gateways have no targets: a stream
asked of one is refused.

Workers talk to their parent in JSON lines: a ``status`` line twice a second on stdout, and on
the command ``dump SINCE`` (stdin) the monotonic times of every tunnel that came up or went down
since then.  ``time.monotonic()`` is CLOCK_MONOTONIC, shared by all processes of the machine, so
the parent can put these next to the moment it killed the relay.

    python -m bench.scale.swarm --relay 127.0.0.1:PORT --ca ca.pem --ca-key ca.key -n 1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from random import Random
from typing import IO, Any

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from bench.scale.stats import parse_proc_stat_cpu_ticks, parse_status_kib, split_evenly

CLK_TCK = os.sysconf("SC_CLK_TCK")
STATUS_EVERY = 0.5
"""Seconds between a worker's status lines."""


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE to at least ``wanted`` if allowed (root may raise the hard limit
    too, up to fs.nr_open); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted > hard:
        try:
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            nr_open = wanted
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, min(wanted, nr_open)))
        except (ValueError, OSError):
            pass
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def process_usage(pid: int) -> tuple[float, int] | None:
    """(CPU-seconds, RSS KiB) of ``pid``, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    rss = parse_status_kib(status, "VmRSS")
    return parse_proc_stat_cpu_ticks(stat) / CLK_TCK, rss or 0


def gateway_id(prefix: str, index: int) -> str:
    return f"{prefix}-{index:05d}"


# -- the worker: runs inside one process with its own reactor ------------------------------------


@define
class Recorder:
    """Everything a worker counts about its gateways."""

    up: int = 0
    attempts: int = 0
    dial_failures: int = 0
    handshake_failures: int = 0
    ready_times: list[float] = field(factory=list)
    lost_times: list[float] = field(factory=list)
    tls_version: str | None = None
    alpn: str | None = None


def run_worker(args: argparse.Namespace) -> None:
    """One worker: issue certificates, then keep ``args.count`` tunnels up until told to stop."""
    raise_fd_limit(args.count * 2 + 256)
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor as _reactor
    from twisted.internet import stdio, task
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )
    from twisted.protocols.basic import LineReceiver

    from gateway.config import Heartbeat, RelayLink, parse_address
    from gateway.edge.events import FanOut
    from gateway.edge.link import GatewayTunnelService, TunnelObserver
    from gateway.net.endpoints import quiet_factory
    from gateway.pki import issue_gateway_certificate
    from gateway.tls import TLSClientEndpoint, client_options
    from gateway.tunnel.connection import TunnelConnection

    reactor: Any = _reactor
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = (workdir / "worker.log").open("a")
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(args.log_level))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(log_file), [predicate])],
        redirectStandardIO=False,
    )

    recorder = Recorder()
    out: IO[str] = sys.stdout

    commands: Any = None  # the stdin/stdout protocol, once the reactor runs

    def emit(message: dict[str, Any]) -> None:
        """One JSON line to the parent.  With the reactor running, through StandardIO's
        transport: it makes stdout non-blocking, and a plain write of a long line would fail."""
        line = json.dumps(message, separators=(",", ":")) + "\n"
        if commands is not None and commands.transport is not None:
            commands.transport.write(line.encode())
        else:
            out.write(line)
            out.flush()

    started = time.monotonic()
    certs: list[tuple[str, Path, Path]] = []
    for index in range(args.first, args.first + args.count):
        name = gateway_id(args.prefix, index)
        cert, key = workdir / f"{name}.pem", workdir / f"{name}.key"
        if not cert.exists():
            issue_gateway_certificate(
                Path(args.ca), Path(args.ca_key), cert, key, gateway_id=name, force=True
            )
        certs.append((name, cert, key))
    emit({"type": "certs", "count": len(certs), "seconds": time.monotonic() - started})

    address = parse_address(args.relay)

    class RecordingState(TunnelObserver):
        """The gateway's own tunnel observer, plus the benchmark's counters."""

        def tunnel_ready(self, connection: TunnelConnection) -> None:
            super().tunnel_ready(connection)
            recorder.up += 1
            recorder.ready_times.append(time.monotonic())
            if recorder.tls_version is None:
                handle = connection.transport.getHandle()
                recorder.tls_version = handle.get_protocol_version_name()
                alpn = handle.get_alpn_proto_negotiated()
                recorder.alpn = alpn.decode() if alpn else None

        def tunnel_lost(self, connection: TunnelConnection, reason: Failure) -> None:
            super().tunnel_lost(connection, reason)
            if connection.is_ready:
                recorder.up -= 1
                recorder.lost_times.append(time.monotonic())
            else:
                recorder.handshake_failures += 1

    services: list[GatewayTunnelService] = []
    rng = Random(args.seed)

    def make_gateway(name: str, cert: Path, key: Path) -> GatewayTunnelService:
        link = RelayLink(
            address=address,
            ca=Path(args.ca),
            cert=cert,
            key=key,
            heartbeat=Heartbeat(interval=args.heartbeat_interval, timeout=args.heartbeat_timeout),
            reconnect_cap=args.reconnect_cap,
        )
        # relay_endpoint(link, reactor), with a source address per worker.
        tcp = HostnameEndpoint(
            reactor,
            address.host,
            address.port,
            timeout=link.connect_timeout,
            bindAddress=(args.bind, 0) if args.bind else None,
        )
        options = client_options(link.expected_name, link.ca, cert_path=cert, key_path=key)
        endpoint = CountingEndpoint(TLSClientEndpoint(tcp, options, reactor), recorder)
        state = RecordingState(str(address), FanOut())

        def make_tunnel() -> TunnelConnection:
            return TunnelConnection(
                client_side=False,
                clock=reactor,
                handler=None,  # no targets: the relay's stream requests are refused
                observer=state,
                heartbeat_interval=link.heartbeat.interval,
                heartbeat_timeout=link.heartbeat.timeout,
                ready_timeout=link.connect_timeout + link.heartbeat.timeout,
            )

        return GatewayTunnelService(
            link=link,
            reactor=reactor,
            endpoint=endpoint,
            make_protocol=quiet_factory(make_tunnel),
            observer=state,
            drain_timeout=1.0,
            rng=Random(rng.getrandbits(64)),
        )

    pending = list(certs)
    per_tick = max(1, round(args.ramp * 0.05)) if args.ramp > 0 else len(pending)

    def start_some() -> None:
        batch, pending[:] = pending[:per_tick], pending[per_tick:]
        for name, cert, key in batch:
            service = make_gateway(name, cert, key)
            services.append(service)
            service.startService()
        if not pending and ramp.running:
            ramp.stop()

    ramp = task.LoopingCall(start_some)

    def status() -> None:
        usage = process_usage(os.getpid())
        emit(
            {
                "type": "status",
                "t": time.monotonic(),
                "started": len(services),
                "up": recorder.up,
                "attempts": recorder.attempts,
                "dial_failures": recorder.dial_failures,
                "handshake_failures": recorder.handshake_failures,
                "ready": len(recorder.ready_times),
                "lost": len(recorder.lost_times),
                "tls": recorder.tls_version,
                "alpn": recorder.alpn,
                "cpu": usage[0] if usage else None,
                "rss_kib": usage[1] if usage else None,
            }
        )

    def stop_all() -> Deferred[Any]:
        return DeferredList([s.stopService() for s in services if s.running], consumeErrors=True)

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            command, _, argument = line.decode().strip().partition(" ")
            if command == "dump":
                since = float(argument or 0)
                emit(
                    {
                        "type": "dump",
                        "ready": [round(t, 4) for t in recorder.ready_times if t >= since],
                        "lost": [round(t, 4) for t in recorder.lost_times if t >= since],
                    }
                )
            elif command == "status":
                status()
            elif command == "stop" and reactor.running:
                reactor.stop()

        def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
            if reactor.running:  # the parent went away
                reactor.stop()

    commands = Commands()
    stdio.StandardIO(commands)
    reactor.addSystemEventTrigger("before", "shutdown", stop_all)
    reactor.callWhenRunning(ramp.start, 0.05)
    task.LoopingCall(status).start(STATUS_EVERY, now=False)
    reactor.run()


@implementer(IStreamClientEndpoint)
class CountingEndpoint:
    """Counts dial attempts and failures (refused, timed out, TLS) of the wrapped endpoint."""

    def __init__(self, wrapped: IStreamClientEndpoint, recorder: Recorder) -> None:
        self._wrapped = wrapped
        self._recorder = recorder

    def __repr__(self) -> str:
        return repr(self._wrapped)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self._recorder.attempts += 1
        d: Deferred[IProtocol] = self._wrapped.connect(protocolFactory)

        def failed(failure: Failure) -> Failure:
            self._recorder.dial_failures += 1
            return failure

        return d.addErrback(failed)


# -- the parent's side: start workers, read their lines -------------------------------------------


@define
class WorkerProcess:
    index: int
    count: int
    popen: subprocess.Popen[str]
    latest: dict[str, Any] = field(factory=dict)
    certs_seconds: float | None = None
    dumps: list[dict[str, Any]] = field(factory=list)
    lock: threading.Lock = field(factory=threading.Lock)
    dumped: threading.Event = field(factory=threading.Event)

    def read_lines(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            kind = message.get("type")
            with self.lock:
                if kind == "status":
                    self.latest = message
                elif kind == "certs":
                    self.certs_seconds = float(message["seconds"])
                elif kind == "dump":
                    self.dumps.append(message)
                    self.dumped.set()

    def send(self, command: str) -> None:
        if self.popen.poll() is None and self.popen.stdin is not None:
            try:
                self.popen.stdin.write(command + "\n")
                self.popen.stdin.flush()
            except (BrokenPipeError, OSError):
                pass


@define
class Swarm:
    """N simulated gateways spread over ``workers`` processes."""

    relay: str
    ca: Path
    ca_key: Path
    total: int
    workdir: Path
    workers: int = 4
    prefix: str = "swarm"
    heartbeat_interval: float = 10.0
    heartbeat_timeout: float = 10.0
    reconnect_cap: float = 60.0
    ramp: float = 0.0
    source_base: str = "127.0.0."
    source_first: int = 10
    log_level: str = "warn"
    seed: int = 1
    procs: list[WorkerProcess] = field(factory=list)

    def start(self) -> None:
        first = 0
        self.workdir.mkdir(parents=True, exist_ok=True)
        sizes = split_evenly(self.total, self.workers)
        for index, count in enumerate(sizes):
            if count == 0:
                continue
            argv = [
                sys.executable,
                "-m",
                "bench.scale.swarm",
                "--worker",
                "--relay",
                self.relay,
                "--ca",
                str(self.ca),
                "--ca-key",
                str(self.ca_key),
                "--prefix",
                self.prefix,
                "--first",
                str(first),
                "--count",
                str(count),
                "--workdir",
                str(self.workdir / f"worker-{index}"),
                "--bind",
                f"{self.source_base}{self.source_first + index}",
                "--heartbeat-interval",
                str(self.heartbeat_interval),
                "--heartbeat-timeout",
                str(self.heartbeat_timeout),
                "--reconnect-cap",
                str(self.reconnect_cap),
                "--ramp",
                str(self.ramp / max(1, len(sizes))),
                "--log-level",
                self.log_level,
                "--seed",
                str(self.seed * 1000 + index),
            ]
            with (self.workdir / f"worker-{index}.stderr").open("ab") as stderr:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                    start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            worker = WorkerProcess(index, count, popen)
            threading.Thread(target=worker.read_lines, daemon=True).start()
            self.procs.append(worker)
            first += count

    def _sum(self, key: str) -> int:
        total = 0
        for proc in self.procs:
            with proc.lock:
                total += int(proc.latest.get(key) or 0)
        return total

    @property
    def up(self) -> int:
        return self._sum("up")

    def counters(self) -> dict[str, int]:
        keys = ("started", "up", "attempts", "dial_failures", "handshake_failures", "ready", "lost")
        return {key: self._sum(key) for key in keys}

    def tls(self) -> tuple[str | None, str | None]:
        for proc in self.procs:
            with proc.lock:
                if proc.latest.get("tls"):
                    return proc.latest["tls"], proc.latest.get("alpn")
        return None, None

    def certs_seconds(self) -> float | None:
        """Wall time of certificate issuance (workers run in parallel: the slowest)."""
        values = [p.certs_seconds for p in self.procs if p.certs_seconds is not None]
        return max(values) if len(values) == len(self.procs) and values else None

    def check_alive(self) -> None:
        for proc in self.procs:
            code = proc.popen.poll()
            if code is not None:
                stderr = self.workdir / f"worker-{proc.index}.stderr"
                tail = stderr.read_text(errors="replace")[-2000:] if stderr.exists() else ""
                raise RuntimeError(f"swarm worker {proc.index} exited ({code}):\n{tail}")

    def usage(self) -> tuple[float, int]:
        """(CPU-seconds, RSS KiB) summed over the worker processes."""
        cpu, rss = 0.0, 0
        for proc in self.procs:
            got = process_usage(proc.popen.pid)
            if got is not None:
                cpu += got[0]
                rss += got[1]
        return cpu, rss

    def dump(self, since: float = 0.0, timeout: float = 30.0) -> tuple[list[float], list[float]]:
        """Monotonic times of every tunnel that came up, and went down, from ``since`` on."""
        for proc in self.procs:
            proc.dumped.clear()
            proc.send(f"dump {since}")
        ready: list[float] = []
        lost: list[float] = []
        for proc in self.procs:
            if not proc.dumped.wait(timeout):
                self.check_alive()
                raise RuntimeError(
                    f"swarm worker {proc.index} did not answer 'dump' in {timeout:g}s"
                )
            with proc.lock:
                last = proc.dumps[-1]
            ready += last["ready"]
            lost += last["lost"]
        return ready, lost

    def stop(self, timeout: float = 20.0, *, graceful: bool = True) -> None:
        """Stop the workers: gracefully (GOAWAY on every tunnel) or with SIGKILL."""
        for proc in self.procs:
            if graceful:
                proc.send("stop")
            elif proc.popen.poll() is None:
                proc.popen.kill()
        end = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.popen.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)
        self.procs.clear()


def wait_for(
    what: str, check: Callable[[], bool], deadline: float, poll: float = 0.1, also: Any = None
) -> float:
    """Poll ``check`` until true; returns the seconds it took.  ``also()`` runs each poll."""
    start = time.monotonic()
    while not check():
        if also is not None:
            also()
        if time.monotonic() - start > deadline:
            raise TimeoutError(f"timed out after {deadline:g}s waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - start


# -- command line ----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.scale.swarm",
        description="Open N real gateway tunnels (own certificate each) against one relay.",
    )
    p.add_argument("--relay", required=True, help="relay gateway listener HOST:PORT")
    p.add_argument("--ca", required=True, help="vendor CA certificate (PEM)")
    p.add_argument("--ca-key", required=True, help="vendor CA key, to issue certificates")
    p.add_argument("-n", "--gateways", type=int, default=1000)
    p.add_argument("--workers", type=int, default=4, help="processes (default 4)")
    p.add_argument("--prefix", default="swarm", help="gateway ids are PREFIX-00000, ...")
    p.add_argument("--heartbeat-interval", type=float, default=10.0)
    p.add_argument("--heartbeat-timeout", type=float, default=10.0)
    p.add_argument("--reconnect-cap", type=float, default=60.0, help="backoff cap, seconds")
    p.add_argument("--ramp", type=float, default=0.0, help="gateways started per second")
    p.add_argument("--log-level", default="warn", choices=["debug", "info", "warn", "error"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", default=None, help="certificates and logs (default: temp)")
    worker = p.add_argument_group("one worker process (used by the parent)")
    worker.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    worker.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    worker.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    worker.add_argument("--bind", default="", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        if not args.workdir:
            raise SystemExit("--worker needs --workdir")
        run_worker(args)
        return 0
    import tempfile

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gw-swarm-"))
    swarm = Swarm(
        relay=args.relay,
        ca=Path(args.ca).resolve(),
        ca_key=Path(args.ca_key).resolve(),
        total=args.gateways,
        workdir=workdir,
        workers=args.workers,
        prefix=args.prefix,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        reconnect_cap=args.reconnect_cap,
        ramp=args.ramp,
        log_level=args.log_level,
        seed=args.seed,
    )
    swarm.start()
    print(f"{args.gateways} gateways in {args.workers} workers; logs in {workdir}; Ctrl-C stops")
    try:
        while True:
            time.sleep(1)
            swarm.check_alive()
            print(json.dumps(swarm.counters()), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        swarm.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
