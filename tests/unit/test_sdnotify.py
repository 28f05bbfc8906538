"""sd_notify: the messages, the socket address forms, the watchdog interval, and the service's
READY / STATUS / WATCHDOG / STOPPING on a Clock."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.application.service import MultiService, Service
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from gateway.edge.events import ITunnelEvents
from gateway.edge.sdstatus import TunnelLine
from gateway.relay.sdstatus import relay_line
from gateway.sdnotify import (
    NAME,
    SENT_KEPT,
    Notifier,
    NotifyService,
    notify_address,
    notify_service,
    watchdog_interval,
)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_abstract_names_start_with_a_nul() -> None:
    assert notify_address("@gateway/notify") == b"\0gateway/notify"
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"


def test_abstract_socket_receives(tmp_path: Path) -> None:
    name = f"gateway-test-{os.getpid()}-{tmp_path.name}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.setblocking(False)
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready("up")
        assert received(sock) == ["READY=1\nSTATUS=up"]
    finally:
        sock.close()


def test_watchdog_interval_is_half_of_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}, pid=7) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "7"}, pid=7) == 10.0


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "junk"},
        {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "8"},  # meant for another process
    ],
)
def test_no_watchdog_unless_asked_for_this_process(env: dict[str, str]) -> None:
    assert watchdog_interval(env, pid=7) is None


def test_messages(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier(path)
    n.status("tunnel up\nto relay x")  # one line, always
    n.watchdog()
    n.stopping()
    n.reloading("reloading gateway.toml")
    got = received(sock)
    assert got[:3] == ["STATUS=tunnel up to relay x", "WATCHDOG=1", "STOPPING=1"]
    fields = got[3].split("\n")
    assert fields[0] == "RELOADING=1"
    assert fields[1].startswith("MONOTONIC_USEC=") and fields[1][15:].isdigit()
    assert fields[2] == "STATUS=reloading gateway.toml"


def test_without_a_socket_nothing_is_sent() -> None:
    n = Notifier.from_environ({})
    assert not n.enabled
    assert not n.ready()
    assert list(n.sent) == []


def test_months_of_pings_keep_only_the_last_messages(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier(path)
    for _ in range(SENT_KEPT * 3):
        n.watchdog()
        received(sock)
    assert len(n.sent) == SENT_KEPT


def test_a_missing_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "nobody"))
    assert not n.watchdog()
    assert not n.watchdog()  # logged once, never raised


def test_service_ready_status_watchdog_stopping(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    clock = Clock()
    state = {"line": "connecting to relay r:443"}
    service = NotifyService(Notifier(path), clock, lambda: state["line"], watchdog=10.0, poll=1.0)
    service.startService()
    assert received(sock) == ["READY=1\nSTATUS=connecting to relay r:443"]
    clock.advance(1)
    assert received(sock) == []  # unchanged: not repeated
    state["line"] = "tunnel up to relay r:443"
    clock.advance(1)
    assert received(sock) == ["STATUS=tunnel up to relay r:443"]
    clock.advance(8)
    assert received(sock) == ["WATCHDOG=1"]
    clock.advance(10)
    assert received(sock) == ["WATCHDOG=1"]
    service.stopService()
    assert received(sock) == ["STOPPING=1\nSTATUS=stopping"]
    assert clock.getDelayedCalls() == []


def test_service_without_watchdog_never_pings(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    clock = Clock()
    service = NotifyService(Notifier(path), clock, lambda: "x", watchdog=None)
    service.startService()
    clock.pump([1.0] * 100)
    assert "WATCHDOG=1" not in received(sock)
    service.stopService()


def test_service_is_inert_without_notify_socket() -> None:
    clock = Clock()
    service = notify_service(clock, lambda: "x", environ={"WATCHDOG_USEC": "1000000"})
    service.startService()
    assert clock.getDelayedCalls() == []
    service.stopService()
    assert list(service.notifier.sent) == []


def test_ready_only_after_the_listeners_started(listener: tuple[socket.socket, str]) -> None:
    """Last in the tree: a listener that fails to start stops READY from being sent."""
    sock, path = listener

    class Failing(Service):
        def startService(self) -> None:
            raise OSError("port in use")

    top = MultiService()
    Failing().setServiceParent(top)
    NotifyService(Notifier(path), Clock(), lambda: "x").setServiceParent(top)
    with pytest.raises(OSError):
        top.startService()
    assert received(sock) == []


def test_environment_of_a_notify_unit(listener: tuple[socket.socket, str]) -> None:
    _, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "42"}
    service = notify_service(Clock(), lambda: "x", environ=env, pid=42)
    assert service.watchdog_every == 2.0
    assert service.notifier.enabled


def test_tunnel_line() -> None:
    line = TunnelLine("relay.example:443")
    verifyObject(ITunnelEvents, line)
    assert line() == "connecting to relay relay.example:443"
    line.tunnel_failed("connection refused")
    assert line() == "connecting to relay relay.example:443 (last attempt: connection refused)"
    line.tunnel_up("connected")
    assert line() == "tunnel up to relay relay.example:443"
    line.tunnel_failed("late handshake")  # a failure of another dial does not hide the tunnel
    assert line() == "tunnel up to relay relay.example:443"
    line.tunnel_down("connection lost: heartbeat timed out")
    assert line() == (
        "tunnel down: connection lost: heartbeat timed out; reconnecting to relay relay.example:443"
    )
    line.tunnel_failed("connection refused")
    assert line() == "tunnel down: connection refused; reconnecting to relay relay.example:443"
    line.tunnel_stopped("gateway stopping")
    assert line() == "stopping: gateway stopping"


def test_relay_line() -> None:
    tunnels: list[object] = []
    streams = {"n": 0.0}
    line = relay_line(tunnels, lambda: streams["n"])
    assert line() == "0 gateways connected, 0 engineer streams"
    tunnels.append(object())
    streams["n"] = 1.0
    assert line() == "1 gateway connected, 1 engineer stream"
    tunnels.append(object())
    streams["n"] = 3.0
    assert line() == "2 gateways connected, 3 engineer streams"


def test_reloading_then_ready_again(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    state = {"line": "tunnel up to relay r:443"}
    top = MultiService()
    NotifyService(Notifier(path), Clock(), lambda: state["line"]).setServiceParent(top)
    service = top.getServiceNamed(NAME)
    assert isinstance(service, NotifyService)
    service.reloading()  # not started yet: nothing to tell
    top.startService()
    received(sock)
    service.reloading("reloading gateway.toml")
    [message] = received(sock)
    assert message.startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert message.endswith("\nSTATUS=reloading gateway.toml")
    state["line"] = "connecting to relay s:443"
    service.reloaded()
    assert received(sock) == ["READY=1\nSTATUS=connecting to relay s:443"]
    top.stopService()
