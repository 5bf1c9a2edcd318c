"""The temperature fallback's bookkeeping, with an engine whose scores are set per window (its decoding is
tested with the real engine in test_transcribe.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from whisper_endpoint.decoding.fallback import decode_with_fallback
from whisper_endpoint.decoding.options import DecodeOptions
from whisper_endpoint.decoding.tokenizer import Tokenizer
from whisper_endpoint.engines.base import Cancellation, Generation, SamplingOptions, WindowInput
from whisper_endpoint.engines.ctranslate2 import CTranslate2Engine


@dataclass
class ScriptedEngine:
    """Window i (its prompt's last token) decodes to one text token with mean log-prob `logprobs[i]` and has
    no-speech probability `no_speech[i]`, reported only when asked for, as vLLM does."""

    tokenizer: Tokenizer
    logprobs: dict[int, float]
    no_speech: dict[int, float]
    calls: list[tuple[SamplingOptions, tuple[int, ...]]] = field(default_factory=list)

    def generate(
        self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
    ) -> list[Generation]:
        ids = tuple(w.prompt[-1] for w in windows)
        self.calls.append((options, ids))
        text = self.tokenizer.encode(" hello")[:1]
        out = []
        for i in ids:
            no_speech = self.no_speech[i] if options.no_speech_prob else None
            out.append(Generation((*text, self.tokenizer.timestamp_begin + 50), 3 * self.logprobs[i], no_speech))
        return out


def _windows(n: int) -> list[WindowInput]:
    return [WindowInput(np.zeros((80, 3000), np.float32), (i,)) for i in range(n)]


def test_no_speech_is_asked_only_for_unsure_decodes(tiny_engine: CTranslate2Engine) -> None:
    # 0: confident speech; 1: unsure and silent (dropped, no retry); 2: unsure, not silent (retried)
    engine = ScriptedEngine(tiny_engine.tokenizer, {0: -0.2, 1: -1.5, 2: -1.5}, {0: 0.9, 1: 0.9, 2: 0.1})
    options = DecodeOptions(report_no_speech_prob=False, temperatures=(0.0, 0.2))
    decoded = decode_with_fallback(engine, _windows(3), options)  # type: ignore[arg-type]
    first, probe, retry = engine.calls
    assert not first[0].no_speech_prob and first[1] == (0, 1, 2)
    assert probe[0].no_speech_prob and probe[0].max_new_tokens == 1 and probe[1] == (1, 2)
    assert not retry[0].no_speech_prob and retry[0].temperature == 0.2 and retry[1] == (2,)  # asked once only
    assert [d.generation.no_speech_prob for d in decoded] == [None, 0.9, 0.1]
    assert decoded[1].is_silence(options) and not decoded[2].is_silence(options)
    assert [d.temperature for d in decoded] == [0.0, 0.0, 0.0]  # 2 failed at both: its first try is kept


def test_reported_no_speech_is_asked_for_with_every_decode(tiny_engine: CTranslate2Engine) -> None:
    engine = ScriptedEngine(tiny_engine.tokenizer, {0: -0.2, 1: -1.5}, {0: 0.9, 1: 0.9})
    decoded = decode_with_fallback(engine, _windows(2), DecodeOptions(temperatures=(0.0, 0.2)))  # type: ignore[arg-type]
    assert [(o.no_speech_prob, ids) for o, ids in engine.calls] == [(True, (0, 1))]
    assert [d.generation.no_speech_prob for d in decoded] == [0.9, 0.9]
