"""The measurements of one path in one run, driving the C load generator.

The load generator verifies every byte and prints one JSON object; this module adds what only
the harness can see (CPU and memory of the tunnel's processes) and turns both into the flat
metrics that report.py aggregates.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.paths import TunnelPath
from bench.procs import BenchError, Supervisor, Usage, read_line, tail, usage

MiB = 1 << 20
GiB = 1 << 30


MEASURES = ("idle", "ttfb", "rtt", "getrtt", "conc", "bulk", "fair")
"""The measurements, in the order each run takes them (a path names those it takes)."""


@dataclass(frozen=True)
class Plan:
    """How much of each measurement one run does."""

    runs: int
    bulk_bytes: int
    rtt_count: int
    conc_seconds: int
    ttfb_count: int
    fair_seconds: int
    idle_conns: int = 1000
    conc_conns: int = 50
    message_size: int = 1024


FULL = Plan(
    runs=3, bulk_bytes=1 * GiB, rtt_count=10000, conc_seconds=5, ttfb_count=1000, fair_seconds=5
)
QUICK = Plan(
    runs=1, bulk_bytes=512 * MiB, rtt_count=2000, conc_seconds=2, ttfb_count=300, fair_seconds=2
)


@dataclass
class PathRun:
    """One path in one run: the flat metrics, the load generator's own output, and failures."""

    metrics: dict[str, float] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Loadgen:
    binary: Path

    def run(
        self, mode: str, port: int, *args: int, timeout: float, options: Sequence[str] = ()
    ) -> dict[str, Any]:
        argv = [str(self.binary), *options, mode, "127.0.0.1", str(port), *map(str, args)]
        try:
            done = subprocess.run(
                argv, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"loadgen {mode}: no result within {timeout:.0f} s") from e
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
            raise BenchError(err.splitlines()[-1])
        result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return result


def measure_path(
    path: TunnelPath, port: int, loadgen: Loadgen, plan: Plan, sup: Supervisor
) -> PathRun:
    """The measurements the path names, each on its own: one failing does not
    hide the others. An HTTP path's round trips are `POST /echo` (and `GET /bytes/1024`), its bulk
    `GET /bytes/<n>`."""
    out = PathRun()
    tunnel = path.name != "direct"
    prefix = "http-" if path.http else ""  # the load generator's HTTP/1.1 round trip and bulk
    options = path.loadgen_options()  # e.g. the portal's TLS, host and cookie

    def step(name: str, action: Callable[[], None]) -> None:
        try:
            path.check_alive()
            sup.remember(path.roots())
            action()
            path.check_alive()  # a tunnel that died during the step invalidates it
        except BenchError as e:
            out.errors[name] = str(e)
            out.metrics = {k: v for k, v in out.metrics.items() if not k.startswith(name)}

    def snapshot() -> dict[str, Usage]:
        """Usage per tunnel process tree, by the name the path gave it (relay, sshd, ...)."""
        return {p.name: usage([p.pid]) for p in path.procs}

    def idle() -> None:
        n = plan.idle_conns
        before = snapshot()
        argv = [str(loadgen.binary), "idle", "127.0.0.1", str(port), str(n)]
        proc = sup.start("loadgen-idle", argv, stdin_pipe=True, stdout_pipe=True)
        try:
            assert proc.popen.stdout is not None
            try:
                line = read_line(proc.popen.stdout, timeout=60 + n * 0.05, what="loadgen idle")
            except BenchError as e:
                proc.popen.poll()
                raise BenchError(f"{e}: {tail(proc.log, 1)}") from e
            after = snapshot()
        finally:
            sup.stop(proc, grace=10)
        out.raw["idle"] = json.loads(line)
        out.raw["idle"]["rss_bytes"] = {
            name: [before[name].rss_bytes, after[name].rss_bytes] for name in before
        }
        if tunnel:
            kib = {
                name: (after[name].rss_bytes - u.rss_bytes) / n / 1024 for name, u in before.items()
            }
            out.metrics["idle_kib"] = sum(kib.values())
            out.metrics.update({f"idle_kib:{name}": v for name, v in kib.items()})

    def ttfb() -> None:
        count = plan.ttfb_count
        r = loadgen.run(path.ttfb_mode, port, count, timeout=30 + count * 0.1, options=options)
        out.raw["ttfb"] = r
        out.metrics["ttfb_p50_ms"] = r["latency"]["p50_ms"]
        out.metrics["ttfb_p99_ms"] = r["latency"]["p99_ms"]

    def rtt() -> None:
        n, size = plan.rtt_count, plan.message_size
        r = loadgen.run(prefix + "rtt", port, n, size, timeout=30 + n * 0.02, options=options)
        out.raw["rtt"] = r
        out.metrics["rtt_p50_ms"] = r["latency"]["p50_ms"]
        out.metrics["rtt_p99_ms"] = r["latency"]["p99_ms"]

    def getrtt() -> None:  # HTTP paths only: a GET's round trip, no request body
        n, size = plan.rtt_count, plan.message_size
        r = loadgen.run("http-get", port, n, size, timeout=30 + n * 0.02, options=options)
        out.raw["getrtt"] = r
        out.metrics["getrtt_p50_ms"] = r["latency"]["p50_ms"]
        out.metrics["getrtt_p99_ms"] = r["latency"]["p99_ms"]

    def conc() -> None:
        args = (plan.conc_conns, plan.conc_seconds, plan.message_size)
        r = loadgen.run("conc", port, *args, timeout=60 + plan.conc_seconds)
        out.raw["conc"] = r
        out.metrics["conc_per_s"] = r["per_s"]

    def bulk() -> None:
        before = snapshot()
        timeout = 60 + plan.bulk_bytes / 5e6
        r = loadgen.run(prefix + "bulk", port, plan.bulk_bytes, timeout=timeout, options=options)
        after = snapshot()
        cpu = {name: after[name].cpu_seconds_since(u) for name, u in before.items()}
        out.raw["bulk"] = {**r, "tunnel_cpu_seconds": cpu}
        out.metrics["bulk_mb_s"] = r["mb_per_s"]
        if tunnel:
            gib = plan.bulk_bytes / GiB
            out.metrics["bulk_cpu_s_per_gib"] = sum(cpu.values()) / gib
            out.metrics.update({f"bulk_cpu_s_per_gib:{name}": v / gib for name, v in cpu.items()})

    def fair() -> None:
        args = (plan.fair_seconds, plan.message_size)
        r = loadgen.run("fair", port, *args, timeout=90 + plan.fair_seconds)
        out.raw["fair"] = r
        out.metrics["fair_p99_ms"] = r["latency"]["p99_ms"]

    actions = {
        "idle": idle,
        "ttfb": ttfb,
        "rtt": rtt,
        "getrtt": getrtt,
        "conc": conc,
        "bulk": bulk,
        "fair": fair,
    }
    assert tuple(actions) == MEASURES
    for name, action in actions.items():
        if name in path.measures:
            step(name, action)
    return out
