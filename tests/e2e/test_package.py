"""The Debian packages on a clean Debian: built by deploy/build-deb, installed into a booted
systemd-nspawn container (debootstrap'd bookworm, cached under /var/cache/gateway-pkgtest), where
``systemctl start gateway`` reaches a relay on the host and the journal has the gateway's lines.

One test, in steps, since each needs the one before: install (files, owners, modes, the user,
enabled but not started), configure and start (READY, the tunnel's STATUS, watchdog pings under
the unit's hardening, the journal, an engineer's request through the tunnel), a stuck daemon
restarted by the watchdog, upgrade (the
plant's edited conffile kept, the daemon restarted on the new package), the relay's package
(its unit binds a port below 1024 as its unprivileged user), remove (config and state kept),
purge (both gone).

Time: the first run debootstraps the root (about a minute with the mirror reachable); then
about a minute to build the packages and a minute for the steps.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.demo import stack as shared
from tests.helpers import container
from tests.helpers.processes import Stack, fresh_stack, http_get, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(container.why_not() is not None, reason=str(container.why_not())),
]

ROOT = Path(__file__).resolve().parents[2]
V1, V2 = "0.1.0~pkgtest1-1", "0.1.0~pkgtest2-1"


@pytest.fixture(scope="module")
def debs() -> Iterator[Path]:
    """Both packages at two versions, for the upgrade (built once; v2 is v1 repacked)."""
    with tempfile.TemporaryDirectory(prefix="gw-debs-") as tmp:
        out = Path(tmp)
        subprocess.run(
            [str(ROOT / "deploy" / "build-deb"), "--fast", "--version", V1, "--out", str(out)],
            check=True,
            capture_output=True,
            timeout=600,
        )
        for name in ("gateway", "gateway-relay"):
            repack(out / f"{name}_{V1}_amd64.deb", V2, out / f"{name}_{V2}_amd64.deb")
        yield out


def repack(deb: Path, version: str, to: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=120)
        control = tree / "DEBIAN" / "control"
        text = control.read_text().replace(V1, version)
        control.write_text(text)
        subprocess.run(
            ["dpkg-deb", "-Zgzip", "--root-owner-group", "-b", str(tree), str(to)],
            check=True,
            capture_output=True,
            timeout=300,
        )


def free_privileged_port() -> int:
    """A port below 1024 nothing listens on (the relay unit's capability is what lets it bind)."""
    for port in range(981, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1024 on loopback (ports 981-999 all taken)")


def stat(box: container.Container, path: str) -> str:
    return box.out("stat", "-c", "%U:%G %a %F", path)


def configure_gateway(box: container.Container, s: Stack) -> str:
    """The plant's edit: the vendor's certificate and key, and gateway.toml for this relay."""
    conf = Path("/etc/gateway")
    for name, source in (
        ("ca.pem", s.pki.ca_cert),
        ("gateway.pem", s.pki.gateway_cert),
        ("gateway.key", s.pki.gateway_key),
    ):
        shutil.copy(source, box.path(str(conf / name)))
    text = shared.gateway_toml(
        shared.Layout(conf),
        s.stack_ports,
        gateway_id=s.gateway_id,
        written_by="the package test (the plant's edit)",
        relative=False,
        service={"state_dir": "/var/lib/gateway"},
    )
    box.path("/etc/gateway/gateway.toml").write_text(text)
    box.run("chown", "root:gateway", *(f"/etc/gateway/{n}" for n in ("ca.pem", "gateway.pem")))
    box.run("chown", "root:gateway", "/etc/gateway/gateway.toml")
    box.run("chmod", "0640", "/etc/gateway/gateway.toml")
    # The key: the daemon's user's alone (the gateway refuses a key others may read).
    box.run("chown", "gateway:gateway", "/etc/gateway/gateway.key")
    box.run("chmod", "0600", "/etc/gateway/gateway.key")
    return text


def tunnel_up_status(s: Stack) -> str:
    return f"tunnel up to relay 127.0.0.1:{s.ports['relay_gw']}"


def wait_active_and_up(box: container.Container, s: Stack) -> None:
    try:
        _wait_up(box, s)
    except AssertionError as e:
        status = box.show("gateway", "StatusText")
        raise AssertionError(f"{e}\nSTATUS={status}\n{box.journal('gateway')[-4000:]}") from None


def _wait_up(box: container.Container, s: Stack) -> None:
    wait_until(
        "the packaged gateway's tunnel up (its STATUS, the relay's metric)",
        lambda: (
            box.show("gateway", "StatusText") == tunnel_up_status(s)
            and s.relay_metric("relay_gateways_connected") == 1.0
        ),
        deadline=60,
    )


def test_install_start_upgrade_remove_purge(debs: Path) -> None:
    with fresh_stack() as s, container.booted(binds=[(debs, "/debs")]) as box:
        s.start_processor()
        s.start_relay()  # on the host's loopback, which the container shares

        # --- install: files, owners, modes, the user; enabled, not started -----------------
        box.run("dpkg", "-i", f"/debs/gateway_{V1}_amd64.deb")
        assert box.out("gateway", "--version").startswith("gateway ")
        assert box.out("readlink", "/usr/bin/gateway") == "/opt/gateway/bin/gateway"
        assert box.out("head", "-1", "/opt/gateway/bin/gateway") == "#!/opt/gateway/bin/python"
        user = box.out("getent", "passwd", "gateway").split(":")
        assert int(user[2]) < 1000 and user[6] == "/usr/sbin/nologin", user
        assert stat(box, "/var/lib/gateway") == "gateway:gateway 700 directory"
        assert stat(box, "/etc/gateway") == "root:gateway 750 directory"
        assert stat(box, "/etc/gateway/gateway.toml") == "root:gateway 640 regular file"
        assert stat(box, "/lib/systemd/system/gateway.service") == "root:root 644 regular file"
        assert box.out("cat", "/usr/lib/modules-load.d/gateway-bbr.conf").endswith("tcp_bbr")
        assert box.out("dpkg-query", "-W", "-f=${Conffiles}", "gateway").split()[0] == (
            "/etc/gateway/gateway.toml"
        )
        assert box.out("systemctl", "is-enabled", "gateway") == "enabled"
        assert box.run("systemctl", "is-active", "gateway", check=False).stdout.strip() == (
            "inactive"
        )
        # Not configured yet (no certificate): starting it does nothing, and fails nothing.
        box.run("systemctl", "start", "gateway")
        assert box.show("gateway", "ConditionResult") == "no"
        assert box.show("gateway", "ActiveState") == "inactive"

        # --- configure and start: READY, STATUS, the watchdog, the journal -----------------
        edited = configure_gateway(box, s)
        dropin = box.path("/etc/systemd/system/gateway.service.d/test.conf")
        dropin.parent.mkdir(parents=True)
        # Pings every second, to see them; a stuck daemon is killed 3 s after the abort signal
        # and restarted 1 s later (the package's own: 30 s, 30 s, 5 s).
        dropin.write_text("[Service]\nWatchdogSec=2s\nTimeoutAbortSec=3s\nRestartSec=1s\n")
        box.run("systemctl", "daemon-reload")
        # Type=notify: start returns once the daemon said READY=1.
        box.start("gateway")
        assert box.show("gateway", "ActiveState") == "active"
        wait_active_and_up(box, s)
        first = int(box.show("gateway", "WatchdogTimestampMonotonic"))
        wait_until(
            "watchdog pings",
            lambda: int(box.show("gateway", "WatchdogTimestampMonotonic")) > first + 1_500_000,
            deadline=10,
        )
        assert box.show("gateway", "NRestarts") == "0"
        journal = box.journal("gateway")
        assert re.search(r"tunnel \w+ -> up: connected to relay 127\.0\.0\.1:\d+", journal), journal
        assert "Traceback" not in journal, journal
        if "bbr" in Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_text().split():
            # setsockopt(TCP_CONGESTION) passes the unit's system call filter (a refused one
            # would be EPERM, and this warning).
            assert "tunnel congestion control:" not in journal, journal
        # The network check read the interface table: netlink passes the unit's filters.
        wait_until(
            "the packaged gateway's network check",
            lambda: any(c["name"] == "network" for c in s.status()["checks"]),
            deadline=30,
        )
        [network] = [c for c in s.status()["checks"] if c["name"] == "network"]
        assert network["ok"], network
        # Process metrics under ProtectProc=/ProcSubset= (what soak and leak alerts watch).
        metrics = http_get(s.url("gw_metrics", "/metrics")).decode()
        for name in ("process_resident_memory_bytes", "process_open_fds"):
            assert f"\n{name} " in metrics, name
        # The plant's control commands reach the daemon through its state directory.
        assert "unattended" in box.out("gateway", "access", "-c", "/etc/gateway/gateway.toml")
        # An engineer's request through the relay on the host and the packaged gateway.
        s.start_connect()
        assert b"<html" in http_get(s.url("forward", "/")).lower()
        s.procs.pop("connect").stop()
        audit = box.out("ls", "/var/lib/gateway/audit")
        assert audit, "the audit trail is kept in the state directory"

        # A stuck event loop (here: stopped) pings no more; systemd aborts it and restarts it.
        stuck = box.show("gateway", "MainPID")
        box.run("sh", "-c", f"kill -STOP {stuck}")
        wait_until(
            "systemd to restart the stuck gateway",
            lambda: box.show("gateway", "NRestarts") == "1",
            deadline=40,
        )
        assert box.show("gateway", "MainPID") != stuck
        wait_active_and_up(box, s)
        assert "Watchdog timeout" in box.run("journalctl", "--no-pager", "-u", "gateway").stdout

        # --- upgrade: the plant's edit kept, the daemon restarted on the new package --------
        pid = box.show("gateway", "MainPID")
        box.run("dpkg", "-i", f"/debs/gateway_{V2}_amd64.deb")
        assert box.path("/etc/gateway/gateway.toml").read_text() == edited
        assert box.out("dpkg-query", "-W", "-f=${Version}", "gateway") == V2
        assert box.show("gateway", "MainPID") != pid
        wait_active_and_up(box, s)
        assert box.out("ls", "/var/lib/gateway/audit") == audit

        # --- the relay's package: its unit binds a privileged port without root -------------
        port = free_privileged_port()
        box.run("dpkg", "-i", f"/debs/gateway-relay_{V2}_amd64.deb")
        assert stat(box, "/var/lib/gateway-relay") == "gateway-relay:gateway-relay 700 directory"
        assert box.run("systemctl", "is-active", "gateway-relay", check=False).stdout.strip() == (
            "inactive"
        )
        for name in ("ca.pem", "relay.pem", "relay.key"):
            shutil.copy(s.pki.directory / name, box.path(f"/etc/gateway-relay/{name}"))
        relay_toml = box.path("/etc/gateway-relay/relay.toml")
        text = relay_toml.read_text()
        text = text.replace('listen = "0.0.0.0:443"', f'listen = "127.0.0.1:{port}"')
        engineer_port, metrics_port = shared.free_ports(2)
        text = text.replace('listen = "0.0.0.0:9443"', f'listen = "127.0.0.1:{engineer_port}"')
        text = text.replace('listen = "127.0.0.1:9109"', f'listen = "127.0.0.1:{metrics_port}"')
        relay_toml.write_text(text)
        box.run("chown", "-R", "root:gateway-relay", "/etc/gateway-relay")
        box.run("chown", "gateway-relay:gateway-relay", "/etc/gateway-relay/relay.key")
        box.run("chmod", "0600", "/etc/gateway-relay/relay.key")
        box.start("gateway-relay")
        assert box.show("gateway-relay", "ActiveState") == "active"
        assert box.show("gateway-relay", "StatusText").startswith("0 gateways connected")
        assert box.show("gateway-relay", "User") == "gateway-relay"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        box.run("dpkg", "-P", "gateway-relay")
        assert not box.path("/etc/gateway-relay").exists()

        # --- remove: config and state kept; purge: both gone ---------------------------------
        box.run("dpkg", "-r", "gateway")
        assert not box.path("/opt/gateway").exists()
        assert box.path("/etc/gateway/gateway.toml").read_text() == edited
        assert box.path("/var/lib/gateway/audit").is_dir()
        wait_until(
            "the relay to see the gateway gone",
            lambda: s.relay_metric("relay_gateways_connected") == 0.0,
            deadline=30,
        )
        box.run("dpkg", "-P", "gateway")
        assert not box.path("/etc/gateway").exists()
        assert not box.path("/var/lib/gateway").exists()


RENEWING_LIFE_DAYS = 0.0005
"""43 s: the packaged gateway renews its certificate about 29 s after enrolling."""


def test_enroll_start_and_renew_under_the_hardened_unit(debs: Path) -> None:
    """Plant IT's path with the package: install, `gateway enroll` as root (the key made in the
    container, in /var/lib/gateway, the service user's), start; the daemon then renews its
    certificate in place under ProtectSystem=strict without dropping the tunnel."""
    with fresh_stack() as s, container.booted(binds=[(debs, "/debs")]) as box:
        s.start_processor()
        relay_toml = s.layout.relay_config
        relay_toml.write_text(
            relay_toml.read_text()
            + f'\n[enrollment]\nca_key = "{s.pki.ca_key}"\n'
            + f"certificate_days = {RENEWING_LIFE_DAYS}\n"
        )
        s.start_relay()
        box.run("dpkg", "-i", f"/debs/gateway_{V1}_amd64.deb")
        shutil.copy(s.pki.ca_cert, box.path("/etc/gateway/relay-ca.pem"))
        # The plant's edit of the packaged config: the relay and the targets; the certificate
        # and key stay where the package points them (the state directory).
        packaged = box.path("/etc/gateway/gateway.toml").read_text()
        assert 'cert = "/var/lib/gateway/gateway.pem"' in packaged
        text = shared.gateway_toml(
            shared.Layout(Path("/etc/gateway")),
            s.stack_ports,
            gateway_id=s.gateway_id,
            written_by="the package test (the plant's edit)",
            relative=False,
            service={"state_dir": "/var/lib/gateway"},
        )
        text = text.replace('"/etc/gateway/ca.pem"', '"/etc/gateway/relay-ca.pem"')
        text = re.sub(r'cert = "[^"]*"', 'cert = "/var/lib/gateway/gateway.pem"', text, count=1)
        text = re.sub(r'key = "[^"]*"', 'key = "/var/lib/gateway/gateway.key"', text, count=1)
        box.path("/etc/gateway/gateway.toml").write_text(text)
        box.run("chown", "root:gateway", "/etc/gateway/gateway.toml", "/etc/gateway/relay-ca.pem")
        box.run("chmod", "0640", "/etc/gateway/gateway.toml")

        token = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "relay",
                "enroll-token",
                s.gateway_id,
                "-c",
                str(relay_toml),
                "--minutes",
                "10",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        enrolled = box.run(
            "gateway",
            "enroll",
            "--relay",
            f"127.0.0.1:{s.ports['relay_gw']}",
            "--ca",
            "/etc/gateway/relay-ca.pem",
            "--token",
            json.loads(token)["token"],
            "-c",
            "/etc/gateway/gateway.toml",
        )
        assert "enrolled" in enrolled.stdout + enrolled.stderr, enrolled
        # Made in the container, the service user's alone; the config untouched (it named them).
        assert stat(box, "/var/lib/gateway/gateway.key") == "gateway:gateway 600 regular file"
        assert box.path("/etc/gateway/gateway.toml").read_text() == text
        assert stat(box, "/etc/gateway/gateway.toml") == "root:gateway 640 regular file"
        first = box.path("/var/lib/gateway/gateway.pem").read_bytes()

        box.start("gateway")
        wait_active_and_up(box, s)
        wait_until(
            "the packaged gateway to renew its certificate in /var/lib/gateway",
            lambda: box.path("/var/lib/gateway/gateway.pem").read_bytes() != first,
            deadline=90,
        )
        assert stat(box, "/var/lib/gateway/gateway.key") == "gateway:gateway 600 regular file"
        metrics = http_get(s.url("gw_metrics", "/metrics")).decode()
        assert "\ngateway_certificate_renewals_total 1.0" in metrics, metrics[-2000:]
        assert "\ngateway_tunnel_connects_total 1.0" in metrics  # the tunnel was not dropped
        journal = box.journal("gateway")
        assert "Traceback" not in journal, journal
        # Under the journal: no timestamps of the daemon's own (journald stamps each line).
        assert not re.search(r"^\d{4}-\d\d-\d\dT", journal, re.MULTILINE), journal[:2000]
        box.run("dpkg", "-P", "gateway")
