"""The WAN benchmark's numbers: queue samples cut to the steady part of a transfer, the metrics
of one run, and the markdown table per link. Pure functions over plain data (unit-tested).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.netns import Link, SocketQueue
from bench.report import Column, Summary, cell, fmt

DIRECTIONS = ("down", "up")
DIRECTION_TITLES = {"down": "download (plant to vendor)", "up": "upload (vendor to plant)"}
WAN_PEER = "stunnel"


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    higher_is_better: bool = False


ROWS = (
    Row("bulk_mb_s", "bulk, MB/s", True),
    Row("idle_rtt_p50_ms", "idle 1 KiB round trip p50, ms"),
    Row("echo_p50_ms", "1 KiB round trip on a 2nd connection during the bulk, p50, ms"),
    Row("echo_p99_ms", "the same, p99, ms"),
    Row("echo_max_ms", "the same, max, ms"),
    Row("ttfb_p50_ms", "new connection to first byte during the bulk, p50, ms"),
    Row("ttfb_max_ms", "the same, max, ms"),
    Row("queue_ms_p50", "modem (router) queue during the bulk, p50, ms"),
    Row("queue_ms_max", "the same, max, ms"),
    Row("notsent_kib_p50", "sender's unsent bytes in the kernel (WAN socket), p50, KiB"),
    Row("sendq_kib_p50", "sender's Send-Q (unsent + in flight, WAN socket), p50, KiB"),
    Row("held_s", "last byte written to its arrival: what the path held, s"),
)


def nearest_rank(values: Sequence[float], p: float) -> float:
    """The p-th percentile by nearest rank (what loadgen reports too)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def in_window(samples: Sequence[tuple[float, float]], start: float, end: float) -> list[float]:
    """The values sampled between start and end (monotonic seconds): the steady part."""
    return [v for t, v in samples if start <= t <= end]


def queue_sum(sockets: Sequence[SocketQueue]) -> tuple[int, int]:
    """(notsent, Send-Q) summed over the WAN connection's sockets in one sample."""
    return sum(s.notsent for s in sockets), sum(s.send_q for s in sockets)


def run_metrics(
    loadgen: Mapping[str, object],
    idle: Mapping[str, object],
    link: Link,
    backlog: Sequence[tuple[float, float]],
    sender: Sequence[tuple[float, tuple[int, int]]],
) -> dict[str, float]:
    """The flat metrics of one transfer. `backlog`: (t, bytes) of the router's queue in the
    transfer's direction; `sender`: (t, (notsent, Send-Q)) of the sending side's WAN sockets."""
    echo = loadgen["echo"]
    ttfb = loadgen["ttfb"]
    assert isinstance(echo, Mapping) and isinstance(ttfb, Mapping)
    latency = idle["latency"]
    assert isinstance(latency, Mapping)
    start, end = float(loadgen["t_probe"]), float(loadgen["t_end"])  # type: ignore[arg-type]
    out = {
        "bulk_mb_s": float(loadgen["mb_per_s"]),  # type: ignore[arg-type]
        "idle_rtt_p50_ms": float(latency["p50_ms"]),
    }
    if echo["n"]:
        out.update(
            echo_p50_ms=float(echo["p50_ms"]),
            echo_p99_ms=float(echo["p99_ms"]),
            echo_max_ms=float(echo["max_ms"]),
        )
    if ttfb["n"]:
        out.update(ttfb_p50_ms=float(ttfb["p50_ms"]), ttfb_max_ms=float(ttfb["max_ms"]))
    if loadgen.get("direction") == "up" and "t_written" in loadgen:
        out["held_s"] = end - float(loadgen["t_written"])  # type: ignore[arg-type]
    queued = in_window(backlog, start, end)
    if queued:
        to_ms = 8000 / link.rate_bit
        out["queue_ms_p50"] = nearest_rank(queued, 50) * to_ms
        out["queue_ms_max"] = max(queued) * to_ms
    steady = [(v, t) for t, v in sender if start <= t <= end]
    if steady:
        out["notsent_kib_p50"] = nearest_rank([v[0] for v, _ in steady], 50) / 1024
        out["notsent_kib_max"] = max(v[0] for v, _ in steady) / 1024
        out["sendq_kib_p50"] = nearest_rank([v[1] for v, _ in steady], 50) / 1024
    return out


def metric_key(link: str, direction: str, name: str) -> str:
    return f"{link}:{direction}:{name}"


def _ratio(ours: Summary | None, peer: Summary | None) -> str:
    if ours is None or peer is None or peer.median == 0:
        return "-"
    return f"{ours.median / peer.median:.2f}x"


def render_link_table(
    summary: Mapping[str, Mapping[str, Summary]],
    columns: Sequence[Column],
    link: Link,
    directions: Sequence[str] = DIRECTIONS,
    extra_rows: Sequence[Row] = (),
) -> str:
    """One table per link: rows per direction and metric, a column per path, then ours over
    stunnel (higher is better only for the bulk rate)."""
    by_name = {c.name: c for c in columns}
    with_ratio = "ours" in by_name and WAN_PEER in by_name
    head = [f"{link.rate_bit / 1e6:g} Mbit/s, {link.queue_ms} ms modem queue"]
    head += [c.title for c in columns]
    if with_ratio:
        head.append(f"ours/{by_name[WAN_PEER].title}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for direction in directions:
        for row in (*ROWS, *extra_rows):
            key = metric_key(link.name, direction, row.key)
            if not any(key in summary.get(c.name, {}) for c in columns):
                continue
            cells = [f"{direction}: {row.label}"]
            for c in columns:
                cells.append("n/a" if c.status != "ok" else cell(summary.get(c.name, {}).get(key)))
            if with_ratio:
                ours = summary.get("ours", {}).get(key)
                peer = summary.get(WAN_PEER, {}).get(key)
                cells.append(_ratio(ours, peer))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def queue_metric_rows(summary: Mapping[str, Mapping[str, Summary]]) -> list[Row]:
    """Rows for whatever our processes' /metrics showed with "queue" in its name."""
    names = sorted(
        {k.split(":", 2)[2] for k in summary.get("ours", {}) if k.split(":", 2)[2].startswith("m_")}
    )
    return [Row(n, f"ours /metrics `{n[2:]}` max during the bulk") for n in names]


def one_line(metrics: Mapping[str, float]) -> str:
    short = {
        "bulk_mb_s": "MB/s",
        "echo_p50_ms": "rt p50",
        "echo_p99_ms": "rt p99",
        "ttfb_p50_ms": "ttfb p50",
        "queue_ms_p50": "queue ms",
        "notsent_kib_p50": "unsent KiB",
    }
    parts = []
    for key, label in short.items():
        for k, v in metrics.items():
            if k.endswith(":" + key):
                parts.append(f"{label} {fmt(v)}")
    return ", ".join(parts)
