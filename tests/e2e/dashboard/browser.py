"""Debian's Chromium driven by Playwright, and a page wrapper for the dashboard.

Playwright's own browser builds are never downloaded (`playwright install` is
never run): Playwright's bundled driver launches `/usr/bin/chromium`
(installed by scripts/ensure-chromium) with a fresh profile per test.

`Dashboard` wraps one page: it opens dashboard paths, waits for a page root to
say its data arrived (`data-loaded="true"`, per the dashboard's test-id
contract), saves the review screenshots, and collects everything that went
wrong in the browser — console errors, uncaught exceptions, failed requests
and HTTP error answers — so a test can fail on any of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import (
    ConsoleMessage,
    Error,
    Locator,
    Page,
    Request,
    Response,
    async_playwright,
    expect,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = (1280, 900)
PHONE = (390, 844)
LOAD_TIMEOUT_MS = 15_000
ACTION_TIMEOUT_MS = 10_000
"""Bounds every click, fill and navigation (Playwright's own default is 30 s)."""
SCREENSHOTS = Path(__file__).resolve().parents[3] / "build" / "test-output" / "dashboard"


def chromium_available() -> bool:
    return CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)


@dataclass(frozen=True)
class Allowed:
    """An HTTP error answer a test provokes on purpose (e.g. saving invalid YAML)."""

    status: int
    url_part: str
    method: str = "GET"


EXPECTED_ANSWERS = (
    # The API's documented "not here" answer, which the dashboard asks on
    # purpose: the processes page exists only under `crossway up`.
    Allowed(404, "/v1/processes"),
)


@dataclass
class Problems:
    console: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    http_errors: list[str] = field(default_factory=list)
    allowed: list[Allowed] = field(default_factory=list)

    def report(self) -> list[str]:
        # Chromium logs every 4xx/5xx answer as a console error too
        # ("Failed to load resource: … status of 400"); those are judged by
        # their answers (http_errors, which honour `allowed`), not twice.
        console = [m for m in self.console if "Failed to load resource" not in m]
        return console + self.failed_requests + self.http_errors


class Dashboard:
    """One browser page on the dashboard served at `base_url`."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.problems = Problems(allowed=list(EXPECTED_ANSWERS))
        self.answers: list[Response] = []
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)
        page.on("requestfailed", self._on_request_failed)
        page.on("response", self._on_response)

    # -- what went wrong ------------------------------------------------------------

    def allow_http_error(self, status: int, url_part: str, method: str = "GET") -> None:
        self.problems.allowed.append(Allowed(status, url_part, method))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.console.append(f"console error: {message.text} at {message.location}")

    def _on_page_error(self, error: Error) -> None:
        self.problems.console.append(f"uncaught: {error.message}")

    def _on_request_failed(self, request: Request) -> None:
        failure = request.failure or ""
        # A stream (SSE, long poll) the page aborts itself when it navigates
        # or unmounts a view is not a failure of the server.
        if "ERR_ABORTED" in failure:
            return
        self.problems.failed_requests.append(f"request failed: {request.url} ({failure})")

    def _on_response(self, response: Response) -> None:
        if response.status < 400:
            self.answers.append(response)
            return
        for allowed in self.problems.allowed:
            if (
                response.status == allowed.status
                and allowed.url_part in response.url
                and response.request.method == allowed.method
            ):
                return
        where = f"{response.request.method} {response.url}"
        self.problems.http_errors.append(f"HTTP {response.status}: {where}")

    def assert_clean(self) -> None:
        problems = self.problems.report()
        assert not problems, "the browser saw errors:\n" + "\n".join(problems)

    # -- navigation -----------------------------------------------------------------

    async def answers_to(self, path: str) -> list[Any]:
        """The JSON bodies of every successful answer the page got so far from
        `path` (a prefix, query string included), oldest first."""
        prefix = self.base_url + path
        return [await r.json() for r in list(self.answers) if r.url.startswith(prefix)]

    def by_id(self, test_id: str) -> Locator:
        return self.page.get_by_test_id(test_id)

    async def open(self, path: str, page_id: str) -> Locator:
        """Go to `path` and wait until the page root `page-<page_id>` has its data."""
        await self.page.goto(self.base_url + path)
        return await self.loaded(page_id)

    async def loaded(self, page_id: str) -> Locator:
        root = self.page.locator(
            f'[data-testid="page-{page_id}"][data-loaded="true"],'
            f' [data-testid="page-{page_id}"][data-loaded="error"]'
        )
        await root.first.wait_for(timeout=LOAD_TIMEOUT_MS)
        if await root.first.get_attribute("data-loaded") == "error":
            text = await root.first.inner_text()
            raise AssertionError(f"page-{page_id} failed to load its data: {text[:500]}")
        return root.first

    async def replace_editor_text(self, editor_id: str, text: str) -> None:
        """Select everything in the CodeMirror editor hosted by `editor_id` and
        insert `text` as one input (typed keys would be auto-indented and
        auto-closed)."""
        content = self.by_id(editor_id).locator(".cm-content")
        await content.click()
        await self.page.keyboard.press("Control+a")
        await self.page.keyboard.press("Delete")
        await self.page.keyboard.insert_text(text)
        await expect(content).to_contain_text(text.strip().splitlines()[0])

    # -- screenshots ----------------------------------------------------------------

    async def screenshots(self, name: str) -> list[Path]:
        """Save the current page at desktop and phone sizes, light and dark,
        under `SCREENSHOTS`: what the viewport shows (`<name>-1280x900-dark.png`)
        and the whole page (`…-full.png`); the viewport is back at desktop
        size afterwards."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        saved = []
        for width, height in (DESKTOP, PHONE):
            for theme in ("light", "dark"):
                stem = SCREENSHOTS / f"{name}-{width}x{height}-{theme}"
                await self._resize(width, height)
                await self.set_theme(theme)
                await self._settle()
                await self.page.screenshot(path=f"{stem}.png")
                # The whole page through a viewport as tall as the page (not
                # Playwright's full_page, which resizes under canvas-drawn
                # graphs and charts and catches them blank mid-redraw).
                full = await self.page.evaluate("document.documentElement.scrollHeight")
                await self._resize(width, max(height, int(full)))
                await self._settle()
                await self.page.screenshot(path=f"{stem}-full.png")
                saved += [Path(f"{stem}.png"), Path(f"{stem}-full.png")]
        await self.set_theme("light")
        await self._resize(*DESKTOP)
        return saved

    async def _resize(self, width: int, height: int) -> None:
        await self.page.set_viewport_size({"width": width, "height": height})

    async def _settle(self) -> None:
        # Charts and the graph re-lay out on resize and theme changes, on the
        # next animation frames; screenshots wait for them.
        await self.page.wait_for_timeout(500)

    async def theme(self) -> str:
        value = await self.page.evaluate("document.documentElement.dataset.theme || ''")
        return "dark" if value == "dark" else "light"

    async def set_theme(self, theme: str) -> None:
        """Switch with the page's own toggle (a cycle of at most three states)."""
        for _ in range(3):
            if await self.theme() == theme:
                return
            await self.by_id("theme-toggle").first.click()
        assert await self.theme() == theme, f"theme-toggle never switched to {theme}"


@asynccontextmanager
async def open_dashboard(base_url: str, profile: Path) -> AsyncIterator[Dashboard]:
    """A fresh Chromium (new profile, light colour scheme, desktop viewport)
    on one page of the dashboard; closed on exit."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": DESKTOP[0], "height": DESKTOP[1]},
            color_scheme="light",
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            yield Dashboard(page, base_url)
        finally:
            await context.close()


NUMBER = re.compile(r"\d+(?:\.\d+)?")


def numbers_in(text: str) -> list[str]:
    """The decimal numbers written in `text`, as written ("1,234" reads as 1234)."""
    return NUMBER.findall(text.replace(",", ""))


def shows_value(text: str, expected: float, *, rel: float = 0.0, unit_scale: float = 1.0) -> bool:
    """Whether `text` shows `expected` rounded to the precision it is written
    with (0.32 for 0.3166; 485 for 485.0), within `rel` more; or shows
    `expected / unit_scale` so (250 ms written as 0.25 s)."""
    for written in numbers_in(text):
        value = float(written)
        decimals = len(written.partition(".")[2])
        half_unit = 0.5 * 10.0**-decimals
        for target in (expected, expected / unit_scale):
            if abs(value - target) <= half_unit * 1.0001 + rel * abs(target):
                return True
    return False
