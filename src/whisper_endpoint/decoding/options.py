"""Options of one transcription, as the API and CLI pass them down."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["transcribe", "translate"]
Strategy = Literal["batched", "sequential"]

# openai/whisper's fallback ladder and thresholds.
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4  # gzip ratio above this means the text repeats itself
LOGPROB_THRESHOLD = -1.0  # mean token log-probability below this means the decode is unsure
NO_SPEECH_THRESHOLD = 0.6  # with a low log-prob, a window this likely silent is dropped
MAX_PROMPT_TOKENS = 223  # half the decoder context minus one, as openai/whisper


@dataclass(frozen=True)
class DecodeOptions:
    task: Task = "transcribe"
    language: str | None = None  # None: detect
    languages: tuple[str, ...] = ()  # detection chooses among these (all when empty)
    prompt: str | None = None
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    beam_size: int = 1
    word_timestamps: bool = False
    token_logprobs: bool = False
    strategy: Strategy = "batched"
    condition_on_previous_text: bool = True
    compression_ratio_threshold: float = COMPRESSION_RATIO_THRESHOLD
    logprob_threshold: float = LOGPROB_THRESHOLD
    no_speech_threshold: float = NO_SPEECH_THRESHOLD
    batch_size: int = 8  # windows a request hands to the engine at once (batched strategy)
    suppress_non_speech_symbols: bool = False
    # verbose_json shows each segment's no-speech probability; otherwise only the silence rule reads it, and
    # only for a decode whose mean log-probability is below the threshold (see decode_with_fallback).
    report_no_speech_prob: bool = True


def with_keywords(prompt: str | None, keywords: list[str] | None) -> str | None:
    """Keywords bias decoding the way Whisper understands: as earlier text it conditions on, where a word's
    spelling makes that spelling likelier. They follow the prompt, as a comma-separated list."""
    words = [k.strip() for k in keywords or [] if k.strip()]
    if not words:
        return prompt or None
    listed = ", ".join(words) + "."
    return f"{prompt.strip()} {listed}" if prompt and prompt.strip() else listed
