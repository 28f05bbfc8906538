# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The benchmark's HTTP/1.1 target and load generator modes (bench/target.c, bench/loadgen.c),
compiled and run against each other, and the load generator failing loudly on a wrong answer."""

import json
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from bench.cli import build_tools
from bench.paths import http_probe
from bench.procs import echo_probe

TIMEOUT = 20


class HttpToolsTests(SynchronousTestCase):
    def setUp(self) -> None:
        # The test command installs gcc: without it these tests fail rather than skip.
        assert shutil.which("cc") is not None, "no C compiler (cc): the test command installs gcc"
        self.dir = Path(tempfile.mkdtemp(prefix="bench-http-test-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.loadgen, target = build_tools(self.dir)
        self.target = subprocess.Popen(
            [str(target)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        self.addCleanup(self._stop_target)
        assert self.target.stdout is not None
        self.port = int(self.target.stdout.readline())

    def _stop_target(self) -> None:
        self.target.kill()
        self.target.wait(timeout=TIMEOUT)
        assert self.target.stdout is not None
        self.target.stdout.close()

    def loadgen_run(self, port: int, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.loadgen), args[0], "127.0.0.1", str(port), *args[1:]],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def test_round_trips_and_bulk_on_one_keep_alive_connection(self) -> None:
        for mode, args, key in (
            ("http-rtt", ("100", "1024"), "latency"),
            ("http-get", ("100", "1024"), "latency"),
            ("http-rtt", ("3", "300000"), "latency"),  # a body larger than one read
            ("http-bulk", ("10000000",), "mb_per_s"),
        ):
            done = self.loadgen_run(self.port, mode, *args)
            self.assertEqual(done.returncode, 0, done.stderr)
            result = json.loads(done.stdout)
            self.assertEqual(result["mode"], mode)
            self.assertIn(key, result)
        raw = self.loadgen_run(self.port, "rtt", "20", "1024")  # the raw protocol is unchanged
        self.assertEqual(json.loads(raw.stdout)["mode"], "rtt", raw.stderr)

    def test_probes(self) -> None:
        self.assertTrue(http_probe(self.port))
        self.assertTrue(echo_probe(self.port))  # the raw protocol is unchanged

    def test_target_answers_anything_else_with_404_and_keeps_the_connection(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as s:
            s.sendall(
                b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\nGET /bytes/3 HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            got = b""
            while not got.endswith(b"\x00\x01\x02"):
                chunk = s.recv(4096)
                self.assertTrue(chunk, got)
                got += chunk
        self.assertTrue(got.startswith(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
        self.assertIn(b"HTTP/1.1 200 OK\r\n", got)
        self.assertIn(b"Content-Length: 3\r\n\r\n", got)

    def fake_server(self, answer: bytes, hang_up: bool = False) -> int:
        """A server that reads one request head and sends `answer`, then hangs up (`hang_up`)
        after the next request head (unanswered), or when the load generator hangs up."""
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        listener.settimeout(TIMEOUT)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(TIMEOUT)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                conn.sendall(answer)
                head = head.split(b"\r\n\r\n", 1)[1]
                while not hang_up and b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)  # the next request head, or the end
                    if not chunk:
                        return
                    head += chunk

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        self.addCleanup(thread.join, TIMEOUT)
        port: int = listener.getsockname()[1]
        return port

    def assert_fails(self, answer: bytes, message: str, hang_up: bool = False) -> None:
        done = self.loadgen_run(self.fake_server(answer, hang_up), "http-get", "1", "4")
        self.assertEqual(done.returncode, 1, done.stdout)
        self.assertIn(message, done.stderr)

    def test_the_load_generator_fails_loudly_on_any_difference(self) -> None:
        ok_head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"
        self.assert_fails(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope", "status")
        self.assert_fails(ok_head + b"\x00\x01\x02\x04", "wrong byte")
        self.assert_fails(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "Content-Length 5")
        self.assert_fails(b"HTTP/1.1 200 OK\r\n\r\n", "without Content-Length")
        self.assert_fails(ok_head + b"\x00\x01", "connection closed after 2 of 4", hang_up=True)
        # A right answer passes; the next request (the warm-up's second) gets none.
        self.assert_fails(ok_head + b"\x00\x01\x02\x03", "connection closed before an answer")
