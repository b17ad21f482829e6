"""Browser tests of the web console: Debian's Chromium, headless, driven by Playwright's async API against a real
admin API (aiohttp on 127.0.0.1, a migrated SQLite database, one user per role).

Every page a test opens records each request it makes; the ``console`` fixture fails the test if any went to
another origin (the console promises to work offline: no CDN, no font service).  ``shot()`` saves a screenshot
of each screen under ``var/test-artifacts/console/`` (kept after the run, for a person to look at).
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from sqlalchemy.engine import Engine

from tests.api.conftest import PASSWORD, Api, offline_settings, sqlite_engine, start_api
from voicebot.config import Settings

__all__ = ["sqlite_engine"]  # the API tests' database fixture, used here too

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts" / "console"
# As the machine's own probe starts it: a closed network refuses Chromium's background connections, so none
# are made; a fresh profile each time; no sandbox (root in CI).
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required"]


@dataclass
class Console:
    """A running admin API, a browser context on it, and what its pages requested."""

    api: Api
    context: BrowserContext
    base: str
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    async def page(self) -> Page:
        page = await self.context.new_page()
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("console", lambda message: self.console_errors.append(message.text)
                if message.type == "error" else None)
        page.on("pageerror", lambda error: self.console_errors.append(f"page error: {error}"))
        return page

    async def sign_in(self, role: str = "admin", page: Page | None = None) -> Page:
        """A page signed in as the user named ``role``, on the dashboard."""
        page = await self.sign_in_as(role, page)
        await page.get_by_role("heading", name="Dashboard").wait_for()
        return page

    async def sign_in_as(self, username: str, page: Page | None = None, password: str = PASSWORD) -> Page:
        """A page signed in through the form (it lands on #/dashboard, whatever that shows the account)."""
        page = page or await self.page()
        await page.goto(f"{self.base}/#/login")
        await page.get_by_label("User name").fill(username)
        await page.get_by_label("Password").fill(password)
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url(re.compile(r"#/dashboard"))
        return page

    def foreign_requests(self) -> list[str]:
        origin = urlsplit(self.base).netloc
        return [url for url in self.requests
                if urlsplit(url).scheme not in ("data", "blob") and urlsplit(url).netloc != origin]


AUDIO_DURATION = """() => new Promise((resolve) => {
    const audio = document.querySelector('audio');
    if (audio.readyState >= 1) resolve(audio.duration);
    audio.addEventListener('loadedmetadata', () => resolve(audio.duration));
    audio.addEventListener('error', () => resolve(-1));
})"""
"""Evaluated in a page: the duration of its audio element once its metadata loaded (-1 if it failed to load)."""


async def shot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as a test artifact; returns its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, on the running loop."""
    if not Path(CHROMIUM).exists():  # noqa: ASYNC240 (one stat of a local file, once per test)
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


PHONE = {"width": 390, "height": 844}
"""A phone's viewport, for the narrow-screen checks."""


async def open_console(api: Api, browser: Browser, **context_args: Any) -> Console:
    """A fresh browser profile on ``api`` (1280 x 900 unless ``viewport=`` says otherwise)."""
    base = str(api.client.make_url("")).rstrip("/")
    context_args.setdefault("viewport", {"width": 1280, "height": 900})
    context = await browser.new_context(**context_args)
    context.set_default_timeout(15_000)
    return Console(api=api, context=context, base=base)


async def close_console(console: Console) -> None:
    await console.context.close()
    assert console.foreign_requests() == [], f"requests to another origin: {console.foreign_requests()}"
    # A screen that throws (the router logs what it caught with console.error) is a broken screen, even if the
    # test's clicks went through.  A refused request is the browser's own line, and a test's subject often.
    errors = [e for e in console.console_errors if not e.startswith("Failed to load resource")]
    assert not errors, errors


@contextlib.asynccontextmanager
async def served_console(settings: Settings, engine: Engine, browser: Browser, **app: Any) -> AsyncIterator[Console]:
    """An offline admin API (``app``: create_app's services, e.g. ``kb=``, ``llm=``) and a browser profile on it."""
    api = await start_api(settings, engine, offline_asterisk=True, **app)
    running = await open_console(api, browser)
    try:
        yield running
    finally:
        try:
            await close_console(running)
        finally:
            await api.client.close()


@pytest.fixture
async def console(tmp_path: Path, sqlite_engine: Engine, browser: Browser) -> AsyncIterator[Console]:
    """The console of an API without Asterisk or models (screens that need them say so)."""
    async with served_console(offline_settings(tmp_path / "data"), sqlite_engine, browser) as running:
        yield running
