"""Prometheus' own tools for the tests: ``promtool`` and a real server on loopback.

Debian's ``prometheus`` package brings both (the test command installs it). The server runs in a
throw-away directory with its own config, storage and a free loopback port; `query` asks its
HTTP API the way a dashboard or an alert would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attrs import frozen

from gateway.demo.stack import Process, answers, free_port

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
"""The alerting rules shipped in the repository (deploy/prometheus)."""


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(f"/usr/bin/{name}")
    assert found is not None, f"no {name}: the test command (scripts/test.sh) installs prometheus"
    return found


def promtool(*args: str, stdin: bytes | None = None, timeout: float = 60) -> tuple[int, str]:
    """Run ``promtool ARGS``; its exit status and everything it printed."""
    done = subprocess.run(
        [tool("promtool"), *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


@frozen
class ScrapeJob:
    name: str
    address: str
    """host:port serving /metrics"""


def prometheus_yml(jobs: Sequence[ScrapeJob], rule_files: Sequence[Path] = ()) -> str:
    """A config scraping each job every second (JSON is YAML: no YAML library needed)."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": job.name, "static_configs": [{"targets": [job.address]}]} for job in jobs
        ],
    }
    return json.dumps(config, indent=2)


@frozen
class PrometheusServer:
    proc: Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` gives now: ``[{"metric": {...}, "value": [t, "v"]}]``."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for(self, expr: str, *, deadline: float = 30.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns a series (a comparison filters until it holds)."""
        end = time.monotonic() + deadline
        while True:
            try:
                found = self.query(expr)
            except OSError:
                found = []
            if found:
                return found
            if self.proc.popen.poll() is not None:
                raise AssertionError(f"prometheus exited before {expr}:\n{self.proc.tail()}")
            if time.monotonic() > end:
                raise AssertionError(
                    f"prometheus did not return {expr} within {deadline:g}s\n{self.proc.tail()}"
                )
            time.sleep(0.25)


@contextmanager
def prometheus_server(
    workdir: Path, jobs: Sequence[ScrapeJob], rule_files: Sequence[Path] = ()
) -> Iterator[PrometheusServer]:
    """A real Prometheus on 127.0.0.1 scraping ``jobs``; stopped (SIGTERM, then waited for) on
    exit, its storage left in ``workdir`` with the rest of the test's files."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(prometheus_yml(jobs, rule_files))
    port = free_port()
    proc = Process.start(
        "prometheus",
        [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        log=workdir / "prometheus.log",
        cwd=workdir,
    )
    server = PrometheusServer(proc, port)
    try:
        end = time.monotonic() + 30
        while not answers(port):
            if proc.popen.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"prometheus did not start:\n{proc.tail()}")
            time.sleep(0.1)
        yield server
    finally:
        proc.stop()
