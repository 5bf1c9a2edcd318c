"""Every response format and stream event against OpenAI's published schemas (vendored in spec/openai_audio.json,
with its source and date) and the `openai` SDK's own model classes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openai.types import Model
from openai.types.audio import (
    Transcription,
    TranscriptionStreamEvent,
    TranscriptionVerbose,
    Translation,
    TranslationVerbose,
)
from pydantic import TypeAdapter

from tests.conftest import JFK, RunningServer
from tests.datasets import clips

SPEC = json.loads((Path(__file__).parent / "spec" / "openai_audio.json").read_text())


def conforms(body: Any, schema: str) -> None:
    validator = Draft202012Validator({"$ref": f"#/components/schemas/{schema}", **SPEC})
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
    assert errors == [], (schema, errors)


def _post(server: RunningServer, task: str, path: Path = JFK, **data: Any) -> httpx.Response:
    with path.open("rb") as f:
        r = httpx.post(f"{server.v1}/audio/{task}", files={"file": (path.name, f)}, data=data, timeout=120)
    assert r.status_code == 200, r.text
    return r


@pytest.mark.slow
def test_transcription_formats(server: RunningServer) -> None:
    plain = _post(server, "transcriptions").json()
    conforms(plain, "CreateTranscriptionResponseJson")
    assert Transcription.model_validate(plain).usage is not None
    with_segments = _post(server, "transcriptions", **{"timestamp_granularities[]": "segment"}).json()
    conforms(with_segments, "CreateTranscriptionResponseJson")  # json with segment granularity: accepted
    logprobs = _post(server, "transcriptions", **{"include[]": "logprobs"}).json()
    conforms(logprobs, "CreateTranscriptionResponseJson")
    verbose = _post(
        server, "transcriptions", response_format="verbose_json", **{"timestamp_granularities[]": ["word", "segment"]}
    ).json()
    conforms(verbose, "CreateTranscriptionResponseVerboseJson")
    parsed = TranscriptionVerbose.model_validate(verbose)
    assert parsed.words and parsed.words[0].word == "And" and parsed.segments
    assert all(w.word == w.word.strip() for w in parsed.words)
    text = _post(server, "transcriptions", response_format="text")
    assert text.headers["content-type"].startswith("text/plain") and text.text.strip() == plain["text"]
    srt = _post(server, "transcriptions", response_format="srt").text
    vtt = _post(server, "transcriptions", response_format="vtt").text
    assert srt.startswith("1\n00:00:00,") and vtt.startswith("WEBVTT\n\n00:00:")


@pytest.mark.slow
def test_translation_formats(server: RunningServer) -> None:
    german = next(c for c in clips("D_multilingual") if c.language == "de").path
    plain = _post(server, "translations", german).json()
    conforms(plain, "CreateTranslationResponseJson")
    Translation.model_validate(plain)
    verbose = _post(server, "translations", german, response_format="verbose_json").json()
    conforms(verbose, "CreateTranslationResponseVerboseJson")
    assert TranslationVerbose.model_validate(verbose).language == "english"


@pytest.mark.slow
def test_stream_events(server: RunningServer) -> None:
    long_form = next(c for c in clips("C_longform") if c.path.name.startswith("earnings22")).path
    with long_form.open("rb") as f:
        r = httpx.post(
            f"{server.v1}/audio/transcriptions",
            files={"file": (long_form.name, f)},
            data={"stream": "true"},
            timeout=300,
        )
    events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    kinds = {
        "transcript.text.delta": "TranscriptTextDeltaEvent",
        "transcript.text.segment": "TranscriptTextSegmentEvent",
    }
    kinds["transcript.text.done"] = "TranscriptTextDoneEvent"
    adapter: TypeAdapter[Any] = TypeAdapter(TranscriptionStreamEvent)
    for event in events:
        conforms(event, kinds[event["type"]])
        assert adapter.validate_python(event).type == event["type"]
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    done = events[-1]
    assert done["type"] == "transcript.text.done" and len(deltas) >= 3
    assert "".join(deltas) == done["text"]  # the deltas joined are exactly the final text
    assert done["usage"]["type"] == "tokens" and done["usage"]["output_tokens"] > len(done["text"].split())
    segments = [e for e in events if e["type"] == "transcript.text.segment"]
    assert len(segments) == len(deltas) and all(s["speaker"] == "A" for s in segments)


def test_errors_and_models(server: RunningServer) -> None:
    bad = httpx.post(f"{server.v1}/audio/transcriptions", files={"file": ("x.mp3", b"\0" * 100)})
    assert bad.status_code == 400
    conforms(bad.json(), "ErrorResponse")
    unknown = httpx.get(f"{server.v1}/models/gpt-9")
    assert unknown.status_code == 404
    conforms(unknown.json(), "ErrorResponse")
    listed = httpx.get(f"{server.v1}/models").json()
    conforms(listed, "ListModelsResponse")
    for card in listed["data"]:
        conforms(card, "Model")
        Model.model_validate(card)
    alias = httpx.get(f"{server.v1}/models/whisper-1").json()
    conforms(alias, "Model")
    assert alias["id"] == "whisper-1"


@pytest.mark.parametrize("field", ["stream", "language", "bogus"])
def test_fields_an_endpoint_does_not_take_are_400(server: RunningServer, field: str) -> None:
    with JFK.open("rb") as f:
        r = httpx.post(f"{server.v1}/audio/translations", files={"file": f}, data={field: "true"})
    assert r.status_code == 400
    conforms(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == field
