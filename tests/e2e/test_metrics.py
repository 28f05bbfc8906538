"""Metrics end to end: the real gateway, relay, processor and ``gateway connect`` processes, an
engineer in a session made with a code, bytes moving, and Prometheus' own tools reading it all.

* both ``/metrics`` are scraped while a download runs and pass ``promtool check metrics``, keep
  the contract (every brief name, its type, no unbounded label) and count the consent events;
* a real Prometheus server (Debian's ``prometheus``) on loopback scrapes both every second,
  loads the shipped alert rules, and its query API answers ``gateway_tunnel_up == 1`` and the
  live session count;
* an engineer's request waiting for the plant shows as pending, and its denial as a decision;
* the gateway's counters survive the tunnel's reconnect after a relay restart.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from gateway.cli.control import CONTROL_SOCKET
from gateway.promtext import metric_value, parse
from tests.helpers.clients import download_and_verify
from tests.helpers.consent import add_engineer, control_json, finished
from tests.helpers.metricscontract import GATEWAY, RELAY, contract_problems, declared_types
from tests.helpers.processes import Stack, fresh_stack, http_get, wait_until
from tests.helpers.prometheus import RULES_DIR, ScrapeJob, prometheus_server, promtool

pytestmark = pytest.mark.e2e

CHUNK = 64 * 1024
PACE = 0.02
"""The slow engineer reads 64 KiB every 20 ms (about 3 MiB/s): bytes keep moving for as long as
the tests run, without the download taking a core of the two this machine shares."""
BYTES_FROM = 'gateway_stream_bytes_total{direction="from_target"}'


class SlowDownload:
    """``GET /download`` of far more than the tests read, read at a walking pace in a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received = 0
        self.error: str | None = None
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-download", daemon=True)

    def start(self) -> SlowDownload:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(b"GET /download?size=274877906944 HTTP/1.1\r\nHost: p\r\n\r\n")
                while not self._quit.wait(PACE):
                    data = sock.recv(CHUNK)
                    if not data:
                        self.error = "the download ended"
                        return
                    self.received += len(data)
        except OSError as e:
            self.error = str(e)

    def stop(self) -> None:
        self._quit.set()
        self._thread.join(5)


def scrape(stack: Stack, which: str) -> str:
    return http_get(stack.url(which, "/metrics")).decode()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """An attended gateway with one engineer inside a session from a code; a wrong code and a
    bad token tried before, so that the failure counters have something to count."""
    with fresh_stack() as s:
        s.write_configs(mode="attended")
        s.start_processor()
        s.start_relay()
        s.start_gateway()
        control_socket = s.layout.gateway_state / CONTROL_SOCKET
        wait_until("the control socket", control_socket.exists, proc=s.procs["gateway"])
        code = str(control_json(s, "code", "--minutes", "15")["code"])
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        for name, extra, token in (
            ("wrong-code", ("--code", wrong), None),
            ("bad-token", ("--code", code), "not-a-token"),
        ):
            tried = s.start_connect(
                name, port_key="forward2", extra=extra, token=token, wait_listening=False
            )
            exit_code, lines = finished(tried)
            assert exit_code != 0, lines
        s.start_connect(extra=("--code", code))
        yield s


@pytest.fixture(scope="module")
def download(stack: Stack) -> Iterator[SlowDownload]:
    reader = SlowDownload(stack.ports["forward"]).start()
    try:
        wait_until("the download to flow", lambda: reader.received >= 1 << 20 or bool(reader.error))
        assert reader.error is None, reader.error
        yield reader
    finally:
        reader.stop()


def test_both_scrapes_pass_promtool_and_keep_the_contract_while_bytes_move(
    stack: Stack, download: SlowDownload
) -> None:
    assert download_and_verify(stack.ports["forward"], 8 << 20) == 8 << 20  # a finished stream
    first = scrape(stack, "gw_metrics")
    wait_until(
        "the gateway's byte counter to grow during the download",
        lambda: (
            (metric_value(scrape(stack, "gw_metrics"), BYTES_FROM) or 0)
            > (metric_value(first, BYTES_FROM) or 0) + CHUNK
        ),
    )
    assert download.error is None, download.error
    texts = {"gateway": scrape(stack, "gw_metrics"), "relay": scrape(stack, "relay_metrics")}
    for name, text in texts.items():
        status, output = promtool("check", "metrics", stdin=text.encode())
        assert status == 0, f"promtool check metrics on the {name}'s scrape:\n{output}"
        assert output.strip() == "", output  # not even a lint warning
    assert contract_problems(texts["gateway"], GATEWAY) == []
    assert contract_problems(texts["relay"], RELAY) == []

    gateway = texts["gateway"]
    wanted = {
        "gateway_tunnel_up": 1,
        "gateway_sessions_active": 1,
        'gateway_access_mode{mode="attended"}': 1,
        'gateway_access_mode{mode="unattended"}': 0,
        "gateway_session_requests_pending": 0,
        "gateway_session_codes_created_total": 1,
        "gateway_session_codes_used_total": 1,
        'gateway_session_codes_failed_total{reason="wrong"}': 1,
        'gateway_session_decisions_total{decision="code"}': 1,
        'gateway_session_decisions_total{decision="code_wrong"}': 1,
        "gateway_audit_write_failures_total": 0,
    }
    assert {k: metric_value(gateway, k) for k in wanted} == wanted
    assert (metric_value(gateway, "gateway_streams_active") or 0) >= 1
    assert (metric_value(gateway, 'gateway_streams_total{result="opened"}') or 0) >= 2
    assert (metric_value(gateway, BYTES_FROM) or 0) >= (8 << 20) + (1 << 20)
    expiry = metric_value(gateway, "gateway_certificate_expiry_timestamp_seconds")
    assert expiry is not None and expiry > time.time()
    assert (metric_value(gateway, "process_resident_memory_bytes") or 0) > 0
    assert metric_value(gateway, "python_info") == 1

    relay = texts["relay"]
    assert metric_value(relay, "relay_gateways_connected") == 1
    assert metric_value(relay, "relay_sessions_active") == 1
    assert (metric_value(relay, "relay_streams_active") or 0) >= 1
    assert (metric_value(relay, 'relay_stream_bytes_total{direction="from_gateway"}') or 0) >= (
        8 << 20
    )
    assert metric_value(relay, 'relay_auth_failures_total{kind="engineer_token"}') == 1
    assert metric_value(relay, "python_info") == 1


def test_a_real_prometheus_scrapes_both_and_answers_tunnel_up_and_the_session_count(
    stack: Stack, download: SlowDownload
) -> None:
    jobs = [
        ScrapeJob("gateway", f"127.0.0.1:{stack.ports['gw_metrics']}"),
        ScrapeJob("relay", f"127.0.0.1:{stack.ports['relay_metrics']}"),
    ]
    rules = sorted(RULES_DIR.glob("*.rules.yml"))
    with prometheus_server(stack.workdir / "prometheus", jobs, rules) as prometheus:
        [up] = prometheus.wait_for("gateway_tunnel_up == 1")
        assert up["metric"]["job"] == "gateway", up
        assert up["metric"]["instance"] == jobs[0].address, up
        sessions = len(stack.status()["sessions"])
        assert sessions == 1
        [live] = prometheus.wait_for(f"gateway_sessions_active == {sessions}")
        assert live["value"][1] == "1"
        prometheus.wait_for(f"relay_sessions_active == {sessions}")
        prometheus.wait_for("relay_gateways_connected == 1")
        prometheus.wait_for('up{job="relay"} == 1')
        # Bytes keep coming while Prometheus watches: the rate a dashboard would draw.
        prometheus.wait_for('rate(gateway_stream_bytes_total{direction="from_target"}[5s]) > 0')

        # The shipped rules load into a real server, are evaluated, and none fires here.
        def evaluated() -> bool:
            groups = prometheus.api("rules")["groups"]
            return {g["name"] for g in groups} == {"gateway", "relay"} and all(
                r["health"] == "ok" for g in groups for r in g["rules"]
            )

        wait_until("the rules to be evaluated", evaluated)
        firing = prometheus.query('ALERTS{alertstate="firing"}')
        assert firing == [], firing
        assert prometheus.proc.stop() == 0, prometheus.proc.tail()  # a clean stop
    assert download.error is None, download.error


def test_a_waiting_request_and_its_denial_show_in_the_scrape(stack: Stack) -> None:
    def gateway(name: str) -> float | None:
        return metric_value(scrape(stack, "gw_metrics"), name)

    denied_before = gateway('gateway_session_decisions_total{decision="denied"}')
    assert denied_before == 0
    token = add_engineer(stack, "ed", stack.gateway_id)
    asking = stack.start_connect(
        "asking",
        token=token,
        port_key="forward3",
        extra=("--reason", "ticket 4711: camera calibration"),
        wait_listening=False,
    )
    wait_until(
        "the request to be counted as waiting",
        lambda: gateway("gateway_session_requests_pending") == 1,
        proc=asking,
    )
    [request] = control_json(stack, "requests")
    control_json(stack, "deny", request["id"], "--reason", "not now")
    exit_code, lines = finished(asking)
    assert exit_code == 1, lines
    assert gateway("gateway_session_requests_pending") == 0
    assert gateway('gateway_session_decisions_total{decision="denied"}') == 1
    assert gateway("gateway_sessions_active") == 1  # erin's session carries on


def test_the_gateways_counters_survive_a_reconnect_after_a_relay_restart(
    stack: Stack, download: SlowDownload
) -> None:
    """Run last: the relay's restart ends the module's download and session stream."""
    before = scrape(stack, "gw_metrics")
    stack.procs["relay"].stop()
    wait_until(
        "the gateway to see the tunnel down",
        lambda: metric_value(scrape(stack, "gw_metrics"), "gateway_tunnel_up") == 0,
    )
    stack.start_relay()
    stack.wait_tunnel_up()
    after = scrape(stack, "gw_metrics")
    types = declared_types(after)
    counters = {
        s.key: s.value
        for s in parse(before)
        if types.get(s.name) == "counter" and not s.name.startswith("process_")
    }
    assert counters, before
    now = {s.key: s.value for s in parse(after)}
    went_back = {k: (v, now.get(k)) for k, v in counters.items() if (now.get(k) or 0) < v}
    assert went_back == {}
    assert metric_value(after, "gateway_tunnel_connects_total") == (
        (metric_value(before, "gateway_tunnel_connects_total") or 0) + 1
    )
    assert (metric_value(after, BYTES_FROM) or 0) >= (metric_value(before, BYTES_FROM) or 0) > 0
