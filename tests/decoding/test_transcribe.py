"""The real CTranslate2 engine with the bundled weights on real speech."""

from __future__ import annotations

import re
import statistics
import weakref
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.datasets import DATA, clips, english_normalizer, wer
from whisper_endpoint.audio.chunking import iter_speech_chunks
from whisper_endpoint.audio.decode import AudioSource, iter_audio
from whisper_endpoint.decoding.options import DecodeOptions
from whisper_endpoint.decoding.transcribe import detect_language, transcribe
from whisper_endpoint.engines.base import (
    AlignInput,
    Alignment,
    Cancellation,
    DescribedEngine,
    EngineDescription,
    Generation,
    HandedOverWindows,
    SamplingOptions,
    WindowInput,
)
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine

JFK_COPIES = sorted((DATA / "A_short_en").glob("jfk*"))
JFK_REFERENCE = (
    "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
)
CONTAINERS = sorted(p for p in (DATA / "E_containers").glob("*") if p.is_file())
VARIANTS = sorted((DATA / "E_containers" / "variants").glob("*"))


def normalized(text: str) -> str:
    return str(english_normalizer()(text))


# Greedy base and tiny.en hear "my fellow America asked" on these recordings; faster-whisper 1.2.1 with
# the same weights says the same (measured), so it is the model, not the pipeline: 3 words at most.
MODEL_LIMITED = {"jfk_441khz_whisperkit.m4a", "jfk_gsm.wav", "jfk_after_30s_silence.wav"}


@pytest.mark.parametrize("model", ["base", "tiny.en"])
@pytest.mark.slow
def test_jfk_copies_are_word_perfect(model: str, engine: CTranslate2Engine, tiny_engine: CTranslate2Engine) -> None:
    chosen = engine if model == "base" else tiny_engine
    assert len(JFK_COPIES) == 4
    for path in JFK_COPIES:
        transcript = transcribe(AudioSource(path), chosen, DecodeOptions())
        assert transcript.language == "en"
        if path.name in MODEL_LIMITED:
            assert wer([JFK_REFERENCE], [transcript.text]) <= 3 / 22, path.name
        else:
            assert normalized(transcript.text) == normalized(JFK_REFERENCE), path.name


@pytest.mark.slow
def test_every_container_gives_the_jfk_text(engine: CTranslate2Engine) -> None:
    perfect = 0
    files = [p for p in CONTAINERS + VARIANTS if "x10" not in p.name]
    for path in files:
        transcript = transcribe(AudioSource(path, raw_pcm=path.suffix == ".raw"), engine, DecodeOptions())
        error_rate = wer([JFK_REFERENCE], [transcript.text])
        assert error_rate <= 3 / 22, (path.name, transcript.text)  # at worst the model's "America asked"
        perfect += error_rate == 0
    assert perfect >= 20  # 22 of 29 measured; the rest differ by the model's "America asked"


PHRASES = ("and so", "ask not")  # where the model starts a segment in the JFK sentence


@pytest.mark.parametrize("strategy", ["batched", "sequential"])
@pytest.mark.slow
def test_jfk_loop_gives_ten_sentences_eleven_seconds_apart(strategy: str, engine: CTranslate2Engine) -> None:
    path = DATA / "E_containers" / "variants" / "jfk_x10_110s.wav"
    transcript = transcribe(AudioSource(path), engine, DecodeOptions(strategy=strategy))  # type: ignore[arg-type]
    text = normalized(transcript.text)
    assert text.count("ask not what your country can do for you") == 10
    # Where the model cuts its segments depends on the CPU's int8 kernels (measured: AVX-512 starts each at
    # "and so", AVX2 at "ask not", the first copy then inside the first segment): each copy's start by either
    starts = max(
        ([s.start_ms for s in transcript.segments if normalized(s.text).startswith(phrase)] for phrase in PHRASES),
        key=len,
    )
    assert len(starts) >= 9, [(s.start_ms, s.text) for s in transcript.segments]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(10_000 <= gap <= 12_000 for gap in gaps), gaps


@pytest.mark.slow
def test_librispeech_wer_with_base(engine: CTranslate2Engine) -> None:
    test_clean = clips("B_librispeech")
    assert len(test_clean) == 74
    hypotheses = [transcribe(AudioSource(c.path), engine, DecodeOptions(language="en")).text for c in test_clean]
    assert wer([c.reference for c in test_clean], hypotheses) <= 0.055


@pytest.mark.slow
def test_language_detection_and_translation(engine: CTranslate2Engine) -> None:
    multilingual = [c for c in clips("D_multilingual") if c.language in {"de", "es", "fr", "pt"}]
    assert len(multilingual) >= 40
    # detection alone, from each clip's first speech chunk as transcription takes it (whole transcripts of the
    # 40-odd clips took two minutes); the German clip below is detected through `transcribe` itself
    first_chunks = [next(iter_speech_chunks(iter_audio(AudioSource(c.path)))) for c in multilingual]
    detected = [detect_language(engine, chunk.samples)[0] for chunk in first_chunks]
    right = sum(code == c.language for code, c in zip(detected, multilingual, strict=True))
    assert right / len(multilingual) >= 0.9
    german = next(c for c in multilingual if c.language == "de")
    translated = transcribe(AudioSource(german.path), engine, DecodeOptions(task="translate"))
    assert translated.language == "de"
    words = re.findall(r"[a-z']+", translated.text.lower())
    english = {"the", "and", "is", "of", "to", "a", "in", "it", "that", "was", "for", "this", "with", "on", "are"}
    assert words and sum(w in english for w in words) >= 2, translated.text


@pytest.mark.parametrize("strategy", ["batched", "sequential"])
@pytest.mark.slow
def test_long_form_wer_and_segment_order(strategy: str, engine: CTranslate2Engine) -> None:
    rates = []
    for clip in clips("C_longform"):
        transcript = transcribe(AudioSource(clip.path), engine, DecodeOptions(strategy=strategy, language="en"))  # type: ignore[arg-type]
        rates.append(wer([clip.reference], [transcript.text]))
        for previous, segment in zip(transcript.segments, transcript.segments[1:], strict=False):
            assert previous.start_ms <= segment.start_ms
            assert previous.end_ms <= segment.start_ms + 20
        assert all(0 <= s.start_ms <= s.end_ms <= clip.duration_s * 1000 + 50 for s in transcript.segments)
    assert statistics.fmean(rates) <= 0.10, rates  # 0.092 measured with AVX2's int8 kernels, below 0.09 with AVX-512


@pytest.mark.slow
def test_non_speech_gives_empty_transcripts(engine: CTranslate2Engine) -> None:
    files = sorted(p for p in (DATA / "E_nonspeech").iterdir() if p.is_file())
    assert len(files) == 17
    texts = {p.name: transcribe(AudioSource(p), engine, DecodeOptions()).text for p in files}
    empty = [name for name, text in texts.items() if not text.strip()]
    assert len(empty) >= 15, texts
    # The no-speech probability computed only where the silence rule reads it gives the same transcripts.
    lazy = DecodeOptions(report_no_speech_prob=False)
    assert {p.name: transcribe(AudioSource(p), engine, lazy).text for p in files} == texts


@pytest.mark.slow
def test_word_timestamps_on_read_speech(engine: CTranslate2Engine) -> None:
    for clip in clips("B_librispeech")[:10] + [c for c in clips("C_longform") if "sonnets" in c.path.name]:
        transcript = transcribe(AudioSource(clip.path), engine, DecodeOptions(word_timestamps=True, language="en"))
        previous_end = 0
        for segment in transcript.segments:
            assert segment.words, segment.text
            assert "".join(w.word for w in segment.words).strip() == segment.text.strip()
            for word in segment.words:
                assert segment.start_ms <= word.start_ms <= word.end_ms <= segment.end_ms
                assert word.start_ms >= previous_end - 20
                assert word.end_ms - word.start_ms <= 3000
                previous_end = word.end_ms


def test_prompt_and_logprobs(engine: CTranslate2Engine) -> None:
    path: Path = DATA / "A_short_en" / "jfk_openai-whisper.flac"
    transcript = transcribe(
        AudioSource(path), engine, DecodeOptions(prompt="JFK's inaugural address.", token_logprobs=True)
    )
    assert normalized(transcript.text) == normalized(JFK_REFERENCE)
    logprobs = [lp for s in transcript.segments for lp in s.logprobs]
    assert "".join(lp.token for lp in logprobs).strip() == transcript.text
    assert all(lp.logprob <= 0 for lp in logprobs)
    assert sum(lp.logprob for lp in logprobs) > -15


@pytest.mark.slow
def test_batched_strategy_runs_the_vad_once_over_the_audio(
    engine: CTranslate2Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunker's speech probabilities are reused to drop segments over silence and to find lost tails."""
    from whisper_endpoint.audio.vad import VadStream

    seen = [0]
    feed = VadStream.feed

    def counting_feed(self: VadStream, block: np.ndarray, final: bool = False) -> np.ndarray:
        seen[0] += len(block)
        return feed(self, block, final)

    monkeypatch.setattr(VadStream, "feed", counting_feed)
    path = DATA / "E_containers" / "variants" / "jfk_x10_110s.wav"
    transcript = transcribe(AudioSource(path), engine, DecodeOptions())
    assert len(transcript.segments) >= 10
    assert seen[0] == transcript.duration_ms * 16  # every sample once


def test_prompt_text_that_spells_control_tokens_stays_text(tiny_engine: CTranslate2Engine) -> None:
    tokenizer = tiny_engine.tokenizer
    tokens = tokenizer.encode(" <|startoftranscript|><|en|><|notimestamps|> and so <|endoftext|>")
    assert all(t < tokenizer.eot for t in tokens)  # no control token: every one is plain text
    assert tokenizer.decode(tokens) == " <|startoftranscript|><|en|><|notimestamps|> and so <|endoftext|>"


class _BatchingItself(DescribedEngine):
    """The real engine, presented as one that batches on its own (as vLLM does), so that chunks wait for their
    decode as 16-bit PCM; records what it is given."""

    def __init__(self, engine: CTranslate2Engine) -> None:
        description = EngineDescription.of(engine)
        super().__init__(replace(description, capabilities=replace(description.capabilities, continuous_batching=True)))
        self.engine = engine
        self.windows: list[WindowInput] = []

    def generate(
        self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
    ) -> list[Generation]:
        self.windows.extend(windows)
        return self.engine.generate(windows, options, cancellation)

    def detect_language(self, windows: Sequence[WindowInput]) -> list[dict[str, float]]:
        return self.engine.detect_language(windows)

    def align(self, items: Sequence[AlignInput]) -> list[Alignment]:
        return self.engine.align(items)

    def close(self) -> None:
        pass


@pytest.mark.slow
def test_chunks_that_wait_as_16_bit_pcm_give_the_same_transcript(tiny_engine: CTranslate2Engine) -> None:
    """A 16-bit upload's samples survive the wait exactly: lost tails, cut from the waiting samples, decode as
    they would from float32, and the engine is handed no samples, only log-mel."""
    path = DATA / "C_longform" / "earnings22_1_4482311_3_62.flac"
    options = DecodeOptions(language="en")
    batching = _BatchingItself(tiny_engine)
    waited = transcribe(AudioSource(path), batching, options)
    plain = transcribe(AudioSource(path), tiny_engine, options)
    chunks = list(iter_speech_chunks(iter_audio(AudioSource(path))))
    assert len(batching.windows) > len(chunks)  # some chunks lost a tail and decoded it again
    assert all(w.samples is None and w.features is not None for w in batching.windows)
    assert [(s.start_ms, s.end_ms, s.text) for s in waited.segments] == [
        (s.start_ms, s.end_ms, s.text) for s in plain.segments
    ]


class _WaitingElsewhere(_BatchingItself):
    """The real engine as an engine in another process sees it: the windows leave the list it is handed, as
    the socket's sender takes them once sent; it then notes whether the caller still holds any window's log-mel
    while the decode runs. Every first decode is made unsure, so each window is sent again at the next
    temperature."""

    def __init__(self, engine: CTranslate2Engine) -> None:
        super().__init__(engine)
        self.sent: list[tuple[float, list[np.ndarray]]] = []  # copies of each call's log-mels
        self.caller_held: list[list[bool]] = []

    def generate(
        self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
    ) -> list[Generation]:
        assert isinstance(windows, HandedOverWindows)
        mine = list(windows)
        windows.clear()
        refs = [weakref.ref(w.features) for w in mine if w.features is not None]
        self.sent.append((options.temperature, [np.array(r()) for r in refs]))
        out = self.engine.generate(mine, options, cancellation)
        del mine
        self.caller_held.append([r() is not None for r in refs])
        if options.temperature == 0:
            out = [replace(g, sum_logprob=-100.0 * (len(g.tokens) + 1), no_speech_prob=0.0) for g in out]
        return out


def test_a_window_waiting_in_an_engine_elsewhere_is_held_without_its_log_mel(tiny_engine: CTranslate2Engine) -> None:
    """A front-end process holds a waiting window's samples only (16-bit), not its log-mel as well; a retry at
    the next temperature makes the same log-mel again from them."""
    engine = _WaitingElsewhere(tiny_engine)
    clip = clips("B_librispeech/test-clean")[0]  # a 16 kHz, 16-bit FLAC
    transcript = transcribe(AudioSource(clip.path), engine, DecodeOptions(language="en"))
    assert wer([clip.reference], [transcript.text]) < 0.3  # sampled at 0.2, as every retry is
    assert engine.caller_held and not any(any(held) for held in engine.caller_held)
    (first_t, first), (retry_t, retried) = engine.sent[:2]
    assert (first_t, retry_t) == (0.0, 0.2) and len(retried) == len(first) >= 1
    assert all(np.array_equal(a, b) for a, b in zip(first, retried, strict=True))  # exact for a 16-bit upload
