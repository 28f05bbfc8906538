"""Pure helpers of the scale benchmark: percentiles, /proc parsing, verdicts (Prometheus text is
read with `gateway.promtext`).

Nothing here starts a process or reads the clock, so all of it is unit-tested
(tests/unit/test_scale_stats.py).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

KIB = 1024


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float]) -> float | None:
    items = list(values)
    return statistics.median(items) if items else None


def distribution(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """``{"n", "min", "p50", ..., "max"}`` of ``values`` (only ``n`` when empty)."""
    out: dict[str, float] = {"n": len(values)}
    if not values:
        return out
    out["min"] = min(values)
    for q in qs:
        value = percentile(values, q)
        assert value is not None
        out[f"p{q:g}"] = value
    out["max"] = max(values)
    return out


def histogram(values: Iterable[float], width: float, end: float) -> list[int]:
    """Counts of ``values`` in ``[0, width), [width, 2 width), ...`` up to ``end``; the last
    bucket also holds everything beyond."""
    if width <= 0 or end <= 0:
        raise ValueError("width and end must be positive")
    buckets = [0] * max(1, math.ceil(end / width))
    for value in values:
        index = min(max(int(value // width), 0), len(buckets) - 1)
        buckets[index] += 1
    return buckets


def parse_proc_stat_cpu_ticks(text: str) -> int:
    """utime + stime of /proc/PID/stat (the command name may contain spaces and parens)."""
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field k of proc(5) is rest[k - 3]: utime 14, stime 15.
    return int(rest[11]) + int(rest[12])


def parse_status_kib(text: str, field: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (``VmRSS``, ``RssAnon``, ...) in KiB."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == field:
            return int(value.split()[0])
    return None


def parse_netstat(text: str) -> dict[str, int]:
    """/proc/net/netstat as ``{"TcpExt.ListenOverflows": n, ...}`` (header and value lines)."""
    lines = text.splitlines()
    out: dict[str, int] = {}
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        prefix, _, names = header.partition(":")
        vprefix, _, numbers = values.partition(":")
        if prefix != vprefix:
            continue
        for name, number in zip(names.split(), numbers.split(), strict=False):
            try:
                out[f"{prefix}.{name}"] = int(number)
            except ValueError:
                continue
    return out


def per_gateway_kib(rss_connected_kib: float, rss_idle_kib: float, gateways: int) -> float:
    """Relay memory attributable to one idle gateway."""
    if gateways <= 0:
        raise ValueError("no gateways")
    return (rss_connected_kib - rss_idle_kib) / gateways


def cpu_per_minute(cpu_seconds: float, wall_seconds: float) -> float:
    """CPU-seconds a process used per minute of wall time."""
    if wall_seconds <= 0:
        raise ValueError("no time passed")
    return cpu_seconds * 60 / wall_seconds


def verdict(value: float | None, limit: float) -> str:
    """``met`` / ``missed by N%`` for a value that must stay at or below ``limit``."""
    if value is None:
        return "not measured"
    if value <= limit:
        return "met"
    return f"missed by {(value / limit - 1) * 100:.0f}%"


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".strip()


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; the first column is left-aligned, the others right-aligned."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError("every row needs one cell per column")
    align = [":--"] + ["--:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` items over ``parts`` workers, sizes differing by at most one."""
    if parts <= 0:
        raise ValueError("need at least one part")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
