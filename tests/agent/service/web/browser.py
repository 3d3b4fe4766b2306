"""The web page's test harness: a real service on a free port and a headless Debian chromium page.

Chromium is the system's (``scripts/system-deps.sh`` installs Debian's
``chromium``), driven by Playwright's async API with ``executable_path``:
no browser is downloaded. The page and the service share the test's event
loop, so everything a test waits for is bounded by ``asyncio.timeout`` or
Playwright's own timeouts. Screenshots go to :func:`artefacts` (kept after
the run: ``$VMR_ARTEFACTS``, else ``<tmp>/vmr-artefacts/web``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Page, async_playwright

from agent.service.pipeline import Service
from tests.agent.service.helpers import running

PAGE_TIMEOUT_MS = 60_000
"""Playwright's default wait for any one step (a loaded 2-core machine is slow)."""


def chromium() -> str:
    """Path of the system chromium (AssertionError naming the set-up step when it is missing)."""
    found = os.environ.get("VMR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is not installed: run `bash scripts/system-deps.sh` (Debian's chromium)"
    return found


def artefacts() -> Path:
    """Where screenshots are kept after the run."""
    root = Path(os.environ.get("VMR_ARTEFACTS", Path(tempfile.gettempdir()) / "vmr-artefacts")) / "web"
    root.mkdir(parents=True, exist_ok=True)
    return root


@asynccontextmanager
async def page_on(tmp_path: Path, **service: Any) -> AsyncIterator[tuple[Service, str, Page]]:
    """A started service (``running`` of the service tests) and a headless page; yields (service, ws url, page).

    The page is not navigated: tests add their streams first, then ``page.goto(http_url(url))``.
    Browser console errors are collected on ``page.errors`` (list of str) for the tests to assert on.
    """
    async with running(tmp_path, **service) as (svc, url), async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium(),
            headless=True,
            args=["--autoplay-policy=no-user-gesture-required", "--no-sandbox"],
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            setattr(page, "errors", errors)  # noqa: B010 - read by the tests
            yield svc, url, page
        finally:
            await browser.close()


def http_url(ws_url: str) -> str:
    return "http://" + ws_url.removeprefix("ws://") + "/"


async def shot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as an artefact; returns its path."""
    path = artefacts() / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
