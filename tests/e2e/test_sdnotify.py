"""sd_notify end to end: the real ``gateway relay`` and ``gateway run`` processes, each with a
listening Unix datagram socket as ``NOTIFY_SOCKET`` (as systemd gives a ``Type=notify`` unit):
READY once the listeners answer, STATUS lines with the tunnel's state, watchdog pings at half of
``WATCHDOG_USEC``, STOPPING on SIGTERM."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.demo import stack as shared
from tests.helpers.processes import DEADLINE, Proc, fresh_stack, port_open, start

pytestmark = pytest.mark.e2e


class NotifySocket:
    """What systemd's end of NOTIFY_SOCKET would see, one datagram a message."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def close(self) -> None:
        self.sock.close()

    def wait_for(
        self,
        what: str,
        check: Callable[[dict[str, str]], bool],
        proc: Proc,
        deadline: float = DEADLINE,
    ) -> dict[str, str]:
        """The first message (already seen or new) that passes ``check``."""
        for _, fields in self.messages:
            if check(fields):
                return fields
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            self.sock.settimeout(0.2)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                if proc.popen.poll() is not None and not check({}):
                    raise AssertionError(
                        f"{proc.name} exited before {what}:\n{proc.tail()}"
                    ) from None
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.messages.append((time.monotonic(), fields))
            if check(fields):
                return fields
        raise AssertionError(f"no {what} within {deadline:g}s; got {self.messages}\n{proc.tail()}")

    def forget(self) -> None:
        """Drop what was received and what is queued: look at new messages only."""
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass
        self.messages = []


@pytest.fixture
def sockets(tmp_path: Path) -> Iterator[tuple[NotifySocket, NotifySocket, str]]:
    relay = NotifySocket(str(tmp_path / "relay-notify"))
    name = f"gateway-e2e-notify-{os.getpid()}-{tmp_path.name}"
    gateway = NotifySocket(b"\0" + name.encode())  # an abstract name, as "@name"
    yield relay, gateway, "@" + name
    relay.close()
    gateway.close()


def test_ready_status_watchdog_and_stopping(
    tmp_path: Path, sockets: tuple[NotifySocket, NotifySocket, str]
) -> None:
    relay_sock, gateway_sock, gateway_name = sockets
    watchdog = {"WATCHDOG_USEC": "1000000"}  # pings every 0.5 s
    with fresh_stack() as s:
        s.start_processor()
        relay = start(
            "relay",
            shared.relay_args(s.layout.relay_config),
            s.workdir,
            env={"NOTIFY_SOCKET": str(tmp_path / "relay-notify"), **watchdog},
        )
        s.procs["relay"] = relay
        ready = relay_sock.wait_for("relay READY", lambda f: f.get("READY") == "1", relay)
        # READY means listening: every listener answers at once.
        for port in ("relay_gw", "relay_eng", "relay_metrics"):
            assert port_open(s.ports[port]), port
        assert ready["STATUS"] == "0 gateways connected, 0 engineer streams"

        gateway = start(
            "gateway",
            shared.run_args(s.layout.gateway_config),
            s.workdir,
            env={"NOTIFY_SOCKET": gateway_name, **watchdog},
        )
        s.procs["gateway"] = gateway
        ready = gateway_sock.wait_for("gateway READY", lambda f: f.get("READY") == "1", gateway)
        assert port_open(s.ports["status"]) and port_open(s.ports["gw_metrics"])
        relay_address = f"127.0.0.1:{s.ports['relay_gw']}"
        up = f"tunnel up to relay {relay_address}"
        gateway_sock.wait_for("tunnel up", lambda f: f.get("STATUS") == up, gateway)
        relay_sock.wait_for(
            "a gateway connected",
            lambda f: f.get("STATUS", "").startswith("1 gateway connected"),
            relay,
        )

        # Watchdog pings from each reactor, about every 0.5 s.
        for sock, proc in ((gateway_sock, gateway), (relay_sock, relay)):
            start_at = time.monotonic()
            seen: list[float] = []

            def ping(fields: dict[str, str], seen: list[float] = seen) -> bool:
                if fields.get("WATCHDOG") == "1":
                    seen.append(time.monotonic())
                return len(seen) >= 4

            sock.forget()
            sock.wait_for("4 watchdog pings", ping, proc, deadline=10)
            gaps = [b - a for a, b in itertools.pairwise(seen)]
            assert all(0.2 < g < 1.0 for g in gaps), (proc.name, gaps)
            assert seen[-1] - start_at < 5

        # SIGHUP (systemctl reload): RELOADING, then READY again with the state line, and the
        # daemons keep running.
        for sock, proc in ((gateway_sock, gateway), (relay_sock, relay)):
            sock.forget()
            proc.popen.send_signal(signal.SIGHUP)
            reloading = sock.wait_for("RELOADING", lambda f: f.get("RELOADING") == "1", proc)
            assert int(reloading["MONOTONIC_USEC"]) > 0
            again = sock.wait_for("READY after the reload", lambda f: f.get("READY") == "1", proc)
            assert again["STATUS"], again
            assert proc.popen.poll() is None, proc.tail()

        # The relay goes away: STOPPING from it, "tunnel down" from the gateway.
        relay.stop()
        relay_sock.wait_for("relay STOPPING", lambda f: f.get("STOPPING") == "1", relay, 2)
        down = gateway_sock.wait_for(
            "tunnel down",
            lambda f: f.get("STATUS", "").startswith(("tunnel down:", "connecting")),
            gateway,
        )
        assert relay_address in down["STATUS"]

        gateway.stop()
        gateway_sock.wait_for("gateway STOPPING", lambda f: f.get("STOPPING") == "1", gateway, 2)
