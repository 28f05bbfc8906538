"""Two gateways with one id (one certificate on two machines, a cloned edge PC) do not fight.

The gateway whose tunnel answers its heartbeat keeps its place: a download through it is not cut,
the second is refused and told why (and says so in its log), and the relay counts it.  Once the
first goes silent (SIGSTOP: its socket stays open, nothing answers), the relay's heartbeat drops
it and the second takes over within the heartbeat's bounds.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.demo.stack import url
from tests.helpers.clients import download_and_verify, expected
from tests.helpers.processes import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    RECONNECT_CAP,
    Stack,
    free_port,
    fresh_stack,
    http_get,
    start,
    wait_until,
)

pytestmark = pytest.mark.e2e

SIZE = 96 << 20
CHUNK = 256 << 10


@pytest.fixture
def stack() -> Iterator[Stack]:
    with fresh_stack() as s:
        yield s


def slow_download(port: int, size: int, progress: dict[str, Any]) -> None:
    """GET /download at about 10 MB/s, checking every byte; records how far it got, or why not."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/download?size={size}")
        response = conn.getresponse()
        offset = 0
        while offset < size:
            chunk = response.read(CHUNK)
            if not chunk:
                break
            if chunk != expected(offset, len(chunk)):
                raise AssertionError(f"wrong bytes at {offset}")
            offset += len(chunk)
            progress["bytes"] = offset
            time.sleep(0.02)
        progress["done"] = offset
    except Exception as e:  # reported by the test
        progress["error"] = repr(e)
    finally:
        conn.close()


def status_of(port: int) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = json.loads(http_get(url(port, "/api/status")))
    except OSError:
        return None
    return found


def test_the_gateway_that_answers_keeps_its_id_and_a_silent_one_is_replaced(
    stack: Stack,
) -> None:
    s = stack
    s.start_processor()
    s.start_relay()
    first = s.start_gateway()
    s.start_connect()
    connects = s.status()["tunnel"]["connects"]
    progress: dict[str, Any] = {}
    download = threading.Thread(
        target=slow_download, args=(s.ports["forward"], SIZE, progress), daemon=True
    )
    download.start()
    wait_until("the download to start", lambda: progress.get("bytes", 0) > 4 << 20)

    # The same certificate on a second machine: its own status and metrics ports and its own
    # state directory (mode, audit trail, control socket).
    config = s.layout.gateway_config.read_text()
    second_status = free_port()
    for key, port in (("status", second_status), ("gw_metrics", free_port())):
        config = config.replace(f":{s.ports[key]}", f":{port}")
    state = str(s.layout.gateway_state)
    assert state in config
    config = config.replace(state, str(s.workdir / "second-state"))
    (s.workdir / "second.toml").write_text(config)
    second = start("second-gateway", ["run", "-c", "second.toml"], s.workdir)
    s.procs["second-gateway"] = second
    relay = s.procs["relay"]
    wait_until(
        "the relay to refuse the second gateway",
        lambda: "refused: a gateway with this id is already connected from" in relay.text(),
        proc=second,
    )
    wait_until(
        "the second gateway to log why",
        lambda: "is this certificate installed on two machines?" in second.text(),
        proc=second,
    )
    assert (s.relay_metric('relay_gateway_id_conflicts_total{result="refused"}') or 0) >= 1

    # The first was never disturbed: the download completes, byte for byte.
    download.join(120)
    assert "error" not in progress, progress
    assert progress.get("done") == SIZE, progress
    assert s.status()["tunnel"]["connects"] == connects
    assert s.status()["tunnel"]["state"] == "up"
    assert s.relay_metric("relay_gateways_connected") == 1.0
    assert "replacing its previous tunnel" not in relay.text()
    refusals = s.relay_metric('relay_gateway_id_conflicts_total{result="refused"}')
    print(f"\nthe second gateway was refused {refusals:g} times while the first answered")

    # The first goes silent: the relay's heartbeat drops it, the second takes its place.
    first.send(signal.SIGSTOP)
    try:
        silenced = time.monotonic()
        bound = HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT + RECONNECT_CAP + 5
        wait_until(
            "the second gateway to take over",
            lambda: (
                "stopped answering and was dropped" in relay.text()
                and (status_of(second_status) or {}).get("tunnel", {}).get("state") == "up"
                and s.relay_metric("relay_gateways_connected") == 1.0
            ),
            deadline=bound + 10,
            proc=second,
        )
        took = time.monotonic() - silenced
        print(f"the second took over {took:.1f} s after the first went silent")
        assert took <= bound, f"took {took:.1f} s, more than {bound} s"
        # Dropped by the heartbeat, never displaced while it answered.
        assert "has not answered for" in relay.text()
        assert download_and_verify(s.ports["forward"], 1 << 20, timeout=30) == 1 << 20
    finally:
        first.send(signal.SIGKILL)
    for proc in (relay, second):
        assert "Traceback" not in proc.text(), proc.tail()
