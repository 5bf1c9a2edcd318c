"""vLLM's Whisper transcription and translation API tests (tests/entrypoints/openai/speech_to_text, Apache-2.0),
ported to this server: see README.md here for sources and the rule for peers' deviations."""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.conftest import JFK, RunningServer
from tests.datasets import DATA
from tests.peers import deviation
from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.decode import AudioSource, load_audio

ITALIAN = DATA / "D_multilingual" / "picovoice" / "test_it.wav"
GERMAN = DATA / "D_multilingual" / "picovoice" / "test_de.wav"
LIBRISPEECH = sorted((DATA / "B_librispeech" / "test-clean").rglob("*.flac"))[0]
JFK_S = 11.0


@pytest.fixture
def client(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=server.v1, api_key="unused", max_retries=0)


def _repeated_wav(path: Path, times: int, silence_s: float) -> io.BytesIO:
    audio = load_audio(AudioSource(path))
    padded = np.concatenate([audio, np.zeros(int(silence_s * SAMPLE_RATE), np.float32)])
    pcm = (np.clip(np.tile(padded, times), -1, 1) * 32767).astype(np.int16)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=SAMPLE_RATE)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    buffer.seek(0)
    buffer.name = f"repeated-{path.stem}.wav"
    return buffer


# ---- test_transcription_validation_whisper.py


def test_basic_audio(client: OpenAI) -> None:
    """vLLM: the text holds the clip's opening words and usage counts its whole seconds (vLLM asks for
    response_format=text and parses JSON out of it, its own deviation; OpenAI's json is asked for here)."""
    with JFK.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, language="en", temperature=0.0)
    assert "And so my fellow Americans" in result.text
    assert result.usage is not None and result.usage.type == "duration" and result.usage.seconds == math.ceil(JFK_S)


def test_basic_audio_batched(client: OpenAI) -> None:
    def send(path: Path) -> str:
        with path.open("rb") as f:
            return client.audio.transcriptions.create(model="whisper-1", file=f, language="en").text

    with ThreadPoolExecutor(2) as pool:
        jfk, libri = pool.map(send, [JFK, LIBRISPEECH])
    assert "ask not what your country can do for you" in jfk
    assert len(libri.split()) >= 5 and "country" not in libri


def test_bad_requests(client: OpenAI) -> None:
    with JFK.open("rb") as f, pytest.raises(openai.BadRequestError) as raised:
        client.audio.transcriptions.create(model="whisper-1", file=f, language="hh")
    assert raised.value.status_code == 400 and raised.value.body["param"] == "language"  # type: ignore[index]


@pytest.mark.slow
def test_long_audio_request(client: OpenAI) -> None:
    """Ten copies of a clip with a little silence after each: every copy transcribed, usage the whole length."""
    buffer = _repeated_wav(JFK, 10, 0.1)
    result = client.audio.transcriptions.create(model="whisper-1", file=buffer, language="en")
    words = "".join(c for c in result.text.lower() if c.isalpha() or c == " ")  # punctuation varies by copy
    assert words.count("ask not what your country can do for you") == 10, result.text
    assert result.usage is not None and result.usage.seconds == math.ceil(10 * (JFK_S + 0.1))  # type: ignore[union-attr]


def test_invalid_audio_file(client: OpenAI) -> None:
    """vLLM checks its own message text; OpenAI's envelope and code are checked here."""
    bad = io.BytesIO(b"not a valid audio file")
    bad.name = "invalid.wav"
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.transcriptions.create(model="whisper-1", file=bad, language="en")
    assert raised.value.status_code == 400 and raised.value.code == "invalid_audio"


def test_completion_endpoints(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="whisper-1", messages=[{"role": "user", "content": "Hello"}])
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="whisper-1", prompt="Hello")


def test_streaming_response(client: OpenAI) -> None:
    """The stream's text equals the non-streamed text (vLLM streams chat-completion chunks, its deviation; these
    are OpenAI's transcript.text events)."""
    with JFK.open("rb") as f:
        plain = client.audio.transcriptions.create(model="whisper-1", file=f, language="en").text
    with JFK.open("rb") as f:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=f, language="en", stream=True))
    streamed = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert streamed == plain
    assert events[-1].type == "transcript.text.done" and events[-1].text == plain


@deviation(
    "vLLM",
    "stream_include_usage and stream_continuous_usage_stats are not OpenAI fields; this server answers "
    "400 naming the field, and sends usage on transcript.text.done (tests/api/test_conformance.py)",
)
def test_stream_options() -> None:
    raise AssertionError("not run")


@deviation(
    "vLLM",
    "seed, top_k, top_p, min_p, repetition and presence penalties are not OpenAI fields; this server "
    "answers 400 naming the field",
)
def test_sampling_params() -> None:
    raise AssertionError("not run")


def test_audio_prompt(client: OpenAI) -> None:
    """A prompt must not make Whisper skip the start of the audio."""
    with JFK.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1", file=f, language="en", prompt="This is a speech, recorded in 1961."
        )
    assert "And so my fellow Americans" in result.text


def test_audio_with_timestamp(client: OpenAI) -> None:
    with JFK.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1", file=f, language="en", response_format="verbose_json"
        )
    assert result.segments
    assert result.segments[0].avg_logprob is not None and result.segments[0].compression_ratio is not None


@deviation("vLLM", "max_completion_tokens is not an OpenAI transcription field; this server answers 400 naming it")
def test_audio_with_max_tokens() -> None:
    raise AssertionError("not run")


@pytest.mark.parametrize(
    ("path", "language", "words"), [(JFK, "english", ["country"]), (ITALIAN, "italian", ["radio"])]
)
def test_language_auto_detect(client: OpenAI, path: Path, language: str, words: list[str]) -> None:
    """vLLM expects the code ("en") in verbose_json's language; OpenAI returns the name, as here."""
    with path.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
    assert result.language == language
    assert any(w in result.text.lower() for w in words), result.text


@deviation("vLLM", "use_beam_search and n are not OpenAI fields (400 here); the CLI's --beam-size covers beam search")
def test_whisper_beam_search_single_beam() -> None:
    raise AssertionError("not run")


@deviation("vLLM", "use_beam_search and n are not OpenAI fields (400 here)")
def test_whisper_beam_search_multibeam() -> None:
    raise AssertionError("not run")


@deviation("vLLM", "use_beam_search is not an OpenAI field (400 here, streamed or not)")
def test_stream_with_beams_raises() -> None:
    raise AssertionError("not run")


# ---- test_translation_validation.py


def test_translation_basic_audio(client: OpenAI) -> None:
    """vLLM passes language and to_language to translations, which OpenAI's translations do not take (400 here:
    tests/api/test_conformance.py); the source language is detected."""
    with ITALIAN.open("rb") as f:
        result = client.audio.translations.create(model="whisper-1", file=f)
    assert "radio" in result.text.lower() and "sempre" not in result.text.lower(), result.text


@pytest.mark.slow
def test_translation_audio_prompt(client: OpenAI) -> None:
    """The prompt conditions the translation but is not repeated in it."""
    prompt = "Nor have I ever"
    with GERMAN.open("rb") as f:
        result = client.audio.translations.create(model="whisper-1", file=f, prompt=prompt)
    assert prompt not in result.text and result.text.strip()


@deviation("vLLM", "OpenAI's translations do not stream; stream on translations is a 400 naming it here")
def test_translation_streaming_response() -> None:
    raise AssertionError("not run")


@deviation("vLLM", "stream options on translations are not OpenAI fields (400 here)")
def test_translation_stream_options() -> None:
    raise AssertionError("not run")


@pytest.mark.slow
def test_translation_long_audio_request(client: OpenAI, server: RunningServer) -> None:
    """Twice the clip, translated: twice the text (vLLM counts a phrase; here the repeated clip's translation is
    about twice as long as the single one's, since Whisper's wording of one sentence may vary).

    With 2 s between the copies. With 0.5 s, whisper-base writes one 5.5 s Italian sentence heard twice in one
    window as one sentence spanning both, in translation and transcription alike (a limit of the model: its
    timestamps cover the whole window, so nothing marks the second copy as lost)."""
    with ITALIAN.open("rb") as f:
        once = client.audio.translations.create(model="whisper-1", file=f).text
    twice = client.audio.translations.create(model="whisper-1", file=_repeated_wav(ITALIAN, 2, 2.0)).text
    assert 1.5 < len(twice.split()) / len(once.split()) < 2.6, (once, twice)
    assert twice.lower().count("radio") == 2, twice
    assert httpx.get(f"{server.url}/ready").status_code == 200


@deviation("vLLM", "max_completion_tokens is not an OpenAI translation field (400 here)")
def test_translation_audio_with_max_tokens() -> None:
    raise AssertionError("not run")
