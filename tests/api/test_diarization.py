"""Speakers over HTTP with the official SDK: diarized_json, known speakers, labels in the other formats."""

from __future__ import annotations

import base64
import io
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import OpenAI
from openai.types.audio import TranscriptionDiarized

from tests.conftest import JFK, RunningServer
from tests.conversations import Conversation, build_conversations
from tests.datasets import english_normalizer


@pytest.fixture(scope="module")
def conversation(tmp_path_factory: pytest.TempPathFactory) -> Conversation:
    """Two readers taking turns, 39 s (the first conversation of the test seed)."""
    return build_conversations(tmp_path_factory.mktemp("conversations"), seed=41)[0]


@pytest.fixture
def client(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=server.v1, api_key="unused", max_retries=0)


def _data_url(path: Path) -> str:
    return "data:audio/wav;base64," + base64.b64encode(path.read_bytes()).decode()


def _wav_url(seconds: float) -> str:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes((np.sin(np.arange(int(seconds * 16_000)) / 10) * 3000).astype("<i2").tobytes())
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode()


def _speaker_at(conversation: Conversation, start: float, end: float) -> str | None:
    middle = (start + end) / 2
    owners = [t.speaker for t in conversation.turns if t.start_s - 0.3 <= middle <= t.end_s + 0.3]
    return owners[0] if len(owners) == 1 else None


@pytest.mark.slow
def test_diarized_json_in_openais_shape(client: OpenAI, conversation: Conversation) -> None:
    with conversation.path.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="diarized_json")
    assert isinstance(result, TranscriptionDiarized)  # parsed by the SDK's own model
    assert result.task == "transcribe" and result.duration == pytest.approx(conversation.duration_s + 0.5, abs=0.6)
    assert {s.speaker for s in result.segments} == {"A", "B"}
    assert all(s.type == "transcript.text.segment" and s.id.startswith("seg_") for s in result.segments)
    assert english_normalizer()(" ".join(s.text for s in result.segments)) == english_normalizer()(result.text)
    # The labels follow the readers: one label per reader, by where each segment sits among the known turns.
    owners = {(s.speaker, _speaker_at(conversation, s.start, s.end)) for s in result.segments}
    owners = {pair for pair in owners if pair[1] is not None}
    assert len(owners) == 2 and len({label for label, _ in owners}) == 2
    assert result.usage is not None and result.usage.type == "duration"


@pytest.mark.slow
def test_known_speakers_name_every_segment(client: OpenAI, conversation: Conversation) -> None:
    names = sorted(conversation.references)
    with conversation.path.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="diarized_json",
            known_speaker_names=[f"reader-{n}" for n in names],
            known_speaker_references=[_data_url(conversation.references[n]) for n in names],
        )
    assert isinstance(result, TranscriptionDiarized)
    checked = 0
    for segment in result.segments:
        owner = _speaker_at(conversation, segment.start, segment.end)
        if owner is not None:
            assert segment.speaker == f"reader-{owner}", segment
            checked += 1
    assert checked >= 5


@pytest.mark.slow
def test_speakers_in_verbose_json_srt_vtt_and_the_stream(server: RunningServer, conversation: Conversation) -> None:
    audio = conversation.path.read_bytes()

    def post(**fields: str) -> httpx.Response:
        response = httpx.post(
            f"{server.v1}/audio/transcriptions",
            files={"file": ("c.wav", audio)},
            data={"diarize": "true", **fields},
            timeout=300,
        )
        assert response.status_code == 200, response.text
        return response

    verbose = post(response_format="verbose_json").json()
    assert {s["speaker"] for s in verbose["segments"]} == {"A", "B"}
    srt = post(response_format="srt").text
    assert "\nA: " in srt and "\nB: " in srt
    vtt = post(response_format="vtt").text
    assert "<v A>" in vtt and "<v B>" in vtt
    events = [line[6:] for line in post(stream="true").text.splitlines() if line.startswith("data: ")]
    segments = [e for e in events if '"transcript.text.segment"' in e]
    assert segments and all('"speaker": "A"' in e or '"speaker": "B"' in e for e in segments)
    assert '"speaker": "B"' in "".join(segments) and '"transcript.text.done"' in events[-1]


def test_one_speaker_without_asking_for_speakers_stays_plain(client: OpenAI) -> None:
    with JFK.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
    assert result.segments and all(getattr(s, "speaker", None) is None for s in result.segments)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"known_speaker_names[]": ["a", "b"], "known_speaker_references[]": [_wav_url(3)]}, "one reference per name"),
        ({"known_speaker_names[]": ["a"], "known_speaker_references[]": ["https://x/a.wav"]}, "base64 data URL"),
        ({"known_speaker_names[]": ["a"], "known_speaker_references[]": ["data:audio/wav;base64,@@"]}, "base64"),
        ({"known_speaker_names[]": ["a"], "known_speaker_references[]": [_wav_url(1)]}, "2 to 10 s"),
        ({"known_speaker_names[]": ["a"], "known_speaker_references[]": [_wav_url(11)]}, "longer than 10 s"),
        (
            {"known_speaker_names[]": ["a"], "known_speaker_references[]": ["data:audio/wav;base64,aGVsbG8="]},
            "not audio",
        ),
        ({"known_speaker_names[]": list("abcde"), "known_speaker_references[]": [_wav_url(3)] * 5}, "at most 4"),
        ({"known_speaker_names[]": ["a", "a"], "known_speaker_references[]": [_wav_url(3)] * 2}, "must differ"),
    ],
)
def test_bad_known_speakers_are_400s(server: RunningServer, fields: dict[str, list[str]], message: str) -> None:
    response = httpx.post(
        f"{server.v1}/audio/transcriptions",
        files={"file": ("jfk.flac", JFK.read_bytes())},
        data={"response_format": "diarized_json", **fields},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    assert error["param"].startswith("known_speaker_")


def test_translations_have_no_speakers(server: RunningServer) -> None:
    response = httpx.post(
        f"{server.v1}/audio/translations",
        files={"file": ("jfk.flac", JFK.read_bytes())},
        data={"response_format": "diarized_json"},
        timeout=60,
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "response_format"
