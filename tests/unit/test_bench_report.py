# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The benchmark's statistics, table and target verdicts (bench/report.py)."""

from twisted.trial.unittest import SynchronousTestCase

from bench.report import (
    Column,
    Summary,
    aggregate,
    cell,
    evaluate_targets,
    fmt,
    ratio,
    render_breakdown,
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
