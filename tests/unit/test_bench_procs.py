# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The benchmark's /proc parsing, process trees and output parsing (bench/procs.py, paths.py)."""

import os

from twisted.trial.unittest import SynchronousTestCase

from bench.cli import parse_args
from bench.procs import ProcStat, Usage, parse_stat, read_stat, tree, usage
from gateway.promtext import metric_value


def stat_line(pid: int, comm: str, ppid: int, utime: int, starttime: int, rss: int) -> str:
    fields = ["S", str(ppid)] + ["0"] * 50
    fields[11], fields[12], fields[13], fields[14] = str(utime), "2", "3", "4"
    fields[19], fields[21] = str(starttime), str(rss)
    return f"{pid} ({comm}) " + " ".join(fields)


class StatTests(SynchronousTestCase):
    def test_command_names_with_spaces_and_parentheses(self) -> None:
        stat = parse_stat(stat_line(42, "sshd: root (priv) x", 7, 10, 999, 123))
        self.assertEqual(stat, ProcStat(42, 7, 999, 10 + 2 + 3 + 4, 123))

    def test_reads_this_process(self) -> None:
        stat = read_stat(os.getpid())
        assert stat is not None
        self.assertEqual(stat.ppid, os.getppid())
        self.assertGreater(stat.rss_pages, 0)

    def test_vanished_process_reads_as_none(self) -> None:
        self.assertIsNone(read_stat(2**22 + 1))  # above the kernel's pid_max limit


class TreeTests(SynchronousTestCase):
    def test_tree_covers_descendants_of_the_roots_only(self) -> None:
        stats = {
            s.pid: s
            for s in (
                ProcStat(10, 1, 0, 0, 0),  # sshd listener
                ProcStat(11, 10, 0, 0, 0),  # per-connection monitor
                ProcStat(12, 11, 0, 0, 0),  # its unprivileged child
                ProcStat(20, 1, 0, 0, 0),  # something else
                ProcStat(21, 20, 0, 0, 0),
            )
        }
        self.assertEqual(sorted(s.pid for s in tree([10], stats)), [10, 11, 12])
        self.assertEqual(tree([99], stats), [])

    def test_cpu_counts_new_and_reused_pids_in_full(self) -> None:
        before = Usage(cpu={(1, 100): 50, (2, 200): 10}, rss_bytes=0)
        after = Usage(cpu={(1, 100): 80, (2, 300): 5, (3, 400): 15}, rss_bytes=0)
        ticks = os.sysconf("SC_CLK_TCK")
        # 30 more for pid 1; pid 2 is a new process (other start time): 5; pid 3 new: 15.
        self.assertAlmostEqual(after.cpu_seconds_since(before), 50 / ticks)

    def test_usage_of_this_process(self) -> None:
        u = usage([os.getpid()])
        self.assertGreater(u.rss_bytes, 0)
        self.assertEqual(usage([]).rss_bytes, 0)


class ParsingTests(SynchronousTestCase):
    def test_prometheus_value_plain_and_labelled(self) -> None:
        text = (
            "# HELP relay_gateways_connected Gateways\n"
            "# TYPE relay_gateways_connected gauge\n"
            "relay_gateways_connected_total 5.0\n"
            "relay_gateways_connected 1.0\n"
            'relay_streams_active{gateway="a"} 3\n'
        )
        self.assertEqual(metric_value(text, "relay_gateways_connected"), 1.0)
        self.assertEqual(metric_value(text, "relay_streams_active"), 3.0)
        self.assertIsNone(metric_value(text, "relay_auth_failures_total"))

    def test_paths_option_is_validated(self) -> None:
        self.assertEqual(parse_args(["--paths", "ours, stunnel"]).paths, ["ours", "stunnel"])
        self.assertEqual(
            parse_args(["--paths", "ours-tcp-http,ours-http"]).paths,
            ["ours-tcp-http", "ours-http"],
        )
        with self.assertRaises(SystemExit):
            parse_args(["--paths", "wireguard"])
        with self.assertRaises(SystemExit):
            parse_args(["--runs", "0"])
