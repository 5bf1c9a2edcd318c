"""/docs rendered by headless Chromium with every external request blocked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import RunningServer

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_docs_render_offline(server: RunningServer) -> None:
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1000})

        def route(r):  # type: ignore[no-untyped-def]
            if r.request.url.startswith(server.url):
                r.continue_()
            else:  # the network is unplugged for anything but our server
                outside.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.goto(server.url + "/docs")
        page.wait_for_selector('[data-path="/v1/audio/transcriptions"]', timeout=30_000)
        page.click("#operations-audio-create_transcription_v1_audio_transcriptions_post button.opblock-summary-control")
        page.wait_for_selector(".parameter__name", timeout=10_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "docs.png"), full_page=True)
        text = page.inner_text("body").replace("\u200b", "")  # Swagger breaks paths with zero-width spaces
        browser.close()
    assert "/api/v1/audio/translations" in text and "/v1/audio/transcriptions" in text
    for field in ("response_format", "timestamp_granularities[]", "chunking_strategy", "verbose_json"):
        assert field in text
    assert outside == []
