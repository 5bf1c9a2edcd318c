"""The CTranslate2 engine's sampled decodes (Whisper's temperature fallback) are reproducible per window."""

from __future__ import annotations

import numpy as np

from tests.datasets import clips
from whisper_endpoint.audio.decode import AudioSource, load_audio
from whisper_endpoint.audio.features import log_mel_window
from whisper_endpoint.engines.base import SamplingOptions, WindowInput
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine


def _window(engine: CTranslate2Engine, samples: np.ndarray) -> WindowInput:
    sot = tuple(engine.tokenizer.sot_sequence("en", "transcribe", True))
    return WindowInput(log_mel_window(samples, engine.n_mels), sot, len(samples) * 1000 // 16_000, samples)


def test_a_sampled_window_does_not_depend_on_what_was_sampled_beside_or_before_it(
    tiny_engine: CTranslate2Engine,
) -> None:
    speech = [load_audio(AudioSource(c.path)) for c in clips("B_librispeech/test-clean")[:2]]
    mine = _window(tiny_engine, speech[0][::-1].copy())  # reversed speech: no clear text, sampling matters
    other = _window(tiny_engine, speech[1][::-1].copy())
    hot = SamplingOptions(temperature=1.0)
    alone = tiny_engine.generate([mine], hot)[0].tokens
    after_other = tiny_engine.generate([other, mine], hot)[1].tokens
    again = tiny_engine.generate([mine], hot)[0].tokens
    assert alone == after_other == again
    # Still sampling, not greedy decoding: another temperature draws other tokens.
    assert tiny_engine.generate([mine], SamplingOptions(temperature=0.8))[0].tokens != alone


def test_windows_with_previous_text_of_different_lengths_decode_in_one_call(tiny_engine: CTranslate2Engine) -> None:
    """Two requests' windows with prompts of different lengths met in one engine call: CTranslate2 refuses such
    a batch outright (its start token must sit at one position), which failed both requests."""
    speech = [load_audio(AudioSource(c.path)) for c in clips("B_librispeech/test-clean")[:3]]
    tokenizer = tiny_engine.tokenizer
    plain = _window(tiny_engine, speech[0])
    short = WindowInput(plain.features, (tokenizer.sot_prev, *tokenizer.encode(" Hello."), *plain.prompt))
    long_prompt = (tokenizer.sot_prev, *tokenizer.encode(" A much longer prompt, of many words."), *plain.prompt)
    other = _window(tiny_engine, speech[1])
    longer = WindowInput(other.features, long_prompt, other.duration_ms, other.samples)
    greedy = SamplingOptions()
    together = tiny_engine.generate([plain, short, longer, _window(tiny_engine, speech[2])], greedy)
    alone = [tiny_engine.generate([w], greedy)[0] for w in (plain, short, longer, _window(tiny_engine, speech[2]))]
    assert [g.tokens for g in together] == [g.tokens for g in alone]
    assert together[0].tokens and together[2].tokens != together[0].tokens  # in order, each its own window
