"""`python bench/run.py`: build the C tools, run every path in fresh processes for each run,
print the markdown report and write the JSON."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench import machine
from bench.measure import FULL, MEASURES, QUICK, Loadgen, PathRun, Plan, measure_path
from bench.paths import (
    Direct,
    OpenSSH,
    Ours,
    OursHttp,
    OursPortal,
    OursTcpHttp,
    Stunnel,
    TunnelPath,
)
from bench.procs import (
    BenchError,
    Proc,
    Supervisor,
    become_subreaper,
    raise_nofile_limit,
    read_line,
    run_quiet,
)
from bench.report import (
    FOLLOW_HTTP,
    FOLLOW_TCP,
    METRICS,
    PORTAL,
    PORTAL_PEER,
    PORTAL_TARGETS,
    Column,
    Summary,
    aggregate,
    evaluate_follow,
    evaluate_targets,
    fmt,
    render_breakdown,
    render_follow,
    render_table,
    render_targets,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PATH_NAMES = (
    "direct",
    "stunnel",
    "openssh",
    "ours",
    "ours-tcp-http",
    "ours-http",
    "ours-portal",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark our tunnel against a direct connection, stunnel and OpenSSH.",
    )
    p.add_argument("--quick", action="store_true", help="one short run (~2 min), for smoke tests")
    p.add_argument("--runs", type=int, help="fresh runs per path (default 3, --quick 1)")
    p.add_argument(
        "--out",
        type=Path,
        default=BENCH / "results" / "latest.json",
        help="JSON output; the markdown goes next to it as .md (default bench/results/latest.json)",
    )
    p.add_argument(
        "--paths",
        default=",".join(PATH_NAMES),
        help=f"comma-separated subset of {','.join(PATH_NAMES)} (default all)",
    )
    p.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for our processes (repeatable), e.g. for profiling",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep configs, keys and logs")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PATH_NAMES))
    if unknown or not names:
        p.error(f"--paths: unknown {', '.join(unknown) or '(empty)'}")
    args.paths = names
    for item in args.ours_env:
        if "=" not in item:
            p.error(f"--ours-env: expected KEY=VALUE, got {item!r}")
    if args.runs is not None and args.runs < 1:
        p.error("--runs: must be at least 1")
    return args


def build_tools(build_dir: Path) -> tuple[Path, Path]:
    """Compile loadgen.c and target.c when missing or older than their source."""
    build_dir.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise BenchError(f"no C compiler ({cc}); run bench/install-deps.sh")
    built = []
    for name, libs in (("loadgen", ["-lssl", "-lcrypto"]), ("target", [])):
        source, exe = BENCH / f"{name}.c", build_dir / name
        if not exe.exists() or exe.stat().st_mtime < source.stat().st_mtime:
            argv = [cc, "-O2", "-Wall", "-Wextra", "-pthread", "-o", str(exe), str(source), *libs]
            run_quiet(argv)
        built.append(exe)
    return built[0], built[1]


def start_target(sup: Supervisor, binary: Path) -> tuple[Proc, int]:
    proc = sup.start("target", [str(binary)], stdout_pipe=True)
    assert proc.popen.stdout is not None
    return proc, int(read_line(proc.popen.stdout, timeout=10, what="target"))


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop processes


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def one_line(run: PathRun) -> str:
    m = run.metrics
    parts = [f"{metric.short} {fmt(m[metric.key])}" for metric in METRICS if metric.key in m]
    parts += [f"{step} FAILED: {why}" for step, why in run.errors.items()]
    return ", ".join(parts)


def make_paths(names: Sequence[str], ours_env: dict[str, str]) -> list[TunnelPath]:
    every: dict[str, TunnelPath] = {
        "direct": Direct(),
        "stunnel": Stunnel(),
        "openssh": OpenSSH(),
        "ours": Ours(REPO, ours_env),
        "ours-tcp-http": OursTcpHttp(REPO, ours_env),
        "ours-http": OursHttp(REPO, ours_env),
        "ours-portal": OursPortal(REPO, ours_env),
    }
    return [every[n] for n in PATH_NAMES if n in names]


def run_benchmark(args: argparse.Namespace, workdir: Path, sup: Supervisor) -> int:
    base = QUICK if args.quick else FULL
    plan = dataclasses.replace(base, runs=args.runs or base.runs)
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    loadgen_bin, target_bin = build_tools(BENCH / "build")
    loadgen = Loadgen(loadgen_bin)
    nofile = raise_nofile_limit()
    if nofile < 4 * plan.idle_conns + 256:
        log(f"warning: open-files limit {nofile} is low for {plan.idle_conns} idle connections")

    paths = make_paths(args.paths, dict(item.split("=", 1) for item in args.ours_env))
    status: dict[str, str] = {}
    for path in paths:
        try:
            path.prepare(workdir / path.name)
            status[path.name] = "ok"
        except BenchError as e:
            status[path.name] = f"unavailable: {e}"
            log(f"{path.name}: {status[path.name]}")
    ready = [p for p in paths if status[p.name] == "ok"]

    runs: list[dict[str, PathRun]] = []
    for i in range(plan.runs):
        results: dict[str, PathRun] = {}
        order = ready[i % len(ready) :] + ready[: i % len(ready)] if ready else []
        for path in order:  # rotated each run, so slow drift does not favour one path
            sup.prefix = f"run{i + 1}-{path.name}-"
            target, target_port = start_target(sup, target_bin)
            try:
                t = time.monotonic()
                port = path.start(sup, target_port)
                log(f"[run {i + 1}/{plan.runs}] {path.name}: up in {time.monotonic() - t:.1f} s")
                results[path.name] = measure_path(path, port, loadgen, plan, sup)
            except BenchError as e:
                results[path.name] = PathRun(errors={"setup": str(e)})
            finally:
                path.stop(sup)
                sup.stop(target)
            log(f"[run {i + 1}/{plan.runs}] {path.name}: {one_line(results[path.name])}")
        runs.append(results)

    summary = aggregate([{name: r.metrics for name, r in run.items()} for run in runs])
    columns = [Column(p.name, p.title, status[p.name], p.measures) for p in paths]
    verdicts = evaluate_targets(summary) if status.get("ours") == "ok" else []
    portal = (
        evaluate_targets(summary, PORTAL_TARGETS, PORTAL)
        if status.get(PORTAL) == "ok" and status.get(PORTAL_PEER) == "ok"
        else []
    )
    follow = (
        evaluate_follow(summary)
        if status.get(FOLLOW_TCP) == "ok" and status.get(FOLLOW_HTTP) == "ok"
        else []
    )
    info = machine.describe(REPO)
    details = {p.name: p.details for p in paths if p.details and status[p.name] == "ok"}
    errors = [
        f"run {i + 1} {name} {step}: {why}"
        for i, run in enumerate(runs)
        for name, r in run.items()
        for step, why in r.errors.items()
    ]
    markdown = render_markdown(
        started,
        plan,
        info,
        details,
        status,
        summary,
        columns,
        render_targets(verdicts) if verdicts else "",
        errors,
        render_follow(follow) if follow else "",
        render_targets(portal, "Target (issue 20, browser path)", PORTAL) if portal else "",
    )
    print(markdown)

    document: dict[str, Any] = {
        "format": 1,
        "started": started.isoformat(timespec="seconds"),
        "duration_seconds": round(time.monotonic() - t0, 1),
        "command": ["bench/run.py", *sys.argv[1:]],
        "plan": dataclasses.asdict(plan),
        "machine": info,
        "paths": {p.name: {"status": status[p.name], **p.details} for p in paths},
        "runs": [{name: dataclasses.asdict(r) for name, r in run.items()} for run in runs],
        "summary": {
            path: {key: dataclasses.asdict(s) for key, s in metrics.items()}
            for path, metrics in summary.items()
        },
        "targets": [dataclasses.asdict(v) for v in verdicts],
        "portal_targets": [dataclasses.asdict(v) for v in portal],
        "follow": [dataclasses.asdict(f) for f in follow],
        "errors": errors,
        "markdown": markdown,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown + "\n")
    log(f"wrote {args.out} and {args.out.with_suffix('.md')} in {time.monotonic() - t0:.0f} s")
    return 1 if errors else 0


def render_markdown(
    started: datetime.datetime,
    plan: Plan,
    info: dict[str, str],
    details: dict[str, dict[str, str]],
    status: dict[str, str],
    summary: dict[str, dict[str, Summary]],
    columns: list[Column],
    targets: str,
    errors: list[str],
    follow: str = "",
    portal: str = "",
) -> str:
    mib = plan.bulk_bytes / (1 << 20)
    taken = {m for c in columns for m in (c.measures or MEASURES)}
    what = {
        "bulk": f"bulk {mib:.0f} MiB",
        "rtt": f"{plan.rtt_count} round trips",
        "conc": f"{plan.conc_conns} connections for {plan.conc_seconds} s",
        "ttfb": f"{plan.ttfb_count} new connections",
        "idle": f"{plan.idle_conns} idle connections",
        "fair": f"fairness for {plan.fair_seconds} s",
    }
    lines = [
        f"Benchmark of {started:%Y-%m-%d %H:%M} UTC, commit {info['commit']}: "
        f"{plan.runs} fresh run(s) per path; "
        + "; ".join(text for m, text in what.items() if m in taken)
        + ".",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, "
        f"{info['os']}, kernel {info['kernel']}. Python {info['python']}, "
        f"Twisted {info['twisted']}, pyOpenSSL {info['pyOpenSSL']}, h2 {info['h2']}, "
        f"{info['openssl']}.",
        "",
    ]
    for name, d in details.items():
        lines.append(f"- {name}: " + "; ".join(f"{k} {v}" for k, v in d.items()))
    lines += ["", render_table(summary, columns), ""]
    breakdown = render_breakdown(summary, columns)
    if breakdown:
        lines += [*breakdown, ""]
    if targets:
        lines += [targets, ""]
    if follow:
        lines += [follow, ""]
    if portal:
        lines += [portal, ""]
    for name, s in status.items():
        if s != "ok":
            lines.append(f"- {name}: {s}")
    lines += [f"- error: {e}" for e in errors]
    return "\n".join(lines).rstrip()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    become_subreaper()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    (workdir / "logs").mkdir()
    sup = Supervisor(workdir / "logs")
    failed = True
    try:
        code = run_benchmark(args, workdir, sup)
        failed = code != 0
        return code
    except BenchError as e:
        log(f"bench: {e}")
        return 1
    except KeyboardInterrupt:
        log("bench: interrupted; stopping everything it started")
        return 130
    finally:
        sup.stop_all()
        if args.keep_workdir or failed:
            log(f"work directory (configs, keys, logs) kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
