"""/docs rendered by headless Chromium with every external request blocked."""

from __future__ import annotations

import pytest

from tests.api.browser import ARTIFACTS, needs_chromium, offline_page
from tests.conftest import RunningServer


@needs_chromium
@pytest.mark.slow
def test_docs_render_offline(server: RunningServer) -> None:
    outside: list[str] = []
    with offline_page(server.url, outside, viewport={"width": 1280, "height": 1000}) as page:
        page.goto(server.url + "/docs")
        page.wait_for_selector('[data-path="/v1/audio/transcriptions"]', timeout=30_000)
        page.click("#operations-audio-create_transcription_v1_audio_transcriptions_post button.opblock-summary-control")
        page.wait_for_selector(".parameter__name", timeout=10_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "docs.png"), full_page=True)
        text = page.inner_text("body").replace("\u200b", "")  # Swagger breaks paths with zero-width spaces
    assert "/api/v1/audio/translations" in text and "/v1/audio/transcriptions" in text
    for field in ("response_format", "timestamp_granularities[]", "chunking_strategy", "verbose_json"):
        assert field in text
    assert outside == []
