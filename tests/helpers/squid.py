"""A real squid on loopback for the proxy path (installed by scripts/test.sh).

``users`` turns on Basic authentication with squid's own ``basic_ncsa_auth`` and an htpasswd
file of APR1 hashes made with ``openssl passwd -apr1`` (no apache2-utils needed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from attrs import define

from gateway.demo.stack import Process
from tests.helpers.processes import free_port, port_open, wait_until


@define
class Squid:
    port: int
    directory: Path
    process: Process

    @property
    def access_log(self) -> str:
        path = self.directory / "access.log"
        return path.read_text("utf-8", "replace") if path.exists() else ""

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


NCSA_AUTH = Path("/usr/lib/squid/basic_ncsa_auth")


def htpasswd(path: Path, users: dict[str, str]) -> None:
    lines = []
    for user, password in users.items():
        hashed = subprocess.run(
            ["openssl", "passwd", "-apr1", password], capture_output=True, text=True, check=True
        ).stdout.strip()
        lines.append(f"{user}:{hashed}\n")
    path.write_text("".join(lines))
    os.chmod(path, 0o644)  # squid's helper runs as squid's user


def start_squid(
    directory: Path, *, allow_connect: bool = True, users: dict[str, str] | None = None
) -> Squid:
    binary = shutil.which("squid") or "/usr/sbin/squid"
    if not Path(binary).exists():
        raise AssertionError("squid is not installed: run scripts/test.sh, which installs it")
    # squid drops privileges to its own user: its folder must be reachable and writable by it,
    # so it lives in /tmp rather than in the test's private work directory.
    directory = Path(tempfile.mkdtemp(prefix=f"gw-squid-{directory.name}-"))
    os.chmod(directory, 0o777)
    port = free_port()
    rule = "http_access allow plant_lan" if allow_connect else "http_access deny all"
    auth = ""
    if users is not None:
        if not NCSA_AUTH.exists():
            raise AssertionError(f"{NCSA_AUTH} is missing: the squid package installs it")
        htpasswd(directory / "htpasswd", users)
        auth = (
            f"auth_param basic program {NCSA_AUTH} {directory / 'htpasswd'}\n"
            "auth_param basic realm plant proxy\n"
            "acl authenticated proxy_auth REQUIRED\n"
            "http_access deny !authenticated\n"
        )
    (directory / "squid.conf").write_text(
        f"""http_port 127.0.0.1:{port}
acl plant_lan src 127.0.0.1/32
{auth}{rule}
http_access deny all
cache deny all
access_log stdio:{directory}/access.log
cache_log {directory}/cache.log
pid_filename {directory}/squid.pid
coredump_dir {directory}
shutdown_lifetime 1 seconds
"""
    )
    process = Process.start(
        "squid",
        [binary, "-N", "-f", str(directory / "squid.conf")],
        log=directory / "stdout.log",
        append=True,
    )
    squid = Squid(port, directory, process)
    try:
        wait_until("squid to listen", lambda: port_open(port) or not process.alive())
        if not process.alive():
            raise AssertionError(f"squid exited: {process.text()}")
    except BaseException:
        squid.stop()
        raise
    return squid
