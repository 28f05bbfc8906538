"""`bench/wan.py`: the four paths over an emulated slow uplink (bench/netns.py), downloads and
uploads, fresh processes for every transfer; prints the markdown tables and writes the JSON.
See bench/README.md, "WAN benchmark"."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import machine, netns
from bench.cli import _terminate, build_tools, log
from bench.measure import Loadgen
from bench.netns import LINKS, Link, NetnsError, Sampler, Topology
from bench.paths import TunnelPath
from bench.procs import BenchError, Proc, Supervisor, become_subreaper, read_line
from bench.report import Column, aggregate
from bench.wan_paths import WanOurs, WanPath, make_wan_paths
from bench.wan_report import (
    DIRECTIONS,
    metric_key,
    one_line,
    queue_metric_rows,
    queue_sum,
    render_link_table,
    run_metrics,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PATH_NAMES = ("direct", "stunnel", "openssh", "ours")
SAMPLE_INTERVAL = 0.25
ECHO_RATE = 10.0
MESSAGE = 1024
TTFB_EVERY = 1.0


@dataclass(frozen=True)
class WanPlan:
    runs: int
    bulk_seconds: dict[str, float]  # per link: how long the bulk should take at the link's rate
    idle_rtt_count: int

    def bulk_bytes(self, link: Link) -> int:
        return int(link.bytes_per_s * 0.95 * self.bulk_seconds[link.name])

    def warmup(self, link: Link) -> float:
        """Seconds of bulk before the probes start: past slow start, the queue full."""
        return max(2.0, 0.2 * self.bulk_seconds[link.name])


FULL = WanPlan(runs=3, bulk_seconds={"10mbit": 18, "50mbit": 15, "2mbit": 30}, idle_rtt_count=100)
QUICK = WanPlan(runs=1, bulk_seconds={"10mbit": 8, "50mbit": 6, "2mbit": 12}, idle_rtt_count=30)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/wan.py",
        description="Our tunnel next to direct TCP, stunnel and ssh -R over an emulated slow "
        "uplink (three network namespaces; run as root).",
    )
    p.add_argument("--quick", action="store_true", help="one short run per path and link")
    p.add_argument("--runs", type=int, help="fresh runs per path, link and direction (default 3)")
    p.add_argument(
        "--links",
        default=",".join(LINKS),
        help=f"comma-separated subset of {','.join(LINKS)} (default all)",
    )
    p.add_argument(
        "--paths",
        default=",".join(PATH_NAMES),
        help=f"comma-separated subset of {','.join(PATH_NAMES)} (default all)",
    )
    p.add_argument(
        "--directions", default="down,up", help="down (plant to vendor), up, or both (default)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=BENCH / "results" / "wan.json",
        help="JSON output; the markdown goes next to it as .md (default bench/results/wan.json)",
    )
    p.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for our processes (repeatable)",
    )
    p.add_argument(
        "--congestion",
        default="cubic",
        help="the namespaces' default congestion control (default cubic, Debian's)",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep configs, keys and logs")
    args = p.parse_args(argv)
    for option, allowed in (
        ("links", tuple(LINKS)),
        ("paths", PATH_NAMES),
        ("directions", DIRECTIONS),
    ):
        names = [n.strip() for n in getattr(args, option).split(",") if n.strip()]
        unknown = sorted(set(names) - set(allowed))
        if unknown or not names:
            p.error(f"--{option}: unknown {', '.join(unknown) or '(empty)'}")
        setattr(args, option, [n for n in allowed if n in names])
    for item in args.ours_env:
        if "=" not in item:
            p.error(f"--ours-env: expected KEY=VALUE, got {item!r}")
    if args.runs is not None and args.runs < 1:
        p.error("--runs: must be at least 1")
    return args


@dataclass
class Transfer:
    """One path, link, direction and run: flat metrics, raw output, failures."""

    metrics: dict[str, float] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def _ss_argv(port: int) -> list[str]:
    return ["ss", "-tniH", "state", "established", f"( sport = :{port} or dport = :{port} )"]


def _backlog_sample() -> tuple[int, int]:
    """(to_vendor, to_plant) bytes queued in the router; run inside the router namespace."""
    values = []
    for dev in (netns.TO_VENDOR_DEV, netns.TO_PLANT_DEV):
        text = netns.command(["tc", "-s", "qdisc", "show", "dev", dev])()
        values.append(netns.parse_backlog(text) or 0)
    return values[0], values[1]


def _queue_metrics(url: str) -> Callable[[], dict[str, float]]:
    """Every metric on a /metrics page with "queue" in its name, summed over its labels."""
    from gateway.demo.stack import http_get

    def sample() -> dict[str, float]:
        text = http_get(url, timeout=2)[1].decode("utf-8", "replace")
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or "queue" not in line.split("{")[0].split(" ")[0]:
                continue
            name = line.split("{")[0].split(" ")[0]
            try:
                value = float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
            found[name] = found.get(name, 0.0) + value
        return found

    return sample


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, sup: Supervisor) -> None:
        self.args, self.workdir, self.sup = args, workdir, sup
        base = QUICK if args.quick else FULL
        self.plan = dataclasses.replace(base, runs=args.runs or base.runs)

    def transfer(
        self,
        topo: Topology,
        path: TunnelPath,
        link: Link,
        direction: str,
        loadgen: Loadgen,
        target_bin: Path,
    ) -> Transfer:
        assert isinstance(path, WanPath)
        out = Transfer()
        sup = self.sup
        try:
            topo.wait_drained()
        except NetnsError as e:
            out.errors["setup"] = str(e)
            return out
        target = sup.start(
            "target", topo.exec_argv(topo.plant, [str(target_bin), "0.0.0.0"]), stdout_pipe=True
        )
        stage = "setup"
        try:
            assert target.popen.stdout is not None
            target_port = int(read_line(target.popen.stdout, timeout=10, what="target"))
            t = time.monotonic()
            host, port = path.wan_start(sup, target_port)
            out.raw["setup_seconds"] = round(time.monotonic() - t, 2)
            sup.remember(path.roots())
            stage = "measure"
            self._measure(topo, path, link, direction, loadgen, host, port, out)
        except (BenchError, NetnsError) as e:
            out.errors[stage] = str(e)
        finally:
            path.stop(sup)
            sup.stop(target)
        return out

    def _loadgen(self, topo: Topology, loadgen: Loadgen, args: list[str], timeout: float) -> Any:
        argv = topo.exec_argv(topo.vendor, [str(loadgen.binary), *args])
        try:
            done = subprocess.run(
                argv, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"loadgen {args[0]}: no result within {timeout:.0f} s") from e
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
            raise BenchError(err.splitlines()[-1])
        return json.loads(done.stdout.decode().strip().splitlines()[-1])

    def _measure(
        self,
        topo: Topology,
        path: WanPath,
        link: Link,
        direction: str,
        loadgen: Loadgen,
        host: str,
        port: int,
        out: Transfer,
    ) -> None:
        plan = self.plan
        idle = self._loadgen(
            topo, loadgen, ["rtt", host, str(port), str(plan.idle_rtt_count), str(MESSAGE)], 120
        )
        out.raw["idle_rtt"] = idle
        path_procs: list[Proc] = path.procs
        for proc in path_procs:
            if not proc.alive():
                raise BenchError(proc.why_dead())
        backlog = Sampler(topo.router, _backlog_sample, SAMPLE_INTERVAL)
        ss = {
            side: Sampler(ns, netns.command(_ss_argv(path.wan_port)), SAMPLE_INTERVAL)
            for side, ns in (("plant", topo.plant), ("vendor", topo.vendor))
        }
        pages: dict[str, Sampler[dict[str, float]]] = {}
        if isinstance(path, WanOurs):
            pages = {
                name: Sampler(ns, _queue_metrics(url), SAMPLE_INTERVAL)
                for name, (ns, url) in path.metrics_pages().items()
            }
        samplers: list[Sampler[Any]] = [backlog, *ss.values(), *pages.values()]
        nbytes = plan.bulk_bytes(link)
        args = [
            *("wan", host, str(port), direction, str(nbytes)),
            *(f"{plan.warmup(link):.2f}", str(ECHO_RATE), str(MESSAGE), str(TTFB_EVERY)),
        ]
        timeout = 60 + 4 * nbytes / link.bytes_per_s
        for s in samplers:
            s.__enter__()
        try:
            result = self._loadgen(topo, loadgen, args, timeout)
        finally:
            for s in samplers:
                s.__exit__()
        out.raw["bulk"] = result
        for proc in path_procs:
            if not proc.alive():
                raise BenchError(f"during the bulk: {proc.why_dead()}")
        # The router queue in the transfer's direction, the sending side's WAN sockets.
        index = 0 if direction == "down" else 1
        queue = [(t, float(v[index])) for t, v in backlog.samples]
        sender_side = "plant" if direction == "down" else "vendor"
        sockets = {
            side: [(t, queue_sum(netns.parse_ss(text))) for t, text in s.samples]
            for side, s in ss.items()
        }
        metrics = run_metrics(result, idle, link, queue, sockets[sender_side])
        start, end = result["t_probe"], result["t_end"]
        for name, s in pages.items():
            steady = [v for t, v in s.samples if start <= t <= end]
            for metric in sorted({k for v in steady for k in v}):
                metrics[f"m_{name}_{metric}"] = max(v.get(metric, 0.0) for v in steady)
        out.raw["samples"] = {
            "router_backlog_bytes": [(round(t, 3), v) for t, v in backlog.samples],
            **{
                f"{side}_wan_sockets_notsent_sendq": [(round(t, 3), v) for t, v in values]
                for side, values in sockets.items()
            },
        }
        errors = {s.ns: s.error for s in samplers if s.error}
        if errors:
            out.raw["sampler_errors"] = errors
        out.metrics = {metric_key(link.name, direction, k): v for k, v in metrics.items()}

    def run(self) -> int:
        args, plan = self.args, self.plan
        started = datetime.datetime.now(datetime.UTC)
        t0 = time.monotonic()
        loadgen_bin, target_bin = build_tools(BENCH / "build")
        loadgen = Loadgen(loadgen_bin)
        links = [LINKS[n] for n in args.links]
        estimate = sum(
            plan.runs * len(args.paths) * len(args.directions) * (plan.bulk_seconds[lk.name] + 3)
            for lk in links
        )
        log(f"wan: about {estimate / 60:.0f} min ({plan.runs} run(s), {len(links)} link(s))")
        with Topology(args.congestion) as topo:
            env = dict(item.split("=", 1) for item in args.ours_env)
            paths = make_wan_paths(args.paths, topo, REPO, env)
            status: dict[str, str] = {}
            for path in paths:
                try:
                    path.prepare(self.workdir / path.name)
                    status[path.name] = "ok"
                except BenchError as e:
                    status[path.name] = f"unavailable: {e}"
                    log(f"{path.name}: {status[path.name]}")
            ready = [p for p in paths if status[p.name] == "ok"]
            runs: list[dict[str, Transfer]] = []
            for i in range(plan.runs):
                results: dict[str, Transfer] = {p.name: Transfer() for p in ready}
                for link in links:
                    topo.shape(link)
                    order = ready[i % len(ready) :] + ready[: i % len(ready)] if ready else []
                    for path in order:
                        for direction in args.directions:
                            self.sup.prefix = f"run{i + 1}-{link.name}-{direction}-{path.name}-"
                            got = self.transfer(topo, path, link, direction, loadgen, target_bin)
                            r = results[path.name]
                            r.metrics.update(got.metrics)
                            r.raw[f"{link.name}:{direction}"] = got.raw
                            for step, why in got.errors.items():
                                r.errors[f"{link.name}:{direction}:{step}"] = why
                            what = one_line(got.metrics) or "; ".join(
                                f"{k} FAILED: {v}" for k, v in got.errors.items()
                            )
                            where = f"{link.name} {direction} {path.name}"
                            log(f"[run {i + 1}/{plan.runs}] {where}: {what}")
                runs.append(results)
            cc = topo.exec_out(topo.plant, ["sysctl", "-n", "net.ipv4.tcp_congestion_control"])
        summary = aggregate([{name: r.metrics for name, r in run.items()} for run in runs])
        columns = [Column(p.name, p.title, status[p.name]) for p in paths]
        info = machine.describe(REPO)
        errors = [
            f"run {i + 1} {name} {step}: {why}"
            for i, run in enumerate(runs)
            for name, r in run.items()
            for step, why in r.errors.items()
        ]
        lines = [
            f"WAN benchmark of {started:%Y-%m-%d %H:%M} UTC, commit {info['commit']}: "
            f"{plan.runs} fresh run(s) per path, link and direction "
            f"(median, min-max over runs); plant, router and vendor network namespaces, "
            f"`tbf ... burst {netns.TBF_BURST}` both ways, no added delay, "
            f"{cc.strip()} by default in every namespace; probes at {ECHO_RATE:g}/s "
            f"(1 KiB echo, open loop) and a new connection every {TTFB_EVERY:g} s, "
            "from a fifth into the bulk (at least 2 s) to its end.",
            "",
            f"Machine: {info['cpu']}, {info['cores']} cores, kernel {info['kernel']}, "
            f"{info['os']}. Python {info['python']}, Twisted {info['twisted']}, h2 {info['h2']}, "
            f"{info['openssl']}.",
            "",
        ]
        for p in paths:
            if status[p.name] == "ok" and p.details:
                lines.append(f"- {p.name}: " + "; ".join(f"{k} {v}" for k, v in p.details.items()))
        extra = queue_metric_rows(summary)
        for link in links:
            lines += ["", render_link_table(summary, columns, link, args.directions, extra)]
        lines.append("")
        lines += [f"- {name}: {s}" for name, s in status.items() if s != "ok"]
        lines += [f"- error: {e}" for e in errors]
        markdown = "\n".join(lines).rstrip()
        print(markdown)
        document: dict[str, Any] = {
            "format": 1,
            "started": started.isoformat(timespec="seconds"),
            "duration_seconds": round(time.monotonic() - t0, 1),
            "command": ["bench/wan.py", *sys.argv[1:]],
            "plan": dataclasses.asdict(plan),
            "links": {lk.name: dataclasses.asdict(lk) for lk in links},
            "congestion_control": cc.strip(),
            "machine": info,
            "paths": {p.name: {"status": status[p.name], **p.details} for p in paths},
            "runs": [{n: dataclasses.asdict(r) for n, r in run.items()} for run in runs],
            "summary": {
                path: {key: dataclasses.asdict(s) for key, s in metrics.items()}
                for path, metrics in summary.items()
            },
            "errors": errors,
            "markdown": markdown,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown + "\n")
        log(f"wrote {args.out} and {args.out.with_suffix('.md')} in {time.monotonic() - t0:.0f} s")
        return 1 if errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    become_subreaper()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-wan-"))
    (workdir / "logs").mkdir()
    sup = Supervisor(workdir / "logs")
    failed = True
    try:
        code = Bench(args, workdir, sup).run()
        failed = code != 0
        return code
    except (BenchError, NetnsError) as e:
        log(f"wan: {e}")
        return 1
    except KeyboardInterrupt:
        log("wan: interrupted; stopping everything it started and removing its namespaces")
        return 130
    finally:
        sup.stop_all()  # the namespaces went with the Topology's `with` on the way out
        if args.keep_workdir or failed:
            log(f"work directory (configs, keys, logs) kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
