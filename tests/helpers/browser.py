"""Headless Chromium for the status page tests: Debian's ``chromium`` driven by Playwright.

`browser` starts one browser (no download: the system binary); `axe_serious` runs axe-core (as
bundled by the pinned ``axe-playwright-python``) on a page and returns its serious and critical
violations; `artifact` is where screenshots go (``artifacts/`` at the top of the checkout,
ignored by git; CI keeps it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
PANEL = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}

__all__ = ["ARTIFACTS", "PANEL", "PHONE", "artifact", "axe_serious", "browser", "overflows"]


@contextmanager
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the test command installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def axe_serious(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on ``page`` as it is now."""
    from axe_playwright_python.sync_playwright import Axe  # type: ignore[import-untyped]

    results = Axe().run(page)
    violations: list[dict[str, Any]] = results.response["violations"]
    return [v for v in violations if v.get("impact") in ("serious", "critical")]


def overflows(page: Any) -> bool:
    """Whether the page scrolls sideways (it must not, on a panel or a phone)."""
    return bool(
        page.evaluate("document.documentElement.scrollWidth > document.documentElement.clientWidth")
    )
