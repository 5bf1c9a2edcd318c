"""Decode windows with Whisper's temperature fallback, and turn tokens into timed segments."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from whisper_endpoint.decoding.options import DecodeOptions
from whisper_endpoint.decoding.tokenizer import MS_PER_TIMESTAMP, Tokenizer
from whisper_endpoint.engines.base import Engine, Generation, HandedOverWindows, SamplingOptions, WindowInput

# Above this many characters per second of audio, text is denser than anyone speaks (a loop).
MAX_SPOKEN_CHARS_PER_S = 25.0


@dataclass(frozen=True)
class Decoded:
    generation: Generation
    temperature: float
    avg_logprob: float
    compression_ratio: float
    looping: bool = False  # repetitive text that the audio does not explain

    def unsure(self, options: DecodeOptions) -> bool:
        """Its mean log-probability is below the threshold: a fallback reason, and half of the silence rule."""
        return self.avg_logprob < options.logprob_threshold

    def is_silence(self, options: DecodeOptions) -> bool:
        """openai/whisper's rule: likely no speech, and the decode is unsure of what it heard."""
        no_speech = self.generation.no_speech_prob
        return no_speech is not None and no_speech > options.no_speech_threshold and self.unsure(options)


@dataclass(frozen=True)
class TimedTokens:
    """A run of text tokens between two timestamps, relative to the window start."""

    start_ms: int
    end_ms: int
    tokens: tuple[int, ...]  # including the bounding timestamp tokens
    text_tokens: tuple[int, ...]
    text_offset: int = 0  # text tokens of the window before this run


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class Windows(Protocol):
    """The windows of one decode: a list, or windows made each time one is read (transcribe's, for an engine
    that keeps no samples: each is made again with its log-mel for a retry, rather than kept while it waits)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> WindowInput: ...


def decode_with_fallback(engine: Engine, windows: Windows, options: DecodeOptions) -> list[Decoded]:
    """Decode all windows at the first temperature; retry only the failing ones at the next. Each call is
    handed a list of its own (HandedOverWindows): nothing here reads a window once it is sent.

    Unless the caller reports it, the no-speech probability is computed only where the silence rule reads
    it: for a decode whose mean log-probability is below the threshold, with a one-token decode of that
    window. It depends on the audio and prompt only, so one value serves every temperature."""
    attempts: list[list[Decoded]] = [[] for _ in range(len(windows))]
    pending = list(range(len(windows)))
    suppress = tuple(engine.tokenizer.non_speech_tokens) if options.suppress_non_speech_symbols else (-1,)
    no_speech: dict[int, float] = {}
    for temperature in options.temperatures:
        if not pending:
            break
        sampling = SamplingOptions(
            temperature=temperature,
            beam_size=options.beam_size if temperature == 0 else 1,
            token_logprobs=options.token_logprobs,
            suppress_tokens=suppress,
            no_speech_prob=options.report_no_speech_prob,
        )
        sent = HandedOverWindows(windows[i] for i in pending)
        durations_ms = [w.duration_ms for w in sent]
        generations = engine.generate(sent, sampling)
        decoded = {
            i: _decoded(g, temperature, ms, engine, options)
            for i, g, ms in zip(pending, generations, durations_ms, strict=True)
        }
        unsure = [
            i
            for i, d in decoded.items()
            if d.generation.no_speech_prob is None and d.unsure(options) and i not in no_speech
        ]
        probes = HandedOverWindows(windows[i] for i in unsure)
        no_speech.update(zip(unsure, _no_speech_probs(engine, probes, suppress), strict=True))
        retry = []
        for index, attempt in decoded.items():
            if attempt.generation.no_speech_prob is None and index in no_speech:
                attempt = replace(attempt, generation=replace(attempt.generation, no_speech_prob=no_speech[index]))
            attempts[index].append(attempt)
            if _failed(attempt, options) and not attempt.is_silence(options):
                retry.append(index)
        pending = retry
    return [_best(tries, options) for tries in attempts]


def _decoded(
    generation: Generation, temperature: float, duration_ms: int, engine: Engine, options: DecodeOptions
) -> Decoded:
    text = engine.tokenizer.decode([t for t in generation.tokens if t < engine.tokenizer.eot])
    ratio = compression_ratio(text)
    return Decoded(
        generation,
        temperature,
        avg_logprob=generation.sum_logprob / (len(generation.tokens) + 1),
        compression_ratio=ratio,
        looping=ratio > options.compression_ratio_threshold
        and not _explained_by_audio(generation, text, duration_ms, engine),
    )


def _no_speech_probs(engine: Engine, windows: HandedOverWindows, suppress: tuple[int, ...]) -> list[float]:
    if not windows:
        return []
    asked = SamplingOptions(max_new_tokens=1, suppress_tokens=suppress, no_speech_prob=True)
    return [g.no_speech_prob or 0.0 for g in engine.generate(windows, asked)]


def _explained_by_audio(generation: Generation, text: str, duration_ms: int, engine: Engine) -> bool:
    """Repetitive text is real (a refrain, a looped clip) when the decode closed its last segment
    with a timestamp, like every clean decode, and its pace is one a person can speak at.
    Hallucination loops run on to the token limit or pack text far faster than speech."""
    tokens = generation.tokens
    closed = len(tokens) >= 2 and tokens[-1] >= engine.tokenizer.timestamp_begin
    return closed and len(text) <= MAX_SPOKEN_CHARS_PER_S * max(duration_ms, 1000) / 1000


def _failed(decoded: Decoded, options: DecodeOptions) -> bool:
    return decoded.looping or decoded.unsure(options)


def _best(tries: list[Decoded], options: DecodeOptions) -> Decoded:
    """The last attempt if it passed; when every temperature failed, the likeliest non-looping one."""
    if not _failed(tries[-1], options) or tries[-1].is_silence(options):
        return tries[-1]
    return max(tries, key=lambda d: (not d.looping, d.avg_logprob))


def split_timestamps(
    tokens: Sequence[int], tokenizer: Tokenizer, window_ms: int, keep_tail: bool = False
) -> tuple[list[TimedTokens], int]:
    """Segments of one window and how far (ms) the window is covered: Whisper's timestamp rules.

    Consecutive timestamp tokens close one segment and open the next. Output ending with a single
    timestamp means the rest of the window is silence, so the whole window is consumed. Text after
    the last closed segment is dropped (the next window decodes it again) unless `keep_tail`.
    """
    tb = tokenizer.timestamp_begin
    is_ts = [t >= tb for t in tokens]
    single_ending = len(tokens) >= 2 and is_ts[-1] and not is_ts[-2]
    cuts = [i for i in range(1, len(tokens)) if is_ts[i] and is_ts[i - 1]]  # at the second of each pair
    if single_ending:
        cuts.append(len(tokens))
    segments: list[TimedTokens] = []
    if cuts:
        previous = 0
        for cut in cuts:
            segment = _timed(tuple(tokens[previous:cut]), tokenizer, window_ms, _n_text(tokens[:previous], tokenizer))
            previous = cut
            if segment is not None:
                segments.append(segment)
        if single_ending:
            return segments, window_ms
        tail = _timed(tuple(tokens[previous:]), tokenizer, window_ms, _n_text(tokens[:previous], tokenizer))
        if keep_tail and tail is not None:
            segments.append(tail)
            return segments, window_ms
        return segments, min(window_ms, (tokens[cuts[-1] - 1] - tb) * MS_PER_TIMESTAMP)
    stamps = [t for t in tokens if t >= tb]
    end_ms = (stamps[-1] - tb) * MS_PER_TIMESTAMP if stamps and stamps[-1] != tb else window_ms
    start_ms = (stamps[0] - tb) * MS_PER_TIMESTAMP if stamps and is_ts[0] else 0
    text_tokens = tuple(t for t in tokens if t < tokenizer.eot)
    if text_tokens:
        segments.append(TimedTokens(start_ms, min(max(end_ms, start_ms), window_ms), tuple(tokens), text_tokens))
    return segments, window_ms


def _n_text(tokens: Sequence[int], tokenizer: Tokenizer) -> int:
    return sum(1 for t in tokens if t < tokenizer.eot)


def _timed(piece: tuple[int, ...], tokenizer: Tokenizer, window_ms: int, text_offset: int) -> TimedTokens | None:
    tb = tokenizer.timestamp_begin
    text_tokens = tuple(t for t in piece if t < tokenizer.eot)
    if not text_tokens:
        return None
    start = (piece[0] - tb) * MS_PER_TIMESTAMP if piece[0] >= tb else 0
    end = (piece[-1] - tb) * MS_PER_TIMESTAMP if piece[-1] >= tb else window_ms
    start = min(start, window_ms)
    return TimedTokens(start, min(max(end, start), window_ms), piece, text_tokens, text_offset)
