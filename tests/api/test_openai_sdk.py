"""The official openai SDK against a real server on a loopback port."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.conftest import EXTERNAL_ENGINE, JFK, RunningServer
from tests.datasets import clips, english_normalizer

JFK_NORMALIZED = (
    "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
)


@pytest.fixture(params=["/v1", "/api/v1"])
def client(request: pytest.FixtureRequest, server: RunningServer) -> OpenAI:
    return OpenAI(base_url=server.url + request.param, api_key="unused", max_retries=0)


@pytest.mark.slow
def test_json_and_text(client: OpenAI) -> None:
    with JFK.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert english_normalizer()(result.text) == JFK_NORMALIZED
    with JFK.open("rb") as f:
        text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert english_normalizer()(str(text)) == JFK_NORMALIZED


@pytest.mark.slow
def test_srt_and_vtt(client: OpenAI) -> None:
    with JFK.open("rb") as f:
        srt = str(client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt"))
    assert srt.startswith("1\n00:00:00,") and " --> 00:00:1" in srt
    with JFK.open("rb") as f:
        vtt = str(client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt"))
    assert vtt.startswith("WEBVTT\n\n00:00:00.")


@pytest.mark.slow
def test_verbose_json_with_words_and_segments(client: OpenAI) -> None:
    if EXTERNAL_ENGINE == "vllm":  # no word alignment there: a clear 400 instead
        with JFK.open("rb") as f, pytest.raises(openai.BadRequestError, match="word timestamps"):
            client.audio.transcriptions.create(
                model="whisper-1", file=f, response_format="verbose_json", timestamp_granularities=["word"]
            )
        return
    with JFK.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
    assert result.language == "english" and result.duration == pytest.approx(11.0, abs=0.1)
    assert result.segments and result.words
    assert [w.word.strip() for w in result.words][:3] == ["And", "so", "my"]
    assert all(a.start <= b.start for a, b in zip(result.words, result.words[1:], strict=False))
    with JFK.open("rb") as f:
        words_only = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", timestamp_granularities=["word"]
        )
    assert words_only.words and not words_only.segments


def test_streaming_events(client: OpenAI) -> None:
    with JFK.open("rb") as f:
        stream = client.audio.transcriptions.create(model="whisper-1", file=f, stream=True)
        events = list(stream)
    types = [e.type for e in events]
    assert types[-1] == "transcript.text.done"
    assert "transcript.text.delta" in types and "transcript.text.segment" in types
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert deltas.strip() == events[-1].text


def test_logprobs(client: OpenAI) -> None:
    with JFK.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, include=["logprobs"])
    assert result.logprobs and all(lp.logprob is not None and lp.logprob <= 0 for lp in result.logprobs)


@pytest.mark.slow
def test_translation_and_language_detection(client: OpenAI) -> None:
    german = next(c for c in clips("D_multilingual") if c.language == "de")
    with german.path.open("rb") as f:
        detected = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
    assert detected.language == "german"
    with german.path.open("rb") as f:
        translated = client.audio.translations.create(model="whisper-1", file=f, response_format="verbose_json")
    assert translated.language == "english"  # the spec: a translation's language is its output's
    assert translated.text and translated.text != detected.text
    with german.path.open("rb") as f:  # candidates restrict detection: German audio, Spanish or Italian allowed
        forced = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="json", extra_body={"languages": ["es", "it"]}
        )
    assert forced.languages and forced.languages[0].code in ("es", "it")


def test_models(client: OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["whisper-1", "base"]  # the alias clients send, and what serves it
    assert all(m.model_extra and m.model_extra["root"] == "base" for m in models.data)
    assert client.models.retrieve("whisper-1").id == "whisper-1"
    assert client.models.retrieve("base").id == "base"


def test_keywords_are_accepted_and_follow_the_prompt(client: OpenAI) -> None:
    from whisper_endpoint.decoding.options import with_keywords

    assert with_keywords("A speech.", ["Kennedy", " Americans "]) == "A speech. Kennedy, Americans."
    assert with_keywords(None, ["Kennedy"]) == "Kennedy." and with_keywords("", []) is None
    with JFK.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="json", extra_body={"keywords": ["Americans", "country"]}
        )
    assert "ask not what your country can do for you" in result.text
