"""Debian's chromium, headless, driven by Playwright: nothing downloads a browser."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import ConsoleMessage, Error, Page, sync_playwright

# Where Debian's chromium package puts the browser (`make test-deps` installs it).
CHROMIUM = Path("/usr/bin/chromium")
# Root needs --no-sandbox; the rest keeps the browser from calling home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
]


@dataclass
class BrowserErrors:
    """What the page's JavaScript got wrong: console errors and uncaught exceptions."""

    console: list[str] = field(default_factory=list)
    uncaught: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console.append(f"{message.text} at {message.location}")

    def on_page_error(self, error: Error) -> None:
        self.uncaught.append(f"{error.name}: {error.message}")


def chromium_path() -> str:
    found = CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")
    if not found:
        raise AssertionError("no chromium: run `make test-deps` (Debian's chromium package)")
    return str(found)


@contextmanager
def open_page(
    profile_dir: Path, *, width: int = 1280, height: int = 900
) -> Iterator[tuple[Page, BrowserErrors]]:
    """A fresh profile in `profile_dir`, one page, and the errors it collects."""
    errors = BrowserErrors()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile_dir,
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", errors.on_console)
            page.on("pageerror", errors.on_page_error)
            page.set_default_timeout(30_000)
            yield page, errors
        finally:
            context.close()
