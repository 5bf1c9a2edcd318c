"""Headless Debian Chromium through Playwright, with the network unplugged except for our server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


@contextmanager
def offline_page(server_url: str, outside: list[str], args: tuple[str, ...] = (), **context: Any) -> Iterator[Any]:
    """A page that may reach `server_url` only; every other URL it asks for is aborted and listed in `outside`.
    `args`: more Chromium switches (a fake microphone)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                *args,
            ],
        )
        page = browser.new_context(**context).new_page()

        def route(r):  # type: ignore[no-untyped-def]
            url = r.request.url
            if url.startswith((server_url, server_url.replace("http", "ws", 1), "blob:", "data:")):
                r.continue_()
            else:
                outside.append(url)
                r.abort()

        page.route("**/*", route)
        try:
            yield page
        finally:
            browser.close()
