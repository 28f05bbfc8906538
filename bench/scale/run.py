"""Scale benchmark: relay memory and CPU per idle gateway, and reconnect storms.

    python -m bench.scale.run            # full: 1000 and 5000 gateways (~8 min)
    python -m bench.scale.run --quick    # 200 gateways, 1 storm (< 1 min)

For each size N a fresh relay (``python -m gateway relay``, default heartbeat) is started, its
idle RSS and CPU are read from /proc, N simulated gateways (``bench.scale.swarm``: the
product's own tunnel service, own certificate each) connect, and once
``relay_gateways_connected == N`` and the connections settled, RSS and CPU-seconds per minute
of idle are measured in several windows.  At the storm sizes a real ``gateway run`` (the probe
gateway), a demo processor and a ``gateway connect`` are added; an engineer sends a small GET
through them every 50 ms; the relay is killed with SIGKILL and started again at once (and, at
the smallest storm size, once more after staying down 10 s); the benchmark times how long until
all gateways are back, when each came back, and the engineer's time to first byte meanwhile.

Writes ``bench/results/scale-<time>.json`` and ``.md`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attrs import asdict, define, field

from bench.scale.stack import Stack, netstat
from bench.scale.stats import (
    KIB,
    cpu_per_minute,
    distribution,
    fmt,
    histogram,
    markdown_table,
    median,
    per_gateway_kib,
    percentile,
    verdict,
)
from bench.scale.swarm import Swarm, process_usage, raise_fd_limit, wait_for
from gateway.promtext import matching, metric_value

TARGET_KIB_PER_GATEWAY = 64.0
TARGET_STORM_SECONDS = 60.0
TARGET_ENGINEER_P99 = 1.0
"""Our reading of "responsive": an engineer's request gets its first byte within 1 s (p99)."""

RESULTS = Path(__file__).resolve().parent.parent / "results"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the engineer: small GETs through `gateway connect`, timed to the first byte ------------------


@define
class Sample:
    at: float  # monotonic time the request was sent
    ttfb: float | None  # seconds to the first byte of a 200 answer; None if it failed
    error: str | None = None


@define
class EngineerProbe:
    """Sends ``GET /headers`` through the engineer's local port every ``interval`` seconds."""

    port: int
    interval: float = 0.05
    timeout: float = 5.0
    samples: list[Sample] = field(factory=list)
    _stop: threading.Event = field(factory=threading.Event)
    _thread: threading.Thread | None = None

    def one(self) -> Sample:
        request = b"GET /headers HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
        sent = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout) as s:
                s.settimeout(self.timeout)
                sent = time.monotonic()
                s.sendall(request)
                first = s.recv(65536)
                ttfb = time.monotonic() - sent
                data = first
                while chunk := s.recv(65536):
                    data += chunk
        except OSError as e:
            return Sample(sent, None, type(e).__name__)
        if not data.startswith(b"HTTP/1.1 200"):
            return Sample(sent, None, "closed" if not data else data.split(b"\r\n")[0].decode())
        return Sample(sent, ttfb)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.one())
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 1)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at < end]


def ttfb_summary(samples: list[Sample]) -> dict[str, Any]:
    ok = [s.ttfb * 1000 for s in samples if s.ttfb is not None]
    errors = Counter(s.error for s in samples if s.ttfb is None)
    return {"ms": distribution(ok), "failed": sum(errors.values()), "errors": dict(errors)}


# -- profiling (optional) -------------------------------------------------------------------------


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        log("py-spy not found; no profile (pip install py-spy)")
        return None
    return subprocess.Popen(
        [
            *(spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))),
            *("--rate", "200", "--nonblocking", "--format", "raw", "--output", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """Self and inclusive sample shares of functions in py-spy's collapsed-stack output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
            if " (" in f
            else f
            for f in stack.split(";")
        ]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return {}

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {"samples": total, "self_pct": share(own), "inclusive_pct": share(inclusive)}


# -- measurements ---------------------------------------------------------------------------------


@define
class Options:
    sizes: list[int]
    storm_sizes: list[int]
    storms: int
    downtime: float
    baseline: float
    relay_patches: list[str]
    reconnect_cap: float
    windows: int
    window: float
    settle: float
    ramp: float
    workers: int
    profile: bool
    workdir: Path
    quick: bool


def steady_rss(stack: Stack, reads: int = 3, gap: float = 0.5) -> float:
    values = []
    for _ in range(reads):
        values.append(stack.relay_usage()[1])
        time.sleep(gap)
    value = median(values)
    assert value is not None
    return value


def cpu_windows(
    stack: Stack, swarm: Swarm | None, count: int, seconds: float
) -> tuple[list[float], list[float]]:
    """Relay and swarm CPU-seconds per minute over ``count`` windows of ``seconds``."""
    relay, workers = [], []
    for _ in range(count):
        r0, w0, t0 = stack.relay_usage()[0], swarm.usage()[0] if swarm else 0.0, time.monotonic()
        time.sleep(seconds)
        r1, w1, t1 = stack.relay_usage()[0], swarm.usage()[0] if swarm else 0.0, time.monotonic()
        relay.append(cpu_per_minute(r1 - r0, t1 - t0))
        workers.append(cpu_per_minute(w1 - w0, t1 - t0))
    return relay, workers


def connect_swarm(stack: Stack, swarm: Swarm, n: int) -> float:
    """Start the swarm's workers; returns seconds from certificates ready to all connected."""
    swarm.start()
    wait_for(
        "swarm certificates", lambda: swarm.certs_seconds() is not None, 300, also=swarm.check_alive
    )
    took = wait_for(
        f"{n} gateways connected",
        lambda: stack.connected() == n,
        max(120.0, n / 20),
        poll=0.25,
        also=swarm.check_alive,
    )
    log(f"{n} gateways connected in {took:.1f}s (certificates {swarm.certs_seconds():.1f}s)")
    return took


def measure_size(stack: Stack, swarm: Swarm, opts: Options, n: int) -> dict[str, Any]:
    """Fresh relay, idle baseline, N gateways: RSS and idle CPU per gateway."""
    stack.start_relay()
    stack.connected()  # the first scrape starts the metrics thread pool: count it as idle
    time.sleep(opts.settle / 2)
    idle_rss = steady_rss(stack)
    idle_cpu, _ = cpu_windows(stack, None, 1, min(opts.window, 10.0) / 2)
    log(f"N={n}: idle relay RSS {idle_rss / KIB:.1f} MiB, CPU {idle_cpu[0]:.3f} s/min")
    ramp_seconds = connect_swarm(stack, swarm, n)
    time.sleep(opts.settle)
    rss = steady_rss(stack)
    profile = None
    if opts.profile:
        profile_path = opts.workdir / f"profile-idle-{n}.txt"
        spy = start_profile(stack.relay.pid, opts.window, profile_path)
    relay_cpu, swarm_cpu = cpu_windows(stack, swarm, opts.windows, opts.window)
    if opts.profile and spy is not None:
        spy.wait(30)
        profile = summarize_profile(profile_path)
    rss_after = steady_rss(stack)
    cpu_min = median(relay_cpu)
    assert cpu_min is not None
    result: dict[str, Any] = {
        "gateways": n,
        "ramp_seconds": ramp_seconds,
        "ramp_rate": opts.ramp,
        "certs_seconds": swarm.certs_seconds(),
        "tls": swarm.tls(),
        "idle_relay_rss_kib": idle_rss,
        "relay_rss_kib": rss,
        "relay_rss_after_windows_kib": rss_after,
        "relay_hwm_kib": stack.relay_status_kib("VmHWM"),
        "relay_rss_anon_kib": stack.relay_status_kib("RssAnon"),
        "kib_per_gateway": per_gateway_kib(rss, idle_rss, n),
        "idle_relay_cpu_s_per_min": idle_cpu[0],
        "relay_cpu_s_per_min": relay_cpu,
        "relay_cpu_s_per_min_median": cpu_min,
        "heartbeat_cpu_ms_per_gateway_min": (cpu_min - idle_cpu[0]) * 1000 / n,
        "relay_core_share": cpu_min / 60,
        "swarm_cpu_s_per_min": swarm_cpu,
        "swarm_rss_kib": swarm.usage()[1],
        "delayed_calls": stack.relay_metric("relay_reactor_delayed_calls"),
        "open_fds": stack.relay_metric("process_open_fds"),
        "counters": swarm.counters(),
        "profile_idle": profile,
    }
    log(
        f"N={n}: {result['kib_per_gateway']:.1f} KiB/gateway, relay {cpu_min:.2f} CPU-s/min "
        f"({result['heartbeat_cpu_ms_per_gateway_min']:.3f} ms per gateway-minute)"
    )
    return result


def storm(
    stack: Stack,
    swarm: Swarm,
    probe: EngineerProbe,
    opts: Options,
    n: int,
    index: int,
    downtime: float,
) -> dict[str, Any]:
    """kill -9 the relay with everything connected, start it again after ``downtime`` seconds
    (0: at once), and time the return of every gateway and the engineer's requests."""
    expected = n + 1  # the swarm and the probe gateway
    wait_for("all connected before the storm", lambda: stack.connected() == expected, 120)
    before = swarm.counters()
    kernel_before = netstat()
    swarm_cpu0 = swarm.usage()[0]
    time.sleep(opts.baseline)  # the engineer's baseline
    load_at_kill = os.getloadavg()[0]
    t_kill = time.monotonic()
    stack.relay.kill()
    if downtime:
        time.sleep(max(0.0, t_kill + downtime - time.monotonic()))
    t_start = time.monotonic()
    t_listen = t_start + stack.start_relay()
    spy = None
    profile_path = opts.workdir / f"profile-storm-{index}.txt"
    if opts.profile:
        spy = start_profile(stack.relay.pid, 15, profile_path)
    curve: list[tuple[float, int]] = []
    cpu_timeline: list[tuple[float, float]] = []
    t_all: float | None = None
    deadline = t_listen + 180
    while time.monotonic() < deadline:
        count = stack.connected()
        now = time.monotonic()
        curve.append((round(now - t_listen, 2), count))
        usage = process_usage(stack.relay.pid)
        if usage is not None:
            cpu_timeline.append((round(now - t_listen, 2), usage[0]))
        if count == expected:
            t_all = now
            break
        if not stack.relay.alive():
            raise RuntimeError(f"relay died during the storm:\n{stack.relay.tail()}")
        time.sleep(0.25)
    relay_cpu = stack.relay_usage()[0]
    hwm = stack.relay_status_kib("VmHWM")
    end = t_all if t_all is not None else time.monotonic()
    time.sleep(3.0)
    swarm_cpu1 = swarm.usage()[0]
    kernel_after = netstat()
    ready_all, _ = swarm.dump(since=t_kill)
    after = swarm.counters()
    if spy is not None:
        spy.wait(60)
    came_back = sorted(t - t_listen for t in ready_all if t > t_kill)
    # The engineer's path is back once a request sent after the relay listened succeeds (the
    # engineer client and the probe gateway first wait out their own backoff).  From then on,
    # every request's time to first byte is the relay's (and the machine's) responsiveness.
    during = probe.between(t_kill, end)
    ok = [s for s in during if s.ttfb is not None and s.at >= t_listen]
    restored = ok[0].at + (ok[0].ttfb or 0.0) if ok else None
    served = [s for s in during if restored is not None and s.at >= restored]
    kernel = {
        key: kernel_after.get(key, 0) - kernel_before.get(key, 0)
        for key in ("TcpExt.ListenOverflows", "TcpExt.ListenDrops")
    }
    metrics = stack.relay_metrics() or ""
    result: dict[str, Any] = {
        "index": index,
        "gateways": expected,
        "downtime_seconds": downtime,
        "load_average_at_kill": load_at_kill,
        "relay_listening_after_kill_seconds": t_listen - t_kill,
        "relay_startup_seconds": t_listen - t_start,
        "all_back_seconds": None if t_all is None else t_all - t_listen,
        "all_back_after_kill_seconds": None if t_all is None else t_all - t_kill,
        "reconnect_seconds": distribution(came_back, (10, 50, 90, 99)),
        "reconnects_counted": len(came_back),
        "reconnect_histogram_1s": histogram(came_back, 1.0, 60.0),
        "curve": curve,
        "relay_cpu_seconds_until_all_back": relay_cpu,
        "relay_hwm_kib": hwm,
        "relay_rss_after_kib": stack.relay_usage()[1],
        "swarm_cpu_seconds": swarm_cpu1 - swarm_cpu0,
        "dial_attempts": after["attempts"] - before["attempts"],
        "dial_failures": after["dial_failures"] - before["dial_failures"],
        "handshake_failures": after["handshake_failures"] - before["handshake_failures"],
        "relay_handshake_failures": metric_value(
            metrics, 'relay_auth_failures_total{kind="gateway_handshake"}'
        ),
        "kernel_listen_drops": kernel,
        "engineer_before": ttfb_summary(probe.between(t_kill - opts.baseline, t_kill)),
        "relay_stream_open_seconds": histogram_buckets(metrics, "relay_stream_open_seconds"),
        "engineer_back_after_listening_seconds": None if restored is None else restored - t_listen,
        "engineer_samples": [
            [
                round(x.at - t_listen, 3),
                None if x.ttfb is None else round(x.ttfb * 1000, 2),
                x.error,
            ]
            for x in probe.between(t_kill - opts.baseline, end + 3.0)
        ],
        "relay_cpu_timeline": cpu_timeline,
        "engineer_storm": ttfb_summary(served),
        "engineer_storm_ms": [round(x.ttfb * 1000, 2) for x in served if x.ttfb is not None],
        "engineer_storm_all": ttfb_summary(during),
        "profile_storm": summarize_profile(profile_path) if spy is not None else None,
    }
    log(
        f"storm {index} (down {downtime:g}s): relay listening {t_listen - t_kill:.2f}s after "
        f"the kill, all {expected} back {fmt(result['all_back_seconds'], 1)}s after that; "
        f"engineer TTFB p99 {fmt(result['engineer_storm']['ms'].get('p99'), 1)} ms"
    )
    return result


def histogram_buckets(text: str, name: str) -> dict[str, float]:
    """Cumulative bucket counts ``{le: count}`` of a Prometheus histogram."""
    return {
        sample.labels["le"]: sample.value
        for sample in matching(text, f"{name}_bucket")
        if "le" in sample.labels
    }


def slower_than(buckets: dict[str, float], seconds: float) -> tuple[int, int] | None:
    """(observations above ``seconds``, all observations) of cumulative histogram buckets."""
    total = buckets.get("+Inf")
    for le, count in buckets.items():
        if le != "+Inf" and float(le) == seconds and total is not None:
            return int(total - count), int(total)
    return None


def count_at(curve: list[tuple[float, int]], second: float) -> int:
    """Gateways connected ``second`` seconds after the relay listened (last poll before)."""
    count = 0
    for at, value in curve:
        if at > second:
            break
        count = max(count, value)
    return count


# -- report --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1])
    except OSError:
        pass
    import importlib.metadata as md

    versions = {p: md.version(p) for p in ("twisted", "pyOpenSSL", "cryptography", "h2")}
    return {
        "code": code_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / KIB / KIB, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "load_average_at_start": os.getloadavg(),
    }


def code_version() -> str:
    """HEAD of the repository, and the product files changed in the work tree (measured too)."""
    repo = Path(__file__).resolve().parents[2]

    def git(*argv: str) -> str:
        try:
            done = subprocess.run(
                ["git", *argv], cwd=repo, capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.rstrip()

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = [line[3:] for line in git("status", "--porcelain", "gateway").splitlines()]
    return head + (f" + uncommitted {', '.join(dirty)}" if dirty else "")


def render(result: dict[str, Any]) -> str:
    relay_hb = result["options"].get("relay_heartbeat") or 10
    out = [
        f"### Idle gateways on one relay (relay PINGs every {relay_hb:g} s, gateways every 10 s)",
        "",
    ]
    rows = []
    for s in result["sizes"]:
        cpu = s["relay_cpu_s_per_min"]
        rows.append(
            [
                f"{s['gateways']:,}",
                fmt(s["idle_relay_rss_kib"] / KIB, 1, "MiB"),
                fmt(s["relay_rss_kib"] / KIB, 1, "MiB"),
                fmt(s["kib_per_gateway"], 1, "KiB"),
                f"{fmt(s['relay_cpu_s_per_min_median'], 2)} "
                f"({fmt(min(cpu), 2)}-{fmt(max(cpu), 2)})",
                fmt(s["heartbeat_cpu_ms_per_gateway_min"], 2, "ms"),
                fmt(100 * s["relay_core_share"], 1, "%"),
                fmt(s["ramp_seconds"], 1, "s"),
                fmt(median(s["swarm_cpu_s_per_min"]), 1),
            ]
        )
    out.append(
        markdown_table(
            [
                "gateways",
                "relay RSS idle",
                "relay RSS connected",
                "per gateway",
                "relay CPU-s/min, median (range)",
                "relay CPU per gateway-minute",
                "of one core",
                "all connected in",
                "swarm CPU-s/min",
            ],
            rows,
        )
    )
    storms = result["storms"]
    if storms:
        out += [
            "",
            "### Reconnect storm: relay killed (SIGKILL) with all connected, started again",
            "",
            "Times count from the moment the new relay listens; `down` is how long it stayed "
            "dead first. Engineer: `GET /headers` through `gateway connect`, relay and the probe "
            "gateway every 50 ms; `engineer back`: when the first request sent after the restart "
            "was answered (client and probe gateway wait out their own backoff first); TTFB: "
            "requests sent from then until all gateways were back. `load`: the machine's 1-minute "
            "load average when the relay was killed (2 cores, shared with other work).",
            "",
        ]
        rows = []
        for s in storms:
            r = s["reconnect_seconds"]
            e = s["engineer_storm"]["ms"]
            b = s["engineer_before"]["ms"]
            curve = s["curve"]
            rows.append(
                [
                    str(s["index"]),
                    f"{s['gateways']:,}",
                    fmt(s["downtime_seconds"], 0, "s"),
                    fmt(s["relay_startup_seconds"], 2, "s"),
                    fmt(s["all_back_seconds"], 1, "s"),
                    " / ".join(fmt(r.get(q), 1) for q in ("p10", "p50", "p90", "p99", "max")),
                    " / ".join(f"{count_at(curve, t):,}" for t in (1, 2, 5, 10)),
                    f"{s['dial_attempts']:,} / {s['dial_failures']:,}",
                    fmt(s["relay_cpu_seconds_until_all_back"], 1, "s"),
                    fmt(s["engineer_back_after_listening_seconds"], 1, "s"),
                    " / ".join(fmt(e.get(q), 1) for q in ("p50", "p99", "max"))
                    + f" (n={int(e.get('n', 0))})",
                    slow_opens(s["relay_stream_open_seconds"]),
                    " / ".join(fmt(b.get(q), 1) for q in ("p50", "p99")),
                    fmt(s["load_average_at_kill"], 1),
                ]
            )
        out.append(
            markdown_table(
                [
                    "storm",
                    "gateways",
                    "down",
                    "relay startup",
                    "all back",
                    "each back p10/p50/p90/p99/max (s)",
                    "back by 1/2/5/10 s",
                    "dials / failed",
                    "relay CPU-s until all back",
                    "engineer back",
                    "engineer TTFB p50/p99/max (ms)",
                    "relay stream opens > 0.25 s / > 1 s",
                    "TTFB before kill p50/p99 (ms)",
                    "load",
                ],
                rows,
            )
        )
    out += ["", "### Targets (issue 8)", ""]
    out.append(
        markdown_table(
            ["target", "measured", "verdict"],
            [[t["target"], t["measured"], t["verdict"]] for t in result["targets"]],
        )
    )
    profiles = [
        (f"idle, {s['gateways']:,} gateways", s.get("profile_idle")) for s in result["sizes"]
    ]
    profiles += [(f"storm {s['index']}", s.get("profile_storm")) for s in storms]
    for title, profile in profiles:
        if profile:
            out += ["", f"Relay profile ({title}, py-spy, {profile['samples']} samples), self %: "]
            out.append(", ".join(f"{name} {pct}" for name, pct in profile["self_pct"][:8]))
    for error in result["errors"]:
        out += ["", f"**Failed:** {error}"]
    m = result["machine"]
    out += [
        "",
        f"Code: {m['code']}. Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + f"; load average {m['load_average_at_start'][0]:.2f} at start (shared machine). "
        + f"Mode: {'quick' if result['options']['quick'] else 'full'}, {result['date']}, "
        + "".join(f"relay patch {p}, " for p in result["options"]["relay_patches"])
        + f"gateway reconnect cap {result['options']['reconnect_cap']:g} s, "
        + f"{result['seconds']:.0f} s.",
    ]
    return "\n".join(out) + "\n"


def slow_opens(buckets: dict[str, float]) -> str:
    quarter, second = slower_than(buckets, 0.25), slower_than(buckets, 1.0)
    if quarter is None or second is None:
        return "n/a"
    return f"{quarter[0]} / {second[0]} of {quarter[1]}"


def targets(sizes: list[dict[str, Any]], storms: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for s in sizes:
        out.append(
            {
                "target": f"<= {TARGET_KIB_PER_GATEWAY:g} KiB relay memory per idle gateway "
                f"({s['gateways']:,} gateways)",
                "measured": fmt(s["kib_per_gateway"], 1, "KiB"),
                "verdict": verdict(s["kib_per_gateway"], TARGET_KIB_PER_GATEWAY),
            }
        )
    for n in sorted({s["gateways"] for s in storms}):
        at_n = [s for s in storms if s["gateways"] == n]
        beyond = "" if n - 1 <= 1000 else " (beyond the issue's 1000)"
        backs = [s["all_back_seconds"] for s in at_n if not s["downtime_seconds"]]
        if backs:
            worst = None if any(b is None for b in backs) else max(backs)
            out.append(
                {
                    "target": f"all {n:,} back within {TARGET_STORM_SECONDS:g} s of a restart"
                    + beyond,
                    "measured": f"worst of {len(backs)}: {fmt(worst, 1, 's')} (median "
                    f"{fmt(median(b for b in backs if b is not None), 1, 's')})",
                    "verdict": verdict(worst, TARGET_STORM_SECONDS),
                }
            )
        pooled = [ms for s in at_n for ms in s["engineer_storm_ms"]]
        p99 = percentile(pooled, 99)
        out.append(
            {
                "target": f"relay responsive to engineers during the storms of {n:,} (TTFB p99 "
                f"<= {TARGET_ENGINEER_P99 * 1000:g} ms, our threshold)" + beyond,
                "measured": f"p99 {fmt(p99, 1, 'ms')}, max {fmt(max(pooled, default=None), 1)} "
                f"ms of {len(pooled)} requests in {len(at_n)} storms",
                "verdict": verdict(None if p99 is None else p99 / 1000, TARGET_ENGINEER_P99),
            }
        )
    return out


def run_size(opts: Options, n: int, relay_heartbeat: float | None, result: dict[str, Any]) -> None:
    """A fresh relay and swarm of ``n``: idle measurements, then the storms at the storm size."""
    stack = Stack(
        opts.workdir / f"n{n}",
        heartbeat_interval=relay_heartbeat,
        relay_patches=list(opts.relay_patches),
    )
    stack.prepare()
    swarm = Swarm(
        relay=stack.relay_gateway_address,
        ca=stack.ca,
        ca_key=stack.ca_key,
        total=n,
        workdir=stack.workdir / "swarm",
        workers=opts.workers,
        ramp=opts.ramp,
        reconnect_cap=opts.reconnect_cap,
    )
    try:
        result["sizes"].append(measure_size(stack, swarm, opts, n))
        if n not in opts.storm_sizes:
            return
        downtimes = [0.0] * opts.storms
        if opts.downtime and n == min(opts.storm_sizes):
            downtimes.append(opts.downtime)
        if not downtimes:
            return
        stack.start_probe()
        wait_for("the probe gateway", lambda: stack.connected() == n + 1, 60)
        probe = EngineerProbe(stack.ports.forward)
        probe.start()
        try:
            for i, down in enumerate(downtimes, 1):
                try:
                    result["storms"].append(storm(stack, swarm, probe, opts, n, i, down))
                except (RuntimeError, TimeoutError, OSError) as e:
                    # Keep what was measured; the rest of this size is not trustworthy.
                    result["errors"].append(f"storm {i} with {n:,} gateways: {e}")
                    log(f"storm {i} failed: {e}")
                    break
        finally:
            probe.stop()
    finally:
        # Throw-away processes with nothing left to measure: no graceful drain.
        swarm.stop(graceful=False)
        stack.stop_all(graceful=False)


# -- main ----------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.scale.run", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="200 gateways, short windows (< 1 min)")
    p.add_argument("--sizes", help="comma-separated gateway counts (default 1000,5000)")
    p.add_argument(
        "--storm-sizes",
        help="comma-separated sizes with storms (default 1000,5000; the one with a downtime "
        "storm and the issue's targets is the smallest)",
    )
    p.add_argument("--storms", type=int, help="immediate-restart storms (default 3; 0: none)")
    p.add_argument(
        "--downtime",
        type=float,
        help="one more storm with the relay down this long (default 10 s; 0: none)",
    )
    p.add_argument(
        "--relay-heartbeat",
        type=float,
        help="relay heartbeat_interval (default: the product default, 10 s); gateways keep 10",
    )
    p.add_argument("--windows", type=int, help="idle CPU windows per size (default 3)")
    p.add_argument("--window", type=float, help="seconds per idle CPU window (default 20)")
    p.add_argument("--settle", type=float, help="seconds after connecting before measuring")
    p.add_argument(
        "--relay-patch",
        action="append",
        default=[],
        metavar="PATCH",
        help="run the relay with a proposed fix (bench/scale/patched_relay.py): "
        "lean-settings, backlog=N; repeatable",
    )
    p.add_argument(
        "--reconnect-cap",
        type=float,
        default=60.0,
        help="simulated gateways' reconnect_max_delay (default 60 s, the product default)",
    )
    p.add_argument("--ramp", type=float, default=500.0, help="gateways started per second")
    p.add_argument("--workers", type=int, default=4, help="swarm worker processes")
    p.add_argument("--profile", action="store_true", help="py-spy the relay (idle and storm)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where JSON and markdown go")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quick = args.quick
    sizes = (
        [int(x) for x in args.sizes.split(",")]
        if args.sizes
        else ([200] if quick else [1000, 5000])
    )
    storm_sizes = (
        [int(x) for x in args.storm_sizes.split(",")]
        if args.storm_sizes
        else ([200] if quick else [1000, 5000])
    )
    storms = args.storms if args.storms is not None else (1 if quick else 3)
    downtime = args.downtime if args.downtime is not None else (0.0 if quick else 10.0)
    if storms or downtime:
        sizes = sorted({*sizes, *storm_sizes})
    limit = raise_fd_limit(max(sizes) * 2 + 1024)
    if limit < max(sizes) + 256:
        print(f"RLIMIT_NOFILE is {limit}: too low for {max(sizes)} gateways", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="gw-scale-"))
    opts = Options(
        sizes=sizes,
        storm_sizes=storm_sizes,
        storms=storms,
        downtime=downtime,
        baseline=3.0 if quick else 8.0,
        relay_patches=args.relay_patch,
        reconnect_cap=args.reconnect_cap,
        windows=args.windows or (1 if quick else 3),
        window=args.window or (10.0 if quick else 20.0),
        settle=args.settle if args.settle is not None else (2.0 if quick else 12.0),
        ramp=args.ramp,
        workers=args.workers,
        profile=args.profile,
        workdir=workdir,
        quick=quick,
    )
    started = time.monotonic()
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "sizes": [],
        "storms": [],
        "errors": [],
    }
    log(f"work directory {workdir}; sizes {sizes}, storms at {storm_sizes}")
    try:
        for n in sizes:
            try:
                run_size(opts, n, args.relay_heartbeat, result)
            except (RuntimeError, TimeoutError, OSError) as e:
                result["errors"].append(f"{n:,} gateways: {e}")
                log(f"{n} gateways failed: {e}")
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if args.keep or result["errors"]:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["sizes"].sort(key=lambda s: s["gateways"])
    result["targets"] = targets(result["sizes"], result["storms"])
    result["seconds"] = time.monotonic() - started
    text = render(result)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"scale-{'quick-' if quick else ''}{stamp}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / f"{name}.md").write_text(text)
    print(text)
    log(f"took {result['seconds']:.0f}s; wrote {args.out / name}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
