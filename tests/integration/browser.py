"""A real browser for the page tests: Debian's chromium, driven by ``playwright.async_api``.

Playwright's own browser download cannot work where the tests run, so the browser is the system
one (``/usr/bin/chromium``, which ``make test`` installs when it can). Each helper skips the test,
naming what is missing, when the browser or the ``playwright`` package is absent; nothing else
skips.

    async with chromium() as browser:
        page = await browser.new_page()
        errors = PageErrors(page)  # before goto: script, console and CSP errors
        ...
        print(await screenshot(page, "jobs-page"))
        errors.check()

Screenshots go under ``test-artifacts/`` at the repository root (``JOBGATE_TEST_ARTIFACTS``
moves it), where CI can keep them.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser, ConsoleMessage, Page

CHROMIUM = Path(os.environ.get("JOBGATE_TEST_CHROMIUM", "/usr/bin/chromium"))
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("JOBGATE_TEST_ARTIFACTS", REPO / "test-artifacts"))
# Running as root (containers, CI) chromium refuses its sandbox; the pages under test are ours.
LAUNCH_ARGS = ("--no-sandbox", "--disable-dev-shm-usage")


def require_browser() -> Path:
    """The chromium executable, or a skip that names what is missing."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[test]')")
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        hint = f" (a chromium is at {found}: set JOBGATE_TEST_CHROMIUM)" if found else ""
        pytest.skip(
            f"no browser at {CHROMIUM}: `make test` installs Debian's chromium "
            f"(apt-get install -y chromium){hint}"
        )
    return CHROMIUM


@asynccontextmanager
async def chromium(**launch: Any) -> AsyncIterator[Browser]:
    """A headless chromium for one test, closed afterwards; extra arguments go to ``launch``."""
    executable = require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(executable),
            args=[*LAUNCH_ARGS, *launch.pop("args", ())],
            **launch,
        )
        try:
            yield browser
        finally:
            await browser.close()


def artifact_path(name: str, suffix: str = ".png") -> Path:
    """A path under the artifacts directory for ``name`` (made safe for a file name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "artifact"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"{safe}{suffix}"


async def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Save a PNG of ``page`` as ``test-artifacts/<name>.png``, print its path and return it."""
    path = artifact_path(name)
    await page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")
    return path


async def no_horizontal_scroll(page: Page) -> tuple[int, int]:
    """``(scrollWidth, innerWidth)`` of the document: the first must not exceed the second."""
    widths = await page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    return int(widths[0]), int(widths[1])


class PageErrors:
    """Script errors, console errors and CSP refusals a page logs: ``check()`` fails on any.

    Make it right after the page, before ``goto``, so nothing logged early is missed. The browser
    logs every 4xx or 5xx answer as "Failed to load resource"; the pages report those themselves,
    so those lines are left out."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        text = message.text
        if message.type == "error" and not text.startswith("Failed to load resource"):
            self.errors.append(f"console: {text}")

    def check(self) -> None:
        assert self.errors == [], self.errors
