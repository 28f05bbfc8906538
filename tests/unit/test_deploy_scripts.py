"""deploy/build-deb and the packages' maintainer scripts: clean under shellcheck (warnings and
errors; they run as root on the plant's PC), and POSIX sh where dpkg runs them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MAINTAINER = sorted(
    p for p in (DEPLOY / "debian").iterdir() if p.suffix in (".postinst", ".prerm", ".postrm")
)


def test_every_package_has_its_maintainer_scripts() -> None:
    names = {p.name for p in MAINTAINER}
    for package in ("gateway", "gateway-relay"):
        assert {f"{package}.{s}" for s in ("postinst", "prerm", "postrm")} <= names


@pytest.mark.parametrize("script", MAINTAINER, ids=lambda p: p.name)
def test_maintainer_scripts_are_posix_sh(script: Path) -> None:
    assert script.read_text().startswith("#!/bin/sh\n")
    assert subprocess.run(["sh", "-n", str(script)], timeout=30).returncode == 0


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck() -> None:
    done = subprocess.run(
        ["shellcheck", "--severity=warning", str(DEPLOY / "build-deb"), *map(str, MAINTAINER)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
