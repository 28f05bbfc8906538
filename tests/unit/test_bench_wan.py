# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The WAN benchmark's parsing of `tc` and `ss`, its per-run metrics and its table
(bench/netns.py, bench/wan_report.py, bench/wan_cli.py options)."""

from twisted.trial.unittest import SynchronousTestCase

from bench.netns import LINKS, SocketQueue, parse_backlog, parse_ss
from bench.report import Column, aggregate
from bench.wan_cli import FULL, QUICK, parse_args
from bench.wan_report import (
    in_window,
    metric_key,
    nearest_rank,
    queue_metric_rows,
    render_link_table,
    run_metrics,
)

TC = """qdisc tbf 8001: root refcnt 3 rate 10Mbit burst 4Kb lat 400ms
 Sent 6255360 bytes 4320 pkt (dropped 12, overlimits 900 requeues 0)
 backlog 501442b 347p requeues 0
"""

SS = """0      571960 10.211.1.2:40621 10.211.2.2:40252
\t cubic wscale:10,10 rto:464 rtt:261.125/1.158 cwnd:225 unacked:225 notsent:246160 minrtt:0.009
0      2048   10.211.1.2:40621 10.211.2.2:40244
\t cubic wscale:10,10 rto:472 rtt:224.975/39.225 cwnd:10 unacked:2 minrtt:0.004
"""


class ParseTests(SynchronousTestCase):
    def test_backlog_in_bytes(self) -> None:
        self.assertEqual(parse_backlog(TC), 501442)
        self.assertEqual(parse_backlog(" backlog 12Kb 3p requeues 0"), 12000)
        self.assertEqual(parse_backlog(" backlog 0b 0p requeues 0"), 0)
        self.assertIsNone(parse_backlog("qdisc noqueue 0: root refcnt 2"))

    def test_sockets_with_and_without_unsent_bytes(self) -> None:
        self.assertEqual(
            parse_ss(SS),
            [
                SocketQueue("10.211.1.2:40621", "10.211.2.2:40252", 571960, 246160),
                SocketQueue("10.211.1.2:40621", "10.211.2.2:40244", 2048, 0),
            ],
        )
        self.assertEqual(parse_ss(""), [])

    def test_link_shaping_arguments(self) -> None:
        self.assertEqual(
            LINKS["10mbit"].tbf(),
            ["tbf", "rate", "10000kbit", "burst", "32kbit", "latency", "400ms"],
        )
        self.assertEqual(LINKS["2mbit"].queue_ms, 1000)
        self.assertEqual(LINKS["50mbit"].queue_ms, 100)


def loadgen_result(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "mb_per_s": 1.19,
        "t_start": 100.0,
        "t_probe": 103.0,
        "t_end": 118.0,
        "echo": {"n": 150, "p50_ms": 300.0, "p99_ms": 700.0, "max_ms": 800.0},
        "ttfb": {"n": 14, "p50_ms": 650.0, "max_ms": 900.0},
    }
    base.update(over)
    return base


IDLE = {"latency": {"p50_ms": 0.8, "p99_ms": 1.1}}


class RunMetricsTests(SynchronousTestCase):
    def test_nearest_rank(self) -> None:
        self.assertEqual(nearest_rank([5, 1, 4, 2, 3], 50), 3)
        self.assertEqual(nearest_rank([5, 1, 4, 2, 3], 99), 5)
        self.assertEqual(nearest_rank([7], 50), 7)

    def test_only_samples_inside_the_steady_window_count(self) -> None:
        samples = [(102.9, 1.0), (103.0, 2.0), (110.0, 3.0), (118.0, 4.0), (118.1, 5.0)]
        self.assertEqual(in_window(samples, 103.0, 118.0), [2.0, 3.0, 4.0])

    def test_queue_in_milliseconds_at_the_link_rate(self) -> None:
        link = LINKS["10mbit"]  # 1.25 MB/s: 125,000 bytes are 100 ms
        backlog = [(90.0, 500_000.0), (104.0, 125_000.0), (105.0, 250_000.0), (106.0, 375_000.0)]
        sender = [(104.0, (10 * 1024, 100 * 1024)), (105.0, (30 * 1024, 300 * 1024))]
        m = run_metrics(loadgen_result(), IDLE, link, backlog, sender)
        self.assertEqual(m["bulk_mb_s"], 1.19)
        self.assertEqual(m["idle_rtt_p50_ms"], 0.8)
        self.assertEqual((m["echo_p50_ms"], m["echo_p99_ms"], m["echo_max_ms"]), (300, 700, 800))
        self.assertEqual((m["ttfb_p50_ms"], m["ttfb_max_ms"]), (650, 900))
        self.assertAlmostEqual(m["queue_ms_p50"], 200.0)
        self.assertAlmostEqual(m["queue_ms_max"], 300.0)  # the 500 kB before the window: out
        self.assertEqual((m["notsent_kib_p50"], m["notsent_kib_max"]), (10, 30))
        self.assertEqual(m["sendq_kib_p50"], 100)

    def test_an_upload_reports_how_long_its_last_byte_was_held(self) -> None:
        up = loadgen_result(direction="up", t_written=110.5)
        m = run_metrics(up, IDLE, LINKS["10mbit"], [], [])
        self.assertEqual(m["held_s"], 118.0 - 110.5)
        down = loadgen_result(direction="down", t_written=100.0)
        self.assertNotIn("held_s", run_metrics(down, IDLE, LINKS["10mbit"], [], []))

    def test_no_probe_samples_no_probe_metrics(self) -> None:
        none = {"n": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        m = run_metrics(loadgen_result(echo=none, ttfb=none), IDLE, LINKS["2mbit"], [], [])
        self.assertEqual(set(m), {"bulk_mb_s", "idle_rtt_p50_ms"})


class TableTests(SynchronousTestCase):
    def test_rows_per_direction_and_ratio_to_stunnel(self) -> None:
        link = LINKS["10mbit"]
        runs = [
            {
                "stunnel": {
                    metric_key("10mbit", "down", "echo_p50_ms"): 300.0 + i,
                    metric_key("10mbit", "down", "bulk_mb_s"): 1.2,
                },
                "ours": {
                    metric_key("10mbit", "down", "echo_p50_ms"): 60.0 + i,
                    metric_key("10mbit", "down", "bulk_mb_s"): 1.2,
                    metric_key("10mbit", "down", "m_gateway_tunnel_queue_bytes"): 4096.0,
                },
            }
            for i in range(3)
        ]
        summary = aggregate(runs)
        columns = [
            Column("stunnel", "stunnel", "ok"),
            Column("openssh", "ssh", "unavailable: no sshd"),
            Column("ours", "ours", "ok"),
        ]
        table = render_link_table(summary, columns, link, ["down"], queue_metric_rows(summary))
        lines = table.splitlines()
        self.assertEqual(
            lines[0], "| 10 Mbit/s, 400 ms modem queue | stunnel | ssh | ours | ours/stunnel |"
        )
        self.assertIn(
            "| down: bulk, MB/s | 1.20 (1.20-1.20) | n/a | 1.20 (1.20-1.20) | 1.00x |", lines
        )
        echo = next(line for line in lines if "2nd connection" in line and "p50" in line)
        self.assertEqual(
            echo,
            "| down: 1 KiB round trip on a 2nd connection during the bulk, p50, ms "
            "| 301 (300-302) | n/a | 61.0 (60.0-62.0) | 0.20x |",
        )
        self.assertTrue(any("`gateway_tunnel_queue_bytes`" in line for line in lines))
        self.assertFalse(any(line.startswith("| up:") for line in lines))


class OptionTests(SynchronousTestCase):
    def test_defaults_and_subsets(self) -> None:
        args = parse_args([])
        self.assertEqual(args.links, ["10mbit", "50mbit", "2mbit"])
        self.assertEqual(args.directions, ["down", "up"])
        self.assertEqual(args.congestion, "cubic")
        args = parse_args(["--quick", "--links", "2mbit,10mbit", "--ours-env", "A=1"])
        self.assertEqual(args.links, ["10mbit", "2mbit"])
        self.assertEqual(args.ours_env, ["A=1"])

    def test_bulks_scale_with_the_link(self) -> None:
        ten = LINKS["10mbit"]
        self.assertEqual(FULL.bulk_bytes(ten), int(1.25e6 * 0.95 * 18))
        self.assertLess(QUICK.bulk_seconds["10mbit"], FULL.bulk_seconds["10mbit"])
        self.assertGreater(FULL.bulk_seconds["2mbit"], FULL.bulk_seconds["10mbit"])
        self.assertGreaterEqual(QUICK.warmup(ten), 2.0)
