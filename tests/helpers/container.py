"""A clean Debian root for the package test: debootstrap'd once into a cache, then booted with
systemd-nspawn on a throw-away overlay (so every run starts from the same clean system).

The container shares the host's network (no ``--private-network``): its gateway reaches the
test's relay on the host's loopback, and nothing else is dialled.  Commands run inside through
``nsenter`` into the container's namespaces (no machined needed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from attrs import define

CACHE = Path(os.environ.get("GATEWAY_PKGTEST_CACHE", "/var/cache/gateway-pkgtest"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ["python3", "adduser", "systemd", "systemd-sysv", "dbus", "ca-certificates"]
"""What a small Debian edge PC has, and the package's Depends."""
ENV = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "SYSTEMD_PAGER="]


def why_not() -> str | None:
    """Why this machine cannot run the booted-container test, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, overlay mounts, systemd-nspawn)"
    missing = [
        t for t in ("debootstrap", "systemd-nspawn", "nsenter", "dpkg-deb") if not shutil.which(t)
    ]
    # A missing tool is a broken install, not a reason to skip: scripts/test.sh installs them.
    assert not missing, f"{', '.join(missing)} not installed: run scripts/test.sh"
    return None


def base_root() -> Path:
    """The cached clean root (made on first use: about a minute with a reachable mirror)."""
    base = CACHE / f"{SUITE}-{'-'.join(sorted(BASE_PACKAGES))}"
    if (base / "etc" / "os-release").exists():
        return base
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = base.with_name(base.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            str(partial),
            MIRROR,
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    partial.rename(base)
    return base


@define
class Container:
    root: Path
    nspawn: subprocess.Popen[bytes]
    leader: int
    log: Path

    def run(
        self, *argv: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", *ENV, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"in the container: {' '.join(argv)} exited {done.returncode}\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done

    def out(self, *argv: str) -> str:
        return self.run(*argv).stdout.strip()

    def path(self, inside: str) -> Path:
        """A path in the container, as the host sees it (the overlay's merged view)."""
        return self.root / inside.lstrip("/")

    def show(self, unit: str, prop: str) -> str:
        return self.out("systemctl", "show", "-P", prop, unit)

    def start(self, unit: str) -> None:
        """``systemctl start``: for Type=notify it returns once the daemon said READY=1."""
        done = self.run("systemctl", "start", unit, check=False, timeout=90)
        if done.returncode != 0:
            status = self.run("systemctl", "status", "--no-pager", "-l", unit, check=False)
            raise AssertionError(
                f"systemctl start {unit} exited {done.returncode}: {done.stderr}\n"
                f"{status.stdout}\n{self.journal(unit)[-4000:]}"
            )

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit).stdout


def _leader(nspawn: subprocess.Popen[bytes]) -> int | None:
    children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children")
    try:
        pids = children.read_text().split()
    except OSError:
        return None
    for pid in pids:  # the container's init, once nspawn's own child has exec'd it
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                return int(pid)
        except OSError:
            continue
    return None


@contextmanager
def booted(binds: Sequence[tuple[Path, str]] = (), deadline: float = 90) -> Iterator[Container]:
    """Boot the clean root on a fresh overlay; ``binds``: host folders shown read-only inside."""
    base = base_root()
    with tempfile.TemporaryDirectory(prefix="gw-pkgtest-") as tmp:
        t = Path(tmp)
        for name in ("upper", "work", "root"):
            (t / name).mkdir()
        subprocess.run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={base},upperdir={t / 'upper'},workdir={t / 'work'}",
                str(t / "root"),
            ],
            check=True,
            timeout=30,
        )
        log = t / "boot.log"
        try:
            with log.open("wb") as out:
                nspawn = subprocess.Popen(
                    [
                        "systemd-nspawn",
                        "--quiet",
                        "--boot",
                        "--register=no",
                        "--keep-unit",
                        f"--machine=gwpkg{os.getpid()}",
                        f"--directory={t / 'root'}",
                        *(f"--bind-ro={host}:{inside}" for host, inside in binds),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                end = time.monotonic() + deadline
                leader = None
                while leader is None:
                    if nspawn.poll() is not None or time.monotonic() > end:
                        raise AssertionError(f"the container did not start:\n{log.read_text()}")
                    time.sleep(0.1)
                    leader = _leader(nspawn)
                box = Container(t / "root", nspawn, leader, log)
                while True:  # until its init answers on its bus, then until it has booted
                    state = box.run(
                        "systemctl", "is-system-running", "--wait", check=False, timeout=60
                    )
                    # "offline" (or nothing) is systemctl not reaching the container's init yet:
                    # on a busy machine it is seen before PID 1 has its bus up.
                    if state.stdout.strip() not in ("", "offline") or time.monotonic() > end:
                        break
                    time.sleep(0.2)
                if state.stdout.strip() not in ("running", "degraded"):
                    raise AssertionError(
                        f"the container did not boot: {state.stdout}{state.stderr}\n"
                        f"{log.read_text(errors='replace')[-4000:]}"
                    )
                yield box
            finally:
                _power_off(nspawn)
        finally:
            subprocess.run(["umount", "-l", str(t / "root")], check=False, timeout=30)


def _power_off(nspawn: subprocess.Popen[bytes]) -> None:
    """Ask the container's systemd to halt (SIGRTMIN+4 to nspawn's child is what machinectl
    poweroff does); kill it after a few seconds."""
    if nspawn.poll() is None:
        nspawn.terminate()  # nspawn forwards it as a halt request to the container's init
        try:
            nspawn.wait(15)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait(10)
