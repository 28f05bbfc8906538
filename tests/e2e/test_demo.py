"""``gateway demo`` end to end: the real command, its real processes, real bytes on loopback.

These tests hold the demo to its contract (BRIEF section 3): demo.json written last with every
promised key, every URL in it answering, the printed connect command working as pasted, and a
stop signal leaving no process behind.  They read nothing but demo.json and the demo's output,
as a user or a script would.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import pytest
from attrs import frozen

from gateway.demo.stack import free_port
from gateway.promtext import metric_value as metric

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
CONTRACT_KEYS = {
    "workdir",
    "gateway_id",
    "status_url",
    "metrics_url",
    "relay_metrics_url",
    "processor_url",
    "forward_url",
    "relay_address",
    "relay_gateway_address",
    "relay_ca",
    "engineer_token",
    "connect_command",
    "targets",
    "config",
    "mode",
    "control",
}
# Loopback must never be sent to an http_proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
FETCH_ERRORS = (OSError, http.client.HTTPException)


@frozen
class Demo:
    """A running ``gateway demo`` and what it told us."""

    process: subprocess.Popen[bytes]
    workdir: Path
    output: Path
    info: dict[str, Any]


def get(url: str, timeout: float = 10.0) -> tuple[int, str, bytes]:
    with OPENER.open(url, timeout=timeout) as response:
        return int(response.status), str(response.headers.get("Content-Type", "")), response.read()


def pattern(size: int) -> bytes:
    """What ``/download?size=N`` must send: byte i is ``i % 251``."""
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def start_demo(
    workdir: Path, *extra: str, new_group: bool = False
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``gateway demo``; its output goes to a file (an unread PIPE would block it).

    The file sits next to ``workdir``, not in it: the demo refuses a folder with foreign files.
    """
    output = workdir.with_name(workdir.name + ".out")
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--workdir", str(workdir), *extra],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0 if new_group else None,
        )
    return process, output


def wait_for_demo(process: subprocess.Popen[bytes], workdir: Path, output: Path) -> Demo:
    deadline = time.monotonic() + READY_TIMEOUT
    while not (workdir / "demo.json").exists():  # written atomically, last
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"demo not ready:\n{output.read_text(errors='replace')}")
        time.sleep(0.05)
    info = json.loads((workdir / "demo.json").read_text())
    return Demo(process, workdir, output, info)


def process_start(pid: int) -> tuple[int, int] | None:
    """``(ppid, start time)`` of a live (non-zombie) process, None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def children(pid: int) -> dict[int, int]:
    """``{child pid: start time}``; the start time tells a reused pid from the same process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = process_start(int(entry.name))
            if info is not None and info[0] == pid:
                found[int(entry.name)] = info[1]
    return found


def survivors(recorded: dict[int, int]) -> list[int]:
    return [pid for pid, start in recorded.items() if (process_start(pid) or (0, None))[1] == start]


def stop(
    process: subprocess.Popen[bytes], leftovers: dict[int, int], timeout: float = STOP_TIMEOUT
) -> None:
    """Cleanup that always works: SIGTERM, then SIGKILL the demo and anything it left."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in survivors(leftovers):
        os.kill(pid, signal.SIGKILL)


def run_and_fetch(
    argv: list[str], url: str, log: IO[bytes], env: Mapping[str, str] | None = None
) -> bytes:
    """Start ``argv`` (an engineer client) and GET ``url`` through it once it forwards."""
    client = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if client.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{shlex.join(argv)} did not forward; see {log.name}")
            try:
                status, _, body = get(url)
                if status == 200:
                    return body
            except FETCH_ERRORS:
                pass
            time.sleep(0.05)
    finally:
        stop(client, {}, timeout=10)  # this test is about forwarding, not about stopping


def control_argv(info: dict[str, Any], program: str, *words: str) -> list[str]:
    """demo.json's ``control`` line for ``program`` with ``words`` in the place of ``...``."""
    line = shlex.split(info["control"][program])
    at = line.index("...")
    return this_gateway([*line[:at], *words, *line[at + 1 :]])


def run_control(
    info: dict[str, Any], program: str, *words: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        control_argv(info, program, *words), capture_output=True, text=True, timeout=60
    )


def printed(output: Path, *having: str) -> list[str]:
    """The one printed line holding every one of ``having``, as shell words."""
    lines = [line.strip() for line in output.read_text().splitlines()]
    found = [line for line in lines if all(h in line for h in having)]
    assert len(found) == 1, (having, found)
    return shlex.split(found[0])


def this_gateway(argv: list[str]) -> list[str]:
    if argv[0] == "gateway":  # on PATH as printed; make sure it is this installation's
        argv[0] = shutil.which("gateway") or "gateway"
    return argv


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A work dir that does not exist yet (the demo creates it), in a folder removed after."""
    base = Path(tempfile.mkdtemp(prefix="gateway-demo-test-"))
    yield base / "work"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    """One unattended demo shared by the read-only tests: starting one takes seconds."""
    base = Path(tempfile.mkdtemp(prefix="gateway-demo-test-"))
    process, output = start_demo(base / "work")
    kids: dict[int, int] = {}
    try:
        running = wait_for_demo(process, base / "work", output)
        kids = children(process.pid)
        yield running
    finally:
        stop(process, kids)
        shutil.rmtree(base, ignore_errors=True)


def test_demo_json_keeps_the_contract(demo: Demo) -> None:
    info = demo.info
    assert set(info) >= CONTRACT_KEYS, CONTRACT_KEYS - set(info)
    assert info["workdir"] == str(demo.workdir)
    assert info["gateway_id"] == "demo-gateway"
    assert set(info["targets"]) == {"web"}
    assert info["processor_url"] == f"http://{info['targets']['web']}/"
    assert Path(info["relay_ca"]).is_absolute() and Path(info["relay_ca"]).is_file()
    for name in ("gateway", "relay"):
        config = Path(info["config"][name])
        assert config.is_absolute() and config.is_file()
        assert config.read_text().startswith("#")  # commented, for a user to read
    command = shlex.split(info["connect_command"])
    assert command[command.index("--token") + 1] == info["engineer_token"]
    assert command[command.index("--relay") + 1] == info["relay_address"]
    assert command[command.index("--listen") + 1] == info["forward_url"][7:-1]
    assert "Press Ctrl-C to stop" in demo.output.read_text()
    assert (info["mode"], info["request"]) == ("unattended", None)
    for program in ("gateway", "relay"):
        words = shlex.split(info["control"][program])
        assert words.count("...") == 1, words
        assert words[-2:] == ["-c", info["config"][program]], words


def test_the_control_lines_reach_the_demos_daemons(demo: Demo) -> None:
    access = run_control(demo.info, "gateway", "access")
    assert access.returncode == 0, access.stderr
    assert access.stdout.startswith("remote access is unattended")
    desk = run_control(demo.info, "relay", "sessions", "--json")
    assert desk.returncode == 0, desk.stderr
    [gateway] = json.loads(desk.stdout)["gateways"]
    assert (gateway["id"], gateway["mode"]) == ("demo-gateway", "unattended")


def test_forward_url_serves_the_processor_page(demo: Demo) -> None:
    status, content_type, forwarded = get(demo.info["forward_url"])
    assert status == 200 and content_type.startswith("text/html")
    assert b"/ws" in forwarded
    assert forwarded == get(demo.info["processor_url"])[2]


def test_a_download_through_the_tunnel_is_byte_exact(demo: Demo) -> None:
    size = 1024 * 1024
    status, _, body = get(f"{demo.info['forward_url']}download?size={size}", timeout=30)
    assert status == 200
    assert len(body) == size
    assert body == pattern(size)


def test_status_reports_the_tunnel_up(demo: Demo) -> None:
    status, content_type, body = get(demo.info["status_url"] + "api/status")
    assert status == 200 and "json" in content_type
    report = json.loads(body)
    assert report["id"] == "demo-gateway"
    assert report["tunnel"]["state"] == "up"
    assert report["access"]["mode"] == "unattended"


def test_metrics_are_prometheus_text(demo: Demo) -> None:
    for url, name in [
        (demo.info["metrics_url"], "gateway_tunnel_up"),
        (demo.info["relay_metrics_url"], "relay_gateways_connected"),
    ]:
        status, content_type, body = get(url)
        assert status == 200 and content_type.startswith("text/plain"), url
        text = body.decode()
        assert f"# TYPE {name} gauge" in text, url
        assert metric(text, name) == 1.0, text


def test_the_printed_connect_command_works_as_given(demo: Demo) -> None:
    argv = shlex.split(demo.info["connect_command"])
    port = free_port()
    argv[argv.index("--listen") + 1] = f"127.0.0.1:{port}"
    if argv[0] == "gateway":  # on PATH as printed; make sure it is this installation's
        argv[0] = shutil.which("gateway") or "gateway"
    with open(demo.workdir / "logs" / "test-connect.log", "wb") as log:
        body = run_and_fetch(argv, f"http://127.0.0.1:{port}/", log)
    assert body == get(demo.info["processor_url"])[2]


def printed_client(output: str, group: bool = False) -> tuple[dict[str, str], list[str]]:
    """The summary's "another engineer client" line (``group``: its ``--group`` line), read as
    a shell would: ``VAR=value`` words before the command are its environment."""
    lines = [line.strip() for line in output.splitlines()]
    [line] = [
        line for line in lines if line.startswith("GATEWAY_TOKEN=") and ("--group" in line) == group
    ]
    words = shlex.split(line)
    env = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words


def test_the_printed_group_command_forwards_each_member_on_its_own_port(demo: Demo) -> None:
    """demo.json's ``connect_group_command``, and the summary's line for it: the target group
    ``pickit`` at 127.0.0.2, its page there naming its WebSocket on the other member's port."""
    info = demo.info
    url = info["connect_group_url"]
    assert url.startswith("http://127.0.0.2:"), info
    argv = this_gateway(shlex.split(info["connect_group_command"]))
    assert argv[argv.index("--group") + 1] == "pickit", argv
    env, printed_argv = printed_client(demo.output.read_text(), group=True)
    assert env == {"GATEWAY_TOKEN": info["engineer_token"]}
    assert "--token" not in printed_argv and "--group" in printed_argv, printed_argv
    with open(demo.workdir / "logs" / "test-connect-group.log", "wb") as log:
        body = run_and_fetch(argv, url, log)
    assert b"demo-processor" in body.lower() or b"<html" in body.lower(), body[:200]
    ws_port = body.split(b'var wsPort = "')[1].split(b'"')[0].decode()
    assert ws_port.isdigit() and f":{ws_port}/" not in url, ws_port


def test_the_printed_second_client_works_as_printed(demo: Demo) -> None:
    env, argv = printed_client(demo.output.read_text())
    assert env == {"GATEWAY_TOKEN": demo.info["engineer_token"]}
    assert "--token" not in argv  # the environment keeps it out of the process list
    listen = argv[argv.index("--listen") + 1]
    assert listen != demo.info["forward_url"][7:-1]  # that port is the demo's own client's
    if argv[0] == "gateway":  # on PATH as printed; make sure it is this installation's
        argv[0] = shutil.which("gateway") or "gateway"
    with open(demo.workdir / "logs" / "test-second-client.log", "wb") as log:
        body = run_and_fetch(argv, f"http://{listen}/", log, {**os.environ, **env})
    assert body == get(demo.info["processor_url"])[2]


def test_a_second_demo_in_the_same_workdir_is_refused(demo: Demo) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--workdir", str(demo.workdir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode != 0
    assert second.stdout == ""
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert "already running" in lines[0] or "another gateway demo" in lines[0]
    assert str(demo.workdir) in lines[0]
    # The first demo is untouched.
    assert json.loads((demo.workdir / "demo.json").read_text()) == demo.info
    assert get(demo.info["forward_url"])[0] == 200


@pytest.mark.parametrize("kind", ["under-a-file", "foreign-files"])
def test_an_unusable_workdir_is_one_clear_line(workdir: Path, kind: str) -> None:
    workdir.mkdir()
    (workdir / "notes.txt").write_text("not the demo's\n")
    target = workdir / "notes.txt" / "demo" if kind == "under-a-file" else workdir
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--workdir", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("gateway demo: ") and "--workdir" in lines[0]
    assert (workdir / "notes.txt").read_text() == "not the demo's\n"


def test_sigint_stops_every_process_and_exits_0(workdir: Path) -> None:
    process, output = start_demo(workdir)
    kids: dict[int, int] = {}
    try:
        wait_for_demo(process, workdir, output)
        kids = children(process.pid)
        # processor, relay, gateway, engineer client, and the target group's two processors
        assert len(kids) == 6, kids
        process.send_signal(signal.SIGINT)
        assert process.wait(STOP_TIMEOUT) == 0
        assert survivors(kids) == []
        assert not (workdir / "demo.json").exists()  # it described processes now gone
        assert "Traceback" not in output.read_text()
    finally:
        stop(process, kids)


def test_a_workdir_from_an_earlier_demo_is_regenerated(workdir: Path) -> None:
    first_info: dict[str, Any] = {}
    first_ca = b""
    for run in ("first", "second"):
        process, output = start_demo(workdir)
        kids: dict[int, int] = {}
        try:
            demo = wait_for_demo(process, workdir, output)
            kids = children(process.pid)
            assert get(demo.info["forward_url"])[0] == 200, run
            if run == "first":
                first_info, first_ca = demo.info, (workdir / "ca.pem").read_bytes()
                # The plant's choice is kept across a gateway restart, not across demos.
                assert run_control(demo.info, "gateway", "access", "disabled").returncode == 0
            else:  # fresh credentials: nothing depends on what the first run left
                assert demo.info["engineer_token"] != first_info["engineer_token"]
                assert (workdir / "ca.pem").read_bytes() != first_ca
            process.send_signal(signal.SIGTERM)
            assert process.wait(STOP_TIMEOUT) == 0, run
            assert survivors(kids) == [], run
        finally:
            stop(process, kids)


def test_attended_mode_both_ways_in_work_as_printed(workdir: Path) -> None:
    # A terminal's Ctrl-C signals the whole process group: stop this one that way.
    process, output = start_demo(workdir, "--mode", "attended", new_group=True)
    kids: dict[int, int] = {}
    try:
        demo = wait_for_demo(process, workdir, output)
        info = demo.info
        kids = children(process.pid)
        assert set(info) >= CONTRACT_KEYS
        assert info["mode"] == "attended"
        status_report = json.loads(get(info["status_url"] + "api/status")[2])
        assert status_report["access"]["mode"] == "attended"
        [waiting] = status_report["access"]["requests"]
        assert waiting["id"] == info["request"] and waiting["engineer"] == "demo-engineer"
        command = shlex.split(info["connect_command"])
        assert command[command.index("--reason") + 1] == waiting["reason"]
        # Before the plant says yes the forward holds the connection: no page.
        try:
            status: int | None = get(info["forward_url"], timeout=2)[0]
        except FETCH_ERRORS:
            status = None
        assert status != 200
        client_log = workdir / "logs" / "connect.log"
        assert "attended mode" in client_log.read_text()
        page = get(info["processor_url"])[2]

        # Ask and approve: the printed approve line, as given.
        approve = this_gateway(printed(output, " approve ", info["request"]))
        assert approve[-2:] == ["-c", info["config"]["gateway"]]
        approved = subprocess.run(approve, capture_output=True, text=True, timeout=60)
        assert approved.returncode == 0, approved.stderr
        assert get(info["forward_url"])[2] == page

        # A session code: made with the printed line, used with the printed client line.
        made = subprocess.run(
            this_gateway(printed(output, " code -c ")), capture_output=True, text=True, timeout=60
        )
        assert made.returncode == 0, made.stderr
        [code] = re.findall(r"^ {4}(\d{6})$", made.stdout, re.MULTILINE)
        env, argv = printed_client_with(output, "--code")
        argv = this_gateway([code if word == "CODE" else word for word in argv])
        listen = argv[argv.index("--listen") + 1]
        with open(workdir / "logs" / "test-code-client.log", "wb") as log:
            assert run_and_fetch(argv, f"http://{listen}/", log, {**os.environ, **env}) == page

        # Another engineer asking with the printed --reason line waits for the plant.
        env, argv = printed_client_with(output, "--reason")
        listen = argv[argv.index("--listen") + 1]
        with open(workdir / "logs" / "test-reason-client.log", "wb") as log:
            asking = subprocess.Popen(
                this_gateway(argv), stdout=log, stderr=log, env={**os.environ, **env}
            )
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not (
                requests := json.loads(run_control(info, "gateway", "requests", "--json").stdout)
            ):
                assert time.monotonic() < deadline and asking.poll() is None
                time.sleep(0.1)
            [request] = requests
            assert request["reason"] == "ticket 4711: recalibrate camera"
            desk = json.loads(run_control(info, "relay", "sessions", "--json").stdout)
            assert [r["id"] for r in desk["gateways"][0]["requests"]] == [request["id"]]
            assert run_control(info, "gateway", "approve", request["id"]).returncode == 0
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                try:
                    if get(f"http://{listen}/")[2] == page:
                        break
                except FETCH_ERRORS:
                    pass
                assert time.monotonic() < deadline and asking.poll() is None
                time.sleep(0.1)
        finally:
            stop(asking, {}, timeout=10)

        # The plant ends the demo's own session: its client stops, the demo goes on.
        ended = run_control(info, "gateway", "end", "--all", "--reason", "done for today")
        assert ended.returncode == 0, ended.stderr
        deadline = time.monotonic() + READY_TIMEOUT
        while "engineer client has stopped" not in output.read_text():
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
        assert "ended by the plant: done for today" in output.read_text()
        assert process.poll() is None
        assert get(info["status_url"] + "api/status")[0] == 200

        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(STOP_TIMEOUT) == 0
        assert survivors(kids) == []
        assert "Traceback" not in output.read_text()
    finally:
        stop(process, kids)


def printed_client_with(output: Path, flag: str) -> tuple[dict[str, str], list[str]]:
    """A printed ``GATEWAY_TOKEN=... gateway connect --target ...`` line that has ``flag``
    (not the target group's ``--group`` line)."""
    lines = [line.strip() for line in output.read_text().splitlines()]
    [line] = [
        ln
        for ln in lines
        if ln.startswith("GATEWAY_TOKEN=") and f" {flag} " in ln and " --group " not in ln
    ]
    words = shlex.split(line)
    env = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words
