"""speaches' API tests (tests/api_no_speech_test.py, auth_test.py, api_transcription_clip_test.py; MIT), ported
to this server: see README.md here for sources and the rule for peers' deviations."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from tests.conftest import JFK, RunningServer, start_server
from tests.peers import deviation
from whisper_endpoint.config import Settings
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine

SILENCE_S = 45  # longer than one 30 s window, as speaches chose
KEY = "test-api-key-123"


def silence() -> io.BytesIO:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(b"\0\0" * 16_000 * SILENCE_S)
    buffer.name = "silence.wav"
    buffer.seek(0)
    return buffer


@pytest.fixture
def client(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=server.v1, api_key="unused", max_retries=0)


# ---- api_no_speech_test.py


def test_transcription_of_audio_without_speech(client: OpenAI) -> None:
    assert client.audio.transcriptions.create(model="whisper-1", file=silence()).text == ""


def test_verbose_json_transcription_of_audio_without_speech(client: OpenAI) -> None:
    result = client.audio.transcriptions.create(model="whisper-1", file=silence(), response_format="verbose_json")
    assert result.text == "" and result.segments == [] and result.words is None


def test_streaming_transcription_of_audio_without_speech(client: OpenAI) -> None:
    events = list(client.audio.transcriptions.create(model="whisper-1", file=silence(), stream=True))
    assert [e.type for e in events] == ["transcript.text.done"]
    assert events[0].text == ""


# ---- auth_test.py


@pytest.fixture(scope="module")
def keyed(engine: CTranslate2Engine) -> Iterator[RunningServer]:
    running, thread = start_server(Settings(model="base", api_key=KEY), engine)
    yield running
    running.server.should_exit = True
    thread.join(timeout=30)


@pytest.mark.parametrize("path", ["/health", "/docs", "/openapi.json"])
def test_public_endpoints_with_auth_enabled(keyed: RunningServer, path: str) -> None:
    assert httpx.get(keyed.url + path).status_code == 200


def test_protected_endpoints(keyed: RunningServer) -> None:
    """speaches answers 403 with a FastAPI `detail`; OpenAI answers 401 in its error envelope, as here."""
    for headers in ({}, {"Authorization": "Bearer wrong-api-key"}, {"Authorization": KEY}):  # the last: no scheme
        refused = httpx.get(keyed.url + "/v1/models", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.get(keyed.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    with JFK.open("rb") as f:
        upload = httpx.post(keyed.url + "/v1/audio/transcriptions", files={"file": f})
    assert upload.status_code == 401


def test_no_auth_when_disabled(server: RunningServer) -> None:
    assert httpx.get(server.url + "/v1/models").status_code == 200


@deviation(
    "speaches", "/api/ps (loaded models) is speaches' own route; this server serves one model, listed by /v1/models"
)
def test_api_ps_endpoint() -> None:
    raise AssertionError("not run")


# ---- api_transcription_clip_test.py


@deviation("speaches", "start and duration are not OpenAI fields; this server answers 400 naming them")
def test_clip_is_shorter_and_timestamps_start_at_zero() -> None:
    raise AssertionError("not run")


@deviation("speaches", "start and duration are not OpenAI fields (400 here)")
def test_clip_past_the_end_is_truncated() -> None:
    raise AssertionError("not run")


@pytest.mark.parametrize("field", ["start", "duration"])
def test_invalid_clip_is_rejected(server: RunningServer, field: str) -> None:
    """speaches refuses bad values of its clip fields with 400; here every value is refused, the field being
    unknown to OpenAI's API, and the error names it."""
    with JFK.open("rb") as f:
        r = httpx.post(server.v1 + "/audio/transcriptions", files={"file": f}, data={field: "1.0"})
    assert r.status_code == 400 and r.json()["error"]["param"] == field
