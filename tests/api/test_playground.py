"""The playground page at /, driven by headless Chromium against a real server on loopback."""

from __future__ import annotations

import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.api.browser import ARTIFACTS, needs_chromium, offline_page
from tests.conftest import JFK, RunningServer, start_server
from tests.datasets import clips, english_normalizer, wer
from whisper_endpoint.audio.decode import AudioSource, load_audio
from whisper_endpoint.config import Settings
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine

KEY = "playground-key"
CLIP = next(c for c in clips("C_longform") if c.path.name.startswith("earnings22_1"))


@pytest.fixture(scope="module")
def keyed_server(engine: CTranslate2Engine) -> Iterator[RunningServer]:
    # Sequential windows make the stream arrive in several steps, so "text while streaming" is observable.
    running, thread = start_server(Settings(model="base", api_key=KEY, strategy="sequential"), engine)
    yield running
    running.server.should_exit = True
    thread.join(timeout=30)


def api(server: RunningServer, path: Path, **form: str) -> httpx.Response:
    with path.open("rb") as f:
        return httpx.post(
            f"{server.v1}/audio/transcriptions",
            files={"file": (path.name, f)},
            data=form,
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=300,
        )


@needs_chromium
@pytest.mark.slow
def test_playground_streams_shows_segments_and_downloads_srt(keyed_server: RunningServer, tmp_path: Path) -> None:
    outside: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    # bypass_csp: Playwright evaluates its wait conditions as strings, which the page's CSP forbids.
    with offline_page(
        keyed_server.url, outside, viewport={"width": 1280, "height": 800}, accept_downloads=True, bypass_csp=True
    ) as page:
        page.goto(keyed_server.url + "/")
        page.wait_for_function("document.getElementById('model').textContent === 'base'")
        page.set_input_files("#file", str(CLIP.path))

        # Without the key: the API's 401 message, readable.
        page.click("#submit")
        page.wait_for_selector("body[data-state=failed]")
        assert "API key" in page.inner_text("#error")

        page.fill("#key", KEY)
        page.click("#submit")
        page.wait_for_function(
            "document.body.dataset.state === 'streaming' && document.getElementById('live').textContent.length > 0",
            timeout=120_000,
        )
        partial = page.inner_text("#live")
        page.wait_for_selector("body[data-state=done]", timeout=120_000)
        final = page.inner_text("#live")
        segments = page.locator("#segments li")
        assert segments.count() >= 2
        assert partial.strip() and final.startswith(partial.strip()[:20]) and len(final) > len(partial)
        assert wer([CLIP.reference], [final]) < 0.25
        assert page.inner_text("#segments li:nth-child(2) time").startswith("0:")
        page.screenshot(path=str(ARTIFACTS / "playground-desktop.png"), full_page=True)

        # A segment plays the audio from its start.
        page.wait_for_function("document.getElementById('player').readyState >= 1")
        start_s = float(
            page.evaluate(
                "document.querySelectorAll('#segments time')[1].textContent.split(' ')[0]"
                ".split(':').reduce((m, s) => m * 60 + parseFloat(s), 0)"
            )
        )
        segments.nth(1).locator("button").click()
        assert abs(page.evaluate("document.getElementById('player').currentTime") - start_s) < 0.2

        with page.expect_download() as download_info:
            page.click("#download-srt")
        srt = Path(download_info.value.path()).read_text(encoding="utf-8")
        assert download_info.value.suggested_filename == CLIP.path.stem + ".srt"

        # Phone width: everything fits without sideways scrolling.
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(ARTIFACTS / "playground-phone.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390

        # An undecodable file: the API's own message on the page.
        broken = tmp_path / "broken.mp3"
        broken.write_bytes(b"this is not audio at all " * 200)
        page.set_input_files("#file", str(broken))
        page.click("#submit")
        page.wait_for_selector("body[data-state=failed]")
        shown = page.inner_text("#error")

    expected = api(keyed_server, CLIP.path, response_format="srt")
    assert expected.status_code == 200
    assert srt == expected.text
    refused = api(keyed_server, broken)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] in shown
    assert outside == []


def test_playground_page_is_self_contained(keyed_server: RunningServer) -> None:
    page = httpx.get(keyed_server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for asset in ("/static/playground/playground.js", "/static/playground/playground.css"):
        assert asset in page.text
        body = httpx.get(keyed_server.url + asset).text
        assert "http://" not in body and "https://" not in body


@needs_chromium
def test_playground_names_every_language_has_a_readable_key_placeholder_and_an_icon(
    keyed_server: RunningServer,
) -> None:
    from whisper_endpoint.decoding.languages import LANGUAGES

    icon = httpx.get(keyed_server.url + "/static/playground/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    outside: list[str] = []
    with offline_page(keyed_server.url, outside, bypass_csp=True) as page:
        page.goto(keyed_server.url + "/")
        options = page.eval_on_selector_all("#language option", "os => os.map(o => [o.value, o.textContent])")
        shown = {value: text for value, text in options if value}
        assert set(shown) == set(LANGUAGES)
        assert all(text == f"{LANGUAGES[code].title()} ({code})" for code, text in shown.items())
        placeholder = page.evaluate("getComputedStyle(document.getElementById('key'), '::placeholder').color")
        assert placeholder == "rgb(93, 107, 120)"  # the page's muted text colour: 5.4:1 on white
        assert page.evaluate("document.querySelector('link[rel=icon]').href").endswith("/favicon.svg")
    assert outside == []


@needs_chromium
@pytest.mark.slow
def test_playground_live_mode_shows_partial_then_final_text_from_a_microphone(
    keyed_server: RunningServer, tmp_path: Path
) -> None:
    """Chromium's fake microphone plays JFK (then silence) into the page's live mode, with the page's own CSP."""
    samples = np.concatenate([load_audio(AudioSource(JFK)), np.zeros(48_000, np.float32)])
    microphone = tmp_path / "microphone.wav"
    with wave.open(str(microphone), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16_000)
        f.writeframes((samples * 32767).astype("<i2").tobytes())
    switches = (
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}%noloop",
    )
    outside: list[str] = []
    with offline_page(keyed_server.url, outside, args=switches, permissions=["microphone"]) as page:
        page.goto(keyed_server.url + "/")
        page.fill("#key", KEY)  # sent as a WebSocket subprotocol: a browser cannot set the header
        # Every text the partial line shows, before the turns it belongs to complete (it lasts a moment only).
        page.evaluate(
            "window.shown = []; new MutationObserver(() => { const t = document.getElementById('live').textContent;"
            " if (t) window.shown.push([t, document.querySelectorAll('#turns li').length]); })"
            ".observe(document.getElementById('live'), {childList: true, characterData: true, subtree: true})"
        )
        page.click("#live-button")
        page.wait_for_selector("body[data-state=streaming]", timeout=30_000)
        page.wait_for_selector("#turns li:nth-child(3)", timeout=120_000)  # JFK's pauses cut it into turns
        shown = page.evaluate("window.shown")
        turns = " ".join(page.locator("#turns li").all_inner_texts())
        page.screenshot(path=str(ARTIFACTS / "playground-live.png"), full_page=True)
        page.click("#live-button")
        page.wait_for_selector("body[data-state=done]")
    normalize = english_normalizer()
    assert shown, "no partial text was shown"
    partial, turns_before = shown[0]
    assert turns_before == 0 and normalize(partial).split()[0] in normalize(turns)  # shown before turn 1 ended
    # "ask not", a turn of 0.5 s between two long pauses, is sometimes misheard alone ("not"): not asserted.
    assert "my fellow" in normalize(turns) and "what your country can do for you" in normalize(turns)
    assert outside == []
