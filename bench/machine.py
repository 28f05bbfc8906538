"""What the benchmark ran on: hardware, kernel, and the versions of everything measured."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

PACKAGES = ("twisted", "pyOpenSSL", "cryptography", "h2")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _field(text: str, name: str, sep: str = ":") -> str:
    for line in text.splitlines():
        key, _, value = line.partition(sep)
        if key.strip() == name:
            return value.strip().strip('"')
    return "unknown"


def _command(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, timeout=30, check=False, cwd=cwd, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout + done.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if done.returncode == 0 and text else "unknown"


def package_versions() -> dict[str, str]:
    """Versions as the gateway's interpreter sees them (asked in a child: the harness itself
    imports nothing of the gateway's stack)."""
    code = (
        "import importlib.metadata as m\n"
        f"for p in {PACKAGES!r}:\n"
        "    try: print(p, m.version(p))\n"
        "    except m.PackageNotFoundError: print(p, 'missing')\n"
    )
    versions = dict.fromkeys(PACKAGES, "unknown")
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, timeout=30, check=False
        )
        out = done.stdout.decode()
    except (OSError, subprocess.TimeoutExpired):
        return versions
    for line in out.splitlines():
        name, _, version = line.partition(" ")
        versions[name] = version
    return versions


def describe(repo: Path) -> dict[str, str]:
    cpuinfo = _read("/proc/cpuinfo")
    mem_kib = _field(_read("/proc/meminfo"), "MemTotal").split()[0]
    commit = _command(["git", "rev-parse", "--short", "HEAD"], cwd=repo)
    dirty = _command(["git", "status", "--porcelain", "--", "gateway"], cwd=repo)
    info = {
        "cpu": _field(cpuinfo, "model name"),
        "cores": str(os.cpu_count()),
        "memory_gib": f"{int(mem_kib) / 1024 / 1024:.1f}" if mem_kib.isdigit() else "unknown",
        "kernel": platform.release(),
        "os": _field(_read("/etc/os-release"), "PRETTY_NAME", "="),
        "python": platform.python_version(),
        "openssl": _command(["openssl", "version"]),
        "cc": _command([os.environ.get("CC", "cc"), "--version"]),
        "commit": commit + (" (gateway/ modified)" if dirty not in ("", "unknown") else ""),
    }
    info.update(package_versions())
    return info
