# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The scale benchmark's pure helpers (bench/scale/stats.py and run.count_at)."""

from twisted.trial.unittest import SynchronousTestCase

from bench.scale.run import count_at, histogram_buckets, slower_than
from bench.scale.stats import (
    cpu_per_minute,
    distribution,
    fmt,
    histogram,
    markdown_table,
    parse_netstat,
    parse_proc_stat_cpu_ticks,
    parse_status_kib,
    per_gateway_kib,
    percentile,
    split_evenly,
    verdict,
)
from gateway.promtext import metric_value as prometheus_value


class PercentileTests(SynchronousTestCase):
    def test_interpolates_between_ranks(self) -> None:
        self.assertEqual(percentile([1.0, 2.0, 3.0, 4.0], 50), 2.5)
        self.assertEqual(percentile([4.0, 1.0, 3.0, 2.0], 0), 1.0)
        self.assertEqual(percentile([4.0, 1.0, 3.0, 2.0], 100), 4.0)

    def test_one_value_is_every_percentile(self) -> None:
        self.assertEqual(percentile([7.0], 99), 7.0)

    def test_no_values_give_none(self) -> None:
        self.assertIsNone(percentile([], 50))

    def test_out_of_range_percentile_is_refused(self) -> None:
        self.assertRaises(ValueError, percentile, [1.0], 101)

    def test_distribution_names_its_percentiles(self) -> None:
        d = distribution([float(i) for i in range(1, 101)], (50, 99))
        self.assertEqual(d["n"], 100)
        self.assertEqual((d["min"], d["max"]), (1.0, 100.0))
        self.assertAlmostEqual(d["p50"], 50.5)
        self.assertAlmostEqual(d["p99"], 99.01)

    def test_empty_distribution_has_only_a_count(self) -> None:
        self.assertEqual(distribution([]), {"n": 0})


class HistogramTests(SynchronousTestCase):
    def test_values_fall_into_buckets_and_overflow_into_the_last(self) -> None:
        self.assertEqual(histogram([0.1, 0.9, 1.0, 2.5, 99.0], 1.0, 3.0), [2, 1, 2])

    def test_negative_values_count_in_the_first_bucket(self) -> None:
        self.assertEqual(histogram([-0.5], 1.0, 2.0), [1, 0])


class ParsingTests(SynchronousTestCase):
    def test_prometheus_value_of_plain_and_labelled_samples(self) -> None:
        text = (
            "# HELP relay_gateways_connected Gateways\n"
            "# TYPE relay_gateways_connected gauge\n"
            "relay_gateways_connected 1000.0\n"
            'relay_auth_failures_total{kind="gateway_handshake"} 3.0\n'
            "relay_gateways_connected_extra 5\n"
        )
        self.assertEqual(prometheus_value(text, "relay_gateways_connected"), 1000.0)
        self.assertEqual(
            prometheus_value(text, 'relay_auth_failures_total{kind="gateway_handshake"}'), 3.0
        )
        self.assertIsNone(prometheus_value(text, "relay_streams_active"))

    def test_proc_stat_cpu_ticks_with_a_tricky_command_name(self) -> None:
        fields = ["S", "1", "2", "3"] + ["0"] * 7 + ["150", "50"] + ["0"] * 30
        text = "42 (python -m (x)) " + " ".join(fields)
        self.assertEqual(parse_proc_stat_cpu_ticks(text), 200)

    def test_status_fields_in_kib(self) -> None:
        text = "Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n"
        self.assertEqual(parse_status_kib(text, "VmRSS"), 1024)
        self.assertEqual(parse_status_kib(text, "VmHWM"), 2048)
        self.assertIsNone(parse_status_kib(text, "RssAnon"))

    def test_netstat_pairs_header_and_value_lines(self) -> None:
        text = (
            "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n"
            "TcpExt: 0 7 9\n"
            "IpExt: InNoRoutes\n"
            "IpExt: 1\n"
        )
        self.assertEqual(
            parse_netstat(text),
            {
                "TcpExt.SyncookiesSent": 0,
                "TcpExt.ListenOverflows": 7,
                "TcpExt.ListenDrops": 9,
                "IpExt.InNoRoutes": 1,
            },
        )


class ArithmeticTests(SynchronousTestCase):
    def test_memory_per_gateway_is_the_growth_over_the_idle_relay(self) -> None:
        self.assertEqual(per_gateway_kib(120_000, 55_000, 1000), 65.0)
        self.assertRaises(ValueError, per_gateway_kib, 1, 1, 0)

    def test_cpu_per_minute_scales_the_window(self) -> None:
        self.assertEqual(cpu_per_minute(0.5, 20.0), 1.5)
        self.assertRaises(ValueError, cpu_per_minute, 1.0, 0.0)

    def test_split_evenly_differs_by_at_most_one(self) -> None:
        self.assertEqual(split_evenly(10, 4), [3, 3, 2, 2])
        self.assertEqual(sum(split_evenly(5001, 4)), 5001)
        self.assertRaises(ValueError, split_evenly, 1, 0)


class ReportTests(SynchronousTestCase):
    def test_verdict_says_by_how_much_a_limit_is_missed(self) -> None:
        self.assertEqual(verdict(64.0, 64.0), "met")
        self.assertEqual(verdict(80.0, 64.0), "missed by 25%")
        self.assertEqual(verdict(None, 64.0), "not measured")

    def test_fmt(self) -> None:
        self.assertEqual(fmt(1234.567, 1, "KiB"), "1,234.6 KiB")
        self.assertEqual(fmt(None), "n/a")

    def test_markdown_table_aligns_numbers_right(self) -> None:
        table = markdown_table(["a", "b"], [["x", "1"]])
        self.assertEqual(table.splitlines(), ["| a | b |", "|:--|--:|", "| x | 1 |"])
        self.assertRaises(ValueError, markdown_table, ["a", "b"], [["x"]])

    def test_count_at_takes_the_last_poll_up_to_that_second(self) -> None:
        curve = [(0.2, 0), (0.9, 300), (1.4, 800), (2.0, 1000)]
        self.assertEqual(count_at(curve, 1.0), 300)
        self.assertEqual(count_at(curve, 2.0), 1000)
        self.assertEqual(count_at(curve, 0.1), 0)

    def test_histogram_buckets_and_the_share_slower_than_a_bound(self) -> None:
        text = (
            'relay_stream_open_seconds_bucket{le="0.1"} 7.0\n'
            'relay_stream_open_seconds_bucket{le="0.25"} 8.0\n'
            'relay_stream_open_seconds_bucket{le="1.0"} 9.0\n'
            'relay_stream_open_seconds_bucket{le="+Inf"} 10.0\n'
            "relay_stream_open_seconds_count 10.0\n"
        )
        buckets = histogram_buckets(text, "relay_stream_open_seconds")
        self.assertEqual(buckets["+Inf"], 10.0)
        self.assertEqual(slower_than(buckets, 0.25), (2, 10))
        self.assertEqual(slower_than(buckets, 1.0), (1, 10))
        self.assertIsNone(slower_than(buckets, 0.3))
