"""Packing short windows of one request into one 30 s window, and splitting the text back."""

from __future__ import annotations

import numpy as np
import pytest

from tests.datasets import clips, wer
from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.decode import AudioSource, load_audio
from whisper_endpoint.audio.features import log_mel_window
from whisper_endpoint.engines.base import Generation, SamplingOptions, WindowInput
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine
from whisper_endpoint.serving.packing import GAP_SAMPLES, MAX_PACKED_SAMPLES, Pack, generate_packed, plan, unpack

GREEDY = SamplingOptions()


def _window(engine: CTranslate2Engine, seconds: float, prompt: tuple[int, ...] | None = None) -> WindowInput:
    samples = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
    sot = tuple(engine.tokenizer.sot_sequence("en", "transcribe", True))
    return WindowInput(np.zeros((80, 3000), np.float32), prompt or sot, int(seconds * 1000), samples)


def test_plan_packs_short_windows_with_the_same_prompt(tiny_engine: CTranslate2Engine) -> None:
    tok = tiny_engine.tokenizer
    with_history = (tok.sot_prev, *tok.encode(" earlier text"), *tok.sot_sequence("en", "transcribe", True))
    windows = [
        _window(tiny_engine, 10),
        _window(tiny_engine, 3.01),
        _window(tiny_engine, 20),  # too long to gain from sharing
        _window(tiny_engine, 2),
        _window(tiny_engine, 5, with_history),  # conditioned on its own previous text
        _window(tiny_engine, 9),
        _window(tiny_engine, 6),
    ]
    one_request = ["a"] * len(windows)
    packs = plan(windows, GREEDY, tok, one_request)
    assert [p.members for p in packs] == [(0, 1, 3), (5, 6)]
    for pack in packs:
        assert pack.total <= MAX_PACKED_SAMPLES
        assert all(o % 320 == 0 for o in pack.offsets)  # on the 20 ms timestamp grid
        for (o1, n1), o2 in zip(zip(pack.offsets, pack.lengths, strict=True), pack.offsets[1:], strict=False):
            assert o2 - (o1 + n1) >= GAP_SAMPLES
    assert plan(windows, SamplingOptions(temperature=0.4), tok, one_request) == []  # fallback retries decode alone
    assert plan(windows, SamplingOptions(max_new_tokens=1), tok, one_request) == []  # its own no-speech probability


def test_plan_never_packs_windows_of_different_requests(tiny_engine: CTranslate2Engine) -> None:
    windows = [_window(tiny_engine, 3) for _ in range(6)]
    packs = plan(windows, GREEDY, tiny_engine.tokenizer, ["a", "b", "a", "c", "b", "c"])
    assert sorted(p.members for p in packs) == [(0, 2), (1, 4), (3, 5)]
    assert plan(windows, GREEDY, tiny_engine.tokenizer, ["a", "b", "c", "d", "e", "f"]) == []


def test_unpack_shifts_timestamps_and_refuses_unclear_splits(tiny_engine: CTranslate2Engine) -> None:
    tok = tiny_engine.tokenizer
    tb = tok.timestamp_begin

    def ts(seconds: float) -> int:
        return tb + round(seconds * 50)

    hello, world = tok.encode(" hello"), tok.encode(" world")
    pack = Pack(members=(4, 7), offsets=(0, 12 * SAMPLE_RATE), lengths=(10 * SAMPLE_RATE, 5 * SAMPLE_RATE))
    clean = Generation((ts(0), *hello, ts(9.5), ts(12.4), *world, ts(17.6)), -3.0, 0.01)
    first, second = unpack(clean, pack, tok) or []
    assert first.tokens == (ts(0), *hello, ts(9.5))
    assert second.tokens == (ts(0.4), *world, ts(5.0))  # clamped to the member's own end
    assert first.sum_logprob + second.sum_logprob == -3.0 and first.no_speech_prob == 0.01

    spanning = Generation((ts(0), *hello, ts(6), ts(6), *world, ts(16)), -3.0, 0.01)
    assert unpack(spanning, pack, tok) is None
    one_member_silent = Generation((ts(0), *hello, *world, ts(9.5)), -3.0, 0.01)
    assert unpack(one_member_silent, pack, tok) is None
    unclosed = Generation((ts(0), *hello, ts(9.5), ts(12.4), *world), -3.0, 0.01)
    assert unpack(unclosed, pack, tok) is None


@pytest.mark.slow
def test_packed_decode_gives_each_clip_its_own_text(engine: CTranslate2Engine) -> None:
    corpus = clips("B_librispeech/test-clean")[:24]
    sot = tuple(engine.tokenizer.sot_sequence("en", "transcribe", True))
    windows = []
    for clip in corpus:
        audio = load_audio(AudioSource(clip.path))[: 30 * SAMPLE_RATE]
        windows.append(WindowInput(log_mel_window(audio, 80), sot, len(audio) * 1000 // SAMPLE_RATE, audio))
    options = SamplingOptions(suppress_tokens=tuple(engine.tokenizer.non_speech_tokens))
    results: list[Generation] = []
    packed = redecoded = 0
    for i in range(0, len(windows), 8):
        out, p, r = generate_packed(engine, windows[i : i + 8], options, ["one request"] * 8)
        results += out
        packed, redecoded = packed + p, redecoded + r
    texts = [engine.tokenizer.decode([t for t in g.tokens if t < engine.tokenizer.eot]) for g in results]
    assert packed >= 16 and redecoded <= packed // 2
    # Each clip's text is its own: a mix-up between members would put whole sentences in the wrong place.
    for clip, text in zip(corpus, texts, strict=True):
        assert wer([clip.reference], [text]) < 0.5, (clip.path.name, text)
    assert wer([c.reference for c in corpus], texts) < 0.07
