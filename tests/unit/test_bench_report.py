# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The benchmark's statistics, table and target verdicts (bench/report.py)."""

from twisted.trial.unittest import SynchronousTestCase

from bench.report import (
    Column,
    Summary,
    aggregate,
    cell,
    evaluate_follow,
    evaluate_targets,
    fmt,
    ratio,
    render_breakdown,
    render_follow,
    render_table,
    render_targets,
    summarize,
)


def one(value: float) -> Summary:
    s = summarize([value])
    assert s is not None
    return s


class SummaryTests(SynchronousTestCase):
    def test_median_and_spread_over_runs(self) -> None:
        s = summarize([3.0, 1.0, 10.0, 2.0])
        assert s is not None
        self.assertEqual((s.median, s.low, s.high), (2.5, 1.0, 10.0))
        self.assertEqual(s.samples, (3.0, 1.0, 10.0, 2.0))

    def test_nothing_measured_is_no_summary(self) -> None:
        self.assertIsNone(summarize([]))

    def test_runs_that_failed_a_metric_are_left_out_of_its_median(self) -> None:
        runs = [
            {"ours": {"bulk_mb_s": 100.0, "rtt_p50_ms": 1.0}},
            {"ours": {"rtt_p50_ms": 3.0}},  # bulk failed in this run
            {"ours": {"bulk_mb_s": 300.0, "rtt_p50_ms": 2.0}, "direct": {"bulk_mb_s": 9.0}},
        ]
        summary = aggregate(runs)
        self.assertEqual(summary["ours"]["bulk_mb_s"].samples, (100.0, 300.0))
        self.assertEqual(summary["ours"]["rtt_p50_ms"].median, 2.0)
        self.assertEqual(summary["direct"]["bulk_mb_s"].median, 9.0)


class FormatTests(SynchronousTestCase):
    def test_three_significant_digits_without_exponents(self) -> None:
        cases = {4396.4: "4396", 271.2: "271", 12.34: "12.3", 1.234: "1.23", 0.8123: "0.812"}
        cases.update({0.05904: "0.0590", 0.0: "0", 0.00012345: "0.0001"})
        for value, text in cases.items():
            self.assertEqual(fmt(value), text, value)

    def test_cell_shows_spread_only_with_several_runs(self) -> None:
        self.assertEqual(cell(one(271.0)), "271")
        self.assertEqual(cell(summarize([260.0, 271.0, 280.0])), "271 (260-280)")
        self.assertEqual(cell(None), "error")

    def test_ratio_of_medians(self) -> None:
        self.assertEqual(ratio(one(271.0), one(414.0)), "0.65x")
        self.assertEqual(ratio(None, one(1.0)), "-")
        self.assertEqual(ratio(one(1.0), one(0.0)), "-")


class TableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.summary = {
            "direct": {"bulk_mb_s": one(4000.0)},
            "stunnel": {"bulk_mb_s": one(400.0), "bulk_cpu_s_per_gib": one(4.0)},
            "openssh": {"bulk_mb_s": one(200.0)},
        }

    def rows(self, table: str) -> dict[str, list[str]]:
        lines = table.splitlines()
        return {
            cells[0]: cells[1:]
            for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
        }

    def test_columns_ratios_and_placeholders(self) -> None:
        columns = [
            Column("direct", "direct", "ok"),
            Column("stunnel", "stunnel", "ok"),
            Column("openssh", "OpenSSH", "ok"),
            Column("ours", "ours", "unavailable: gateway CLI missing"),
        ]
        table = render_table(self.summary, columns)
        header = table.splitlines()[0]
        self.assertIn("| direct | stunnel | OpenSSH | ours | ours/stunnel | ours/OpenSSH |", header)
        rows = self.rows(table)
        self.assertEqual(
            rows["One-stream bulk, MB/s (higher is better)"],
            ["4000", "400", "200", "n/a", "-", "-"],
        )
        # CPU is a property of tunnel processes: the direct path has none.
        self.assertEqual(rows["CPU-seconds per GiB, tunnel processes"][:2], ["-", "4.00"])
        # Measured nowhere in an available path: the failure is visible, not a blank.
        self.assertEqual(rows["1 KiB round trip p50, ms"][1], "error")

    def test_per_process_shares_get_one_line_per_path(self) -> None:
        summary = {
            "ours": {
                "idle_kib": one(12.0),
                "idle_kib:relay": one(5.0),
                "idle_kib:gateway": one(7.0),
                "bulk_cpu_s_per_gib:relay": one(2.5),
            },
            "direct": {"bulk_mb_s": one(1.0)},
        }
        lines = render_breakdown(
            summary, [Column("direct", "direct", "ok"), Column("ours", "ours", "ok")]
        )
        self.assertEqual(
            lines,
            [
                "- ours by process (medians): CPU-s/GiB: relay 2.50; "
                "KiB per idle connection: relay 5.00 + gateway 7.00"
            ],
        )

    def test_a_path_that_takes_some_measurements_shows_a_dash_for_the_others(self) -> None:
        summary = {
            "stunnel": {"bulk_mb_s": one(400.0), "conc_per_s": one(9000.0)},
            "ours-http": {"bulk_mb_s": one(200.0), "bulk_cpu_s_per_gib": one(6.0)},
        }
        columns = [
            Column("stunnel", "stunnel", "ok"),
            Column("ours-http", "ours, http target", "ok", ("rtt", "bulk")),
        ]
        rows = self.rows(render_table(summary, columns))
        self.assertEqual(rows["One-stream bulk, MB/s (higher is better)"], ["400", "200"])
        self.assertEqual(rows["CPU-seconds per GiB, tunnel processes"], ["error", "6.00"])
        self.assertEqual(rows["Round trips/s, 50 connections (higher is better)"], ["9000", "-"])
        # Taken but failed: still visible as an error, not a dash.
        self.assertEqual(rows["1 KiB round trip p50, ms"], ["error", "error"])

    def test_rows_no_path_takes_are_left_out(self) -> None:
        columns = [
            Column("ours-tcp-http", "tcp target", "ok", ("rtt", "bulk")),
            Column("ours-http", "http target", "ok", ("rtt", "bulk")),
        ]
        rows = self.rows(render_table({}, columns))
        self.assertEqual(
            list(rows),
            [
                "One-stream bulk, MB/s (higher is better)",
                "CPU-seconds per GiB, tunnel processes",
                "1 KiB round trip p50, ms",
                "1 KiB round trip p99, ms",
            ],
        )

    def test_no_ratio_columns_without_our_path(self) -> None:
        table = render_table(self.summary, [Column("stunnel", "stunnel", "ok")])
        self.assertNotIn("ours/", table)


class TargetTests(SynchronousTestCase):
    def test_verdicts_relative_and_absolute(self) -> None:
        summary = {
            "stunnel": {"bulk_mb_s": one(400.0), "rtt_p50_ms": one(0.25)},
            "openssh": {"bulk_mb_s": one(350.0)},
            "ours": {"bulk_mb_s": one(310.0), "rtt_p50_ms": one(0.8), "idle_kib": one(4.3)},
        }
        verdicts = {v.target: v for v in evaluate_targets(summary)}
        self.assertTrue(verdicts["bulk >= 75% of stunnel's"].met)  # 310 >= 300
        self.assertFalse(verdicts["bulk >= OpenSSH's"].met)  # 310 < 350
        self.assertFalse(verdicts["1 KiB round trip p50 <= 3x stunnel's"].met)  # 0.8 > 0.75
        self.assertTrue(verdicts["<= 8 KiB per idle stream"].met)
        self.assertIsNone(verdicts["fairness p99 <= 20 ms"].met)
        self.assertIsNone(verdicts["CPU-s/GiB <= 1.5x stunnel's"].met)

    def test_missed_target_says_by_how_much(self) -> None:
        summary = {"openssh": {"bulk_mb_s": one(400.0)}, "ours": {"bulk_mb_s": one(300.0)}}
        text = render_targets(evaluate_targets(summary))
        self.assertIn("| bulk >= OpenSSH's | 300 MB/s | 400 MB/s | no (0.75x the limit) |", text)
        self.assertIn("| fairness p99 <= 20 ms | - | 20.0 ms | not measured |", text)


class FollowCostTests(SynchronousTestCase):
    """Issue 16: following requests costs at most 10 % of bulk and 50 µs p50 per round trip,
    ours-http against ours-tcp-http in the same run."""

    def summary(self, http_bulk: float, http_p50: float) -> dict[str, dict[str, Summary]]:
        return {
            "ours-tcp-http": {
                "bulk_mb_s": summarize([190.0, 200.0, 210.0]),  # type: ignore[dict-item]
                "rtt_p50_ms": one(1.0),
                "rtt_p99_ms": one(3.0),
                "bulk_cpu_s_per_gib": one(7.0),
            },
            "ours-http": {
                "bulk_mb_s": one(http_bulk),
                "rtt_p50_ms": one(http_p50),
                "rtt_p99_ms": one(3.5),
                "bulk_cpu_s_per_gib": one(7.25),
            },
        }

    def test_costs_from_the_medians(self) -> None:
        rows = {r.key: r for r in evaluate_follow(self.summary(185.0, 1.04))}
        bulk, p50 = rows["bulk_mb_s"], rows["rtt_p50_ms"]
        self.assertEqual((bulk.tcp, bulk.http), (200.0, 185.0))
        self.assertAlmostEqual(bulk.cost or 0, 7.5)  # % of the tcp target's throughput lost
        self.assertTrue(bulk.met)
        self.assertAlmostEqual(p50.cost or 0, 40.0)  # µs added
        self.assertTrue(p50.met)
        self.assertAlmostEqual(rows["rtt_p99_ms"].cost or 0, 500.0)
        self.assertIsNone(rows["rtt_p99_ms"].met)  # reported, no limit
        self.assertAlmostEqual(rows["bulk_cpu_s_per_gib"].cost or 0, 0.25)

    def test_limits_are_inclusive_and_a_miss_says_by_how_much(self) -> None:
        rows = {r.key: r for r in evaluate_follow(self.summary(180.0, 1.05))}
        self.assertTrue(rows["bulk_mb_s"].met)  # exactly 10 %
        self.assertTrue(rows["rtt_p50_ms"].met)  # exactly 50 µs
        text = render_follow(evaluate_follow(self.summary(150.0, 1.141)))
        self.assertIn(
            "| One-stream bulk | 200 MB/s | 150 MB/s | 25.0 % less | <= 10 % "
            "| no (2.50x the limit) |",
            text,
        )
        self.assertIn(
            "| 1 KiB round trip p50 (POST /echo) | 1.00 ms | 1.14 ms | +141 µs | <= 50 µs "
            "| no (2.82x the limit) |",
            text,
        )
        self.assertIn(
            "| 1 KiB round trip p99 (POST /echo) | 3.00 ms | 3.50 ms | +500 µs | - | - |", text
        )
        self.assertIn("| CPU-seconds per GiB, tunnel processes | 7.00 s | 7.25 s | +0.25 s |", text)

    def test_faster_with_following_is_no_cost(self) -> None:
        text = render_follow(evaluate_follow(self.summary(210.0, 0.99)))
        self.assertIn("| 5.0 % more | <= 10 % | yes |", text)
        self.assertIn("| -10 µs | <= 50 µs | yes |", text)

    def test_a_side_not_measured(self) -> None:
        summary = self.summary(185.0, 1.04)
        del summary["ours-http"]["rtt_p50_ms"]
        rows = {r.key: r for r in evaluate_follow(summary)}
        self.assertIsNone(rows["rtt_p50_ms"].cost)
        self.assertIsNone(rows["rtt_p50_ms"].met)
        self.assertIn(
            "| 1 KiB round trip p50 (POST /echo) | 1.00 ms | - | not measured | <= 50 µs "
            "| not measured |",
            render_follow(list(rows.values())),
        )

    def test_each_runs_cost_when_both_sides_have_every_run(self) -> None:
        summary: dict[str, dict[str, Summary]] = {
            "ours-tcp-http": {"getrtt_p50_ms": summarize([1.0, 1.2, 1.1])},  # type: ignore[dict-item]
            "ours-http": {"getrtt_p50_ms": summarize([1.01, 1.3, 1.12])},  # type: ignore[dict-item]
        }
        rows = {r.key: r for r in evaluate_follow(summary)}
        get = rows["getrtt_p50_ms"]
        self.assertAlmostEqual(get.cost or 0, 20.0)  # the medians: 1.12 - 1.1
        self.assertEqual([round(c) for c in get.per_run], [10, 100, 20])
        self.assertIn(
            "| 1 KiB GET round trip p50 | 1.10 ms | 1.12 ms | +20 µs (runs: +10 µs, +100 µs, "
            "+20 µs) | <= 50 µs | yes |",
            render_follow(list(rows.values())),
        )
        # A run missing on one side: which run is which is not known, so no per-run costs.
        summary["ours-http"]["getrtt_p50_ms"] = summarize([1.01, 1.3])  # type: ignore[assignment]
        self.assertEqual(evaluate_follow(summary)[3].per_run, ())
