# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The benchmark's browser path (issue 20): the portal login's parsing (bench/portal.py), the
report's portal column and targets (bench/report.py), and the load generator's TLS (--tls,
--host, --cookie) against a TLS server in front of bench/target.c: verified, resumed, and
failing on a certificate that does not name the host or does not chain to the CA."""

import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench import keys
from bench.cli import build_tools
from bench.portal import set_cookie_value, ticket_url
from bench.procs import BenchError
from bench.report import (
    PORTAL_TARGETS,
    Column,
    Summary,
    evaluate_targets,
    render_table,
    render_targets,
    summarize,
)

TIMEOUT = 20


def one(value: float) -> Summary:
    s = summarize([value])
    assert s is not None
    return s


class PortalLoginParsingTests(SynchronousTestCase):
    def test_set_cookie_value(self) -> None:
        headers = [
            ("Content-Type", "text/html"),
            ("Set-Cookie", "other=1; Path=/"),
            ("set-cookie", "__Host-portal-pass=abc_DEF-1; Path=/; Secure; HttpOnly"),
        ]
        self.assertEqual(set_cookie_value(headers, "__Host-portal-pass"), "abc_DEF-1")
        self.assertEqual(set_cookie_value(headers, "other"), "1")
        self.assertIsNone(set_cookie_value(headers, "__Host-portal"))  # a prefix is not a match
        self.assertIsNone(set_cookie_value([("Set-Cookie", "__Host-portal=; Max-Age=0")], "x"))

    def test_ticket_url_must_be_the_target_origins_ticket(self) -> None:
        host = "web--bench-gw.bench.localhost"
        good = f"https://{host}:8443/.portal/ticket?t=TICKET&next=%2F"
        self.assertEqual(ticket_url(good, host, 8443), "/.portal/ticket?t=TICKET&next=%2F")
        for bad in (
            None,
            f"http://{host}:8443/.portal/ticket?t=T",  # not HTTPS
            "https://other--bench-gw.bench.localhost:8443/.portal/ticket?t=T",
            f"https://{host}:9999/.portal/ticket?t=T",
            f"https://{host}:8443/somewhere?t=T",
            f"https://{host}:8443/.portal/ticket",  # no ticket
        ):
            with self.assertRaises(BenchError, msg=bad):
                ticket_url(bad, host, 8443)


class PortalReportTests(SynchronousTestCase):
    def summary(self, bulk: float, cpu: float, ttfb: float) -> dict[str, dict[str, Summary]]:
        return {
            "stunnel": {
                "bulk_mb_s": one(700.0),
                "bulk_cpu_s_per_gib": one(2.0),
                "ttfb_p50_ms": one(1.5),
                "rtt_p50_ms": one(0.1),
            },
            "ours-portal": {
                "bulk_mb_s": one(bulk),
                "bulk_cpu_s_per_gib": one(cpu),
                "ttfb_p50_ms": one(ttfb),
                "rtt_p50_ms": one(0.5),
            },
        }

    def test_the_portal_column_has_its_ratio_to_stunnel(self) -> None:
        columns = [
            Column("stunnel", "stunnel", "ok"),
            Column("ours-portal", "ours, portal (HTTPS)", "ok", ("ttfb", "rtt", "bulk")),
        ]
        table = render_table(self.summary(350.0, 3.0, 3.0), columns)
        lines = table.splitlines()
        self.assertIn("| stunnel | ours, portal (HTTPS) | ours-portal/stunnel |", lines[0])
        bulk = next(line for line in lines if line.startswith("| One-stream bulk"))
        self.assertTrue(bulk.endswith("| 700 | 350 | 0.50x |"), bulk)
        rtt = next(line for line in lines if line.startswith("| 1 KiB round trip p50"))
        self.assertTrue(rtt.endswith("| 5.00x |"), rtt)
        # A metric the portal path does not take: "-" in its column and in the ratio.
        conc = next(line for line in lines if line.startswith("| Round trips/s"))
        self.assertTrue(conc.endswith("| - | - |"), conc)
        self.assertNotIn("ours/stunnel", table)  # no "ours" column in this run

    def test_issue_20_targets_with_verdicts(self) -> None:
        verdicts = evaluate_targets(self.summary(700.0, 3.0, 3.3), PORTAL_TARGETS, "ours-portal")
        by_key = {v.target: v for v in verdicts}
        self.assertEqual(len(verdicts), 3)
        self.assertTrue(by_key["bulk >= stunnel's"].met)  # equal meets it
        self.assertTrue(by_key["CPU-s/GiB <= 1.5x stunnel's"].met)  # 3.0 <= 3.0
        ttfb = by_key["new connection TTFB p50 <= 1.5x stunnel's"]
        self.assertFalse(ttfb.met)
        self.assertAlmostEqual(ttfb.limit or 0, 2.25)
        text = render_targets(verdicts, "Target (issue 20, browser path)", "ours-portal")
        self.assertIn("| Target (issue 20, browser path) | ours-portal | limit | met |", text)
        self.assertIn("| 3.30 ms | 2.25 ms | no (1.47x the limit) |", text)
        missed = evaluate_targets(self.summary(350.0, 3.1, 1.0), PORTAL_TARGETS, "ours-portal")
        self.assertEqual([v.met for v in missed], [False, False, True])

    def test_without_stunnel_there_is_no_reference(self) -> None:
        summary = self.summary(700.0, 3.0, 3.0)
        del summary["stunnel"]
        verdicts = evaluate_targets(summary, PORTAL_TARGETS, "ours-portal")
        self.assertEqual([v.met for v in verdicts], [None, None, None])


class LoadgenTlsTests(SynchronousTestCase):
    """The load generator's HTTP modes over TLS, through a TLS server (Python's ssl) that
    passes each connection's bytes to and from bench/target.c."""

    def setUp(self) -> None:
        assert shutil.which("cc") is not None, "no C compiler (cc): the test command installs gcc"
        self.dir = Path(tempfile.mkdtemp(prefix="bench-tls-test-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.loadgen, target = build_tools(self.dir / "build")
        self.target = subprocess.Popen(
            [str(target)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        self.addCleanup(self._stop_target)
        assert self.target.stdout is not None
        self.target_port = int(self.target.stdout.readline())
        self.tls = keys.make_tls(self.dir / "pki")  # a server certificate for localhost
        self.port = self._tls_front()

    def _stop_target(self) -> None:
        self.target.kill()
        self.target.wait(timeout=TIMEOUT)
        assert self.target.stdout is not None
        self.target.stdout.close()

    def _tls_front(self) -> int:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.tls.server_cert), str(self.tls.server_key))
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        self.seen: list[bytes] = []

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        def first_and_pipe(conn: socket.socket) -> None:
            try:
                tls = ctx.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                conn.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            first = tls.recv(65536)
            self.seen.append(first)
            upstream.sendall(first)
            back = threading.Thread(target=pipe, args=(upstream, tls), daemon=True)
            back.start()
            pipe(tls, upstream)
            back.join(TIMEOUT)
            tls.close()
            upstream.close()

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=first_and_pipe, args=(conn,), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()
        port: int = listener.getsockname()[1]
        return port

    def run_loadgen(self, *args: str, ca: Path | None = None, host: str = "localhost") -> Any:
        argv = [str(self.loadgen), "--tls", str(ca or self.tls.ca), "--host", host]
        argv += ["--cookie", "__Host-portal-pass=t0ken", args[0], "127.0.0.1", str(self.port)]
        return subprocess.run(
            argv + list(args[1:]), capture_output=True, text=True, timeout=TIMEOUT, check=False
        )

    def test_http_modes_over_tls_verified_with_host_and_cookie(self) -> None:
        for mode, args in (
            ("http-rtt", ("60", "1024")),
            ("http-get", ("60", "1024")),
            ("http-bulk", ("20000000",)),
            ("http-ttfb", ("20",)),
        ):
            done = self.run_loadgen(mode, *args)
            self.assertEqual(done.returncode, 0, done.stderr)
            result = json.loads(done.stdout)
            self.assertEqual(result["mode"], mode)
            self.assertIn(result["tls"]["version"], ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(result["tls"]["handshakes"], 20)
        self.assertGreater(result["tls"]["resumed"], 0)  # new connections resume, as browsers do
        first = self.seen[0]
        self.assertIn(b"\r\nHost: localhost\r\n", first)
        self.assertIn(b"\r\nCookie: __Host-portal-pass=t0ken\r\n", first)

    def test_a_certificate_for_another_name_or_from_another_ca_is_refused(self) -> None:
        done = self.run_loadgen("http-get", "1", "4", host="web--gw.example.com")
        self.assertEqual(done.returncode, 1, done.stdout)
        self.assertIn("does not verify for web--gw.example.com", done.stderr)
        other = keys.make_tls(self.dir / "other")
        done = self.run_loadgen("http-get", "1", "4", ca=other.ca)
        self.assertEqual(done.returncode, 1, done.stdout)
        self.assertIn("does not verify", done.stderr)
