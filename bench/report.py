"""Aggregation over runs (median and min-max spread), the markdown table, and the targets.

Pure functions over plain data, so they are unit-tested without running anything.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PEERS = ("stunnel", "openssh")
PORTAL, PORTAL_PEER = "ours-portal", "stunnel"
"""The browser's path (issue 20), compared with stunnel's two hops: two processes each."""


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    short: str  # for progress lines and the per-process breakdown
    higher_is_better: bool
    tunnel_only: bool = False  # no tunnel processes on the direct path: nothing to measure

    @property
    def measure(self) -> str:
        """The measurement (measure.py's step) that yields it: the key's first word."""
        return self.key.split("_", 1)[0]


METRICS = (
    Metric("bulk_mb_s", "One-stream bulk, MB/s (higher is better)", "bulk MB/s", True),
    Metric("bulk_cpu_s_per_gib", "CPU-seconds per GiB, tunnel processes", "CPU-s/GiB", False, True),
    Metric("rtt_p50_ms", "1 KiB round trip p50, ms", "rtt p50 ms", False),
    Metric("rtt_p99_ms", "1 KiB round trip p99, ms", "rtt p99 ms", False),
    Metric("getrtt_p50_ms", "1 KiB GET round trip p50, ms (HTTP paths)", "GET p50 ms", False),
    Metric("getrtt_p99_ms", "1 KiB GET round trip p99, ms (HTTP paths)", "GET p99 ms", False),
    Metric("conc_per_s", "Round trips/s, 50 connections (higher is better)", "rt/s x50", True),
    Metric("ttfb_p50_ms", "New connection, time to first byte p50, ms", "ttfb p50 ms", False),
    Metric("ttfb_p99_ms", "New connection, time to first byte p99, ms", "ttfb p99 ms", False),
    Metric(
        "idle_kib",
        "Memory per idle connection (1000 open), KiB",
        "KiB per idle connection",
        False,
        True,
    ),
    Metric("fair_p99_ms", "1 KiB round trip p99 during a bulk download, ms", "fair p99 ms", False),
)


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    samples: tuple[float, ...]


def summarize(values: Sequence[float]) -> Summary | None:
    if not values:
        return None
    return Summary(statistics.median(values), min(values), max(values), tuple(values))


def aggregate(
    runs: Sequence[Mapping[str, Mapping[str, float]]],
) -> dict[str, dict[str, Summary]]:
    """runs[i][path][metric] -> {path: {metric: Summary}} over the runs that measured it."""
    collected: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for path, metrics in run.items():
            for key, value in metrics.items():
                collected.setdefault(path, {}).setdefault(key, []).append(value)
    result: dict[str, dict[str, Summary]] = {}
    for path, by_key in collected.items():
        for key, values in by_key.items():
            s = summarize(values)
            if s is not None:
                result.setdefault(path, {})[key] = s
    return result


def fmt(value: float) -> str:
    """Three significant digits, never scientific notation: 4396, 271, 12.3, 0.812, 0.0590."""
    if value == 0 or not math.isfinite(value):
        return f"{value:.0f}" if math.isfinite(value) else str(value)
    digits = max(0, min(4, 2 - math.floor(math.log10(abs(value)))))
    return f"{value:.{digits}f}"


def cell(summary: Summary | None) -> str:
    if summary is None:
        return "error"
    if len(summary.samples) == 1:
        return fmt(summary.median)
    return f"{fmt(summary.median)} ({fmt(summary.low)}-{fmt(summary.high)})"


def ratio(ours: Summary | None, peer: Summary | None) -> str:
    if ours is None or peer is None or peer.median == 0:
        return "-"
    return f"{ours.median / peer.median:.2f}x"


@dataclass(frozen=True)
class Column:
    name: str  # path key
    title: str
    status: str  # "ok", or why there is no data ("unavailable: ...")
    measures: tuple[str, ...] | None = None  # the measurements the path takes (None: all)


def measured(metric: Metric, column: Column) -> bool:
    """Whether the path in the column takes this metric at all (else "-", not "error")."""
    if metric.tunnel_only and column.name == "direct":
        return False  # no tunnel processes on the direct path: nothing to measure
    return column.measures is None or metric.measure in column.measures


def render_table(summary: Mapping[str, Mapping[str, Summary]], columns: Sequence[Column]) -> str:
    """Rows: metrics; columns: the paths, then ours relative to each peer."""
    titles = [c.title for c in columns]
    by_name = {c.name: c for c in columns}
    has_ours = "ours" in by_name
    ratios = [("ours", p) for p in PEERS if p in by_name] if has_ours else []
    if PORTAL in by_name and PORTAL_PEER in by_name:
        ratios.append((PORTAL, PORTAL_PEER))
    head = ["Metric (median of runs, min-max)", *titles]
    head += [f"{ours}/{by_name[p].title}" for ours, p in ratios]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in METRICS:
        if not any(c.measures is None or m.measure in c.measures for c in columns):
            continue  # no path takes it in this run (a --paths subset of HTTP paths)
        row = [m.label]
        for c in columns:
            if c.status != "ok":
                row.append("n/a")
            elif not measured(m, c):
                row.append("-")
            else:
                row.append(cell(summary.get(c.name, {}).get(m.key)))
        for ours, p in ratios:
            if not (measured(m, by_name[ours]) and measured(m, by_name[p])):
                row.append("-")
                continue
            row.append(ratio(summary.get(ours, {}).get(m.key), summary.get(p, {}).get(m.key)))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render_breakdown(
    summary: Mapping[str, Mapping[str, Summary]], columns: Sequence[Column]
) -> list[str]:
    """Per-process shares of the tunnel metrics (keys "metric:process"), one line per path."""
    lines = []
    for c in columns:
        parts = []
        for m in METRICS:
            shares = [
                f"{key.split(':', 1)[1]} {fmt(s.median)}"
                for key, s in summary.get(c.name, {}).items()
                if key.startswith(m.key + ":")
            ]
            if shares:
                parts.append(f"{m.short}: " + " + ".join(shares))
        if parts:
            lines.append(f"- {c.title} by process (medians): " + "; ".join(parts))
    return lines


@dataclass(frozen=True)
class Target:
    """One of issue 8's targets for our path: ours <= factor * reference (or >=)."""

    text: str
    key: str
    at_least: bool  # ours must be >= limit (else <=)
    factor: float
    reference: str | None  # a path, or None for an absolute limit (= factor)
    unit: str


TARGETS = (
    Target("bulk >= 75% of stunnel's", "bulk_mb_s", True, 0.75, "stunnel", "MB/s"),
    Target("bulk >= OpenSSH's", "bulk_mb_s", True, 1.0, "openssh", "MB/s"),
    Target("CPU-s/GiB <= 1.5x stunnel's", "bulk_cpu_s_per_gib", False, 1.5, "stunnel", "s"),
    Target("new connection TTFB p50 <= stunnel's", "ttfb_p50_ms", False, 1.0, "stunnel", "ms"),
    Target("1 KiB round trip p50 <= 3x stunnel's", "rtt_p50_ms", False, 3.0, "stunnel", "ms"),
    Target("<= 8 KiB per idle stream", "idle_kib", False, 8.0, None, "KiB"),
    Target("fairness p99 <= 20 ms", "fair_p99_ms", False, 20.0, None, "ms"),
)


@dataclass(frozen=True)
class Verdict:
    target: str
    ours: float | None
    limit: float | None
    met: bool | None  # None: not measured
    unit: str


PORTAL_TARGETS = (
    Target("bulk >= stunnel's", "bulk_mb_s", True, 1.0, PORTAL_PEER, "MB/s"),
    Target("CPU-s/GiB <= 1.5x stunnel's", "bulk_cpu_s_per_gib", False, 1.5, PORTAL_PEER, "s"),
    Target(
        "new connection TTFB p50 <= 1.5x stunnel's", "ttfb_p50_ms", False, 1.5, PORTAL_PEER, "ms"
    ),
)
"""Issue 20's targets for the browser's path (the portal), against stunnel in the same run."""


def evaluate_targets(
    summary: Mapping[str, Mapping[str, Summary]],
    targets: Sequence[Target] = TARGETS,
    path: str = "ours",
) -> list[Verdict]:
    verdicts = []
    for t in targets:
        ours = summary.get(path, {}).get(t.key)
        if t.reference is None:
            limit: float | None = t.factor
        else:
            ref = summary.get(t.reference, {}).get(t.key)
            limit = None if ref is None else ref.median * t.factor
        if ours is None or limit is None:
            verdicts.append(
                Verdict(t.text, None if ours is None else ours.median, limit, None, t.unit)
            )
            continue
        met = ours.median >= limit if t.at_least else ours.median <= limit
        verdicts.append(Verdict(t.text, ours.median, limit, met, t.unit))
    return verdicts


def render_targets(
    verdicts: Sequence[Verdict], title: str = "Target (issue 8)", path: str = "ours"
) -> str:
    lines = [f"| {title} | {path} | limit | met |", "|---|---|---|---|"]
    for v in verdicts:
        ours = "-" if v.ours is None else f"{fmt(v.ours)} {v.unit}"
        limit = "-" if v.limit is None else f"{fmt(v.limit)} {v.unit}"
        if v.ours is None:
            met = "not measured"
        elif v.met is None:
            met = "no reference measured"
        elif v.met:
            met = "yes"
        else:
            assert v.ours is not None and v.limit is not None
            met = f"no ({v.ours / v.limit:.2f}x the limit)" if v.limit else "no"
        lines.append(f"| {v.target} | {ours} | {limit} | {met} |")
    return "\n".join(lines)


FOLLOW_TCP, FOLLOW_HTTP = "ours-tcp-http", "ours-http"
"""The two paths whose difference is what following requests costs (issue 16): the same
processes and HTTP load, the target allowlisted as `tcp` or as `http`."""


@dataclass(frozen=True)
class FollowCost:
    """One row of what following costs: ours-http against ours-tcp-http in the same run."""

    what: str
    key: str
    unit: str  # of the two medians
    tcp: float | None
    http: float | None
    cost: float | None  # bulk: % of the tcp target's throughput lost; others: added, in `cost_unit`
    cost_unit: str
    limit: float | None  # None: reported, no limit
    met: bool | None  # None: not measured, or no limit
    per_run: tuple[float, ...] = ()  # the same cost in each run (when both sides have every run)


FOLLOW_ROWS = (
    # what, key, unit, cost unit, limit (issue 16)
    ("One-stream bulk", "bulk_mb_s", "MB/s", "%", 10.0),
    ("1 KiB round trip p50 (POST /echo)", "rtt_p50_ms", "ms", "µs", 50.0),
    ("1 KiB round trip p99 (POST /echo)", "rtt_p99_ms", "ms", "µs", None),
    ("1 KiB GET round trip p50", "getrtt_p50_ms", "ms", "µs", 50.0),
    ("1 KiB GET round trip p99", "getrtt_p99_ms", "ms", "µs", None),
    ("CPU-seconds per GiB, tunnel processes", "bulk_cpu_s_per_gib", "s", "s", None),
)


def evaluate_follow(summary: Mapping[str, Mapping[str, Summary]]) -> list[FollowCost]:
    """Bulk: the share of throughput lost, (1 - http/tcp) x 100 %; the round trips: the p50
    (p99) added, (http - tcp) x 1000 µs; CPU: seconds per GiB added. Medians of the same runs."""
    rows = []
    for what, key, unit, cost_unit, limit in FOLLOW_ROWS:
        tcp = summary.get(FOLLOW_TCP, {}).get(key)
        http = summary.get(FOLLOW_HTTP, {}).get(key)
        cost: float | None = None
        per_run: tuple[float, ...] = ()
        if tcp is not None and http is not None:
            cost = _follow_cost(key, cost_unit, tcp.median, http.median)
            if len(tcp.samples) == len(http.samples) > 1:
                costs = [
                    _follow_cost(key, cost_unit, t, h)
                    for t, h in zip(tcp.samples, http.samples, strict=True)
                ]
                per_run = tuple(c for c in costs if c is not None)
        # Rounded: the medians carry 0.1 µs at best, and 1.05 - 1.0 is not exactly 0.05.
        met = None if cost is None or limit is None else round(cost, 6) <= limit
        rows.append(
            FollowCost(
                what,
                key,
                unit,
                None if tcp is None else tcp.median,
                None if http is None else http.median,
                cost,
                cost_unit,
                limit,
                met,
                per_run,
            )
        )
    return rows


def _follow_cost(key: str, cost_unit: str, tcp: float, http: float) -> float | None:
    if key == "bulk_mb_s":
        return (1 - http / tcp) * 100 if tcp else None
    return (http - tcp) * (1000 if cost_unit == "µs" else 1)


def _cost_text(cost: float, unit: str) -> str:
    if unit == "%":
        return f"{cost:.1f} % less" if cost >= 0 else f"{-cost:.1f} % more"
    return f"{cost:+.0f} µs" if unit == "µs" else f"{cost:+.2f} s"


def render_follow(rows: Sequence[FollowCost]) -> str:
    head = (
        "| Following requests (issue 16): ours, same run | tcp target | http target "
        "| cost of following | limit | met |"
    )
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        tcp = "-" if r.tcp is None else f"{fmt(r.tcp)} {r.unit}"
        http = "-" if r.http is None else f"{fmt(r.http)} {r.unit}"
        if r.cost is None:
            cost = "not measured"
        else:
            cost = _cost_text(r.cost, r.cost_unit)
            if r.per_run:
                cost += " (runs: " + ", ".join(_cost_text(c, r.cost_unit) for c in r.per_run) + ")"
        if r.limit is None:
            limit, met = "-", "-"
        else:
            limit = f"<= {r.limit:.0f} {r.cost_unit}"
            if r.met is None:
                met = "not measured"
            elif r.met:
                met = "yes"
            else:
                assert r.cost is not None
                met = f"no ({r.cost / r.limit:.2f}x the limit)"
        lines.append(f"| {r.what} | {tcp} | {http} | {cost} | {limit} | {met} |")
    return "\n".join(lines)
