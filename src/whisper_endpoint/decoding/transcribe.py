"""Long-form transcription: the `batched` (VAD chunks, decoded in parallel) and `sequential`
(openai/whisper's moving 30 s window) strategies, on any engine."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice

import numpy as np

from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.chunking import AudioChunk, WindowReader, as_float32, compact_samples, iter_speech_chunks
from whisper_endpoint.audio.decode import AudioSource, iter_audio
from whisper_endpoint.audio.features import HOP_LENGTH, WINDOW_SAMPLES, bf16_bits, log_mel_window
from whisper_endpoint.audio.vad import FRAME_SAMPLES, VadStream
from whisper_endpoint.decoding.fallback import Decoded, TimedTokens, Windows, decode_with_fallback, split_timestamps
from whisper_endpoint.decoding.options import MAX_PROMPT_TOKENS, DecodeOptions
from whisper_endpoint.decoding.words import SegmentSpan, words_for_window
from whisper_endpoint.engines.base import AlignInput, Engine, WindowInput
from whisper_endpoint.errors import UnsupportedFeatureError
from whisper_endpoint.formats.transcript import Segment, TokenLogprob, Transcript, Word

ProgressCallback = Callable[[int], None]  # absolute ms of audio done
ChunkSource = Callable[[AudioSource, "RunInfo"], Iterator[AudioChunk]]  # speech chunks; counts info.samples
SPEECH_PROB = 0.5  # VAD probability that counts a frame as speech
MIN_LOST_TAIL_MS = 1000  # undecoded audio at a chunk's end worth a second look


def samples_to_ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE


@dataclass
class RunInfo:
    """Filled in while a transcription runs: language once detected, duration once decoded."""

    language: str | None = None
    language_probability: float | None = None
    samples: int = 0
    windows: int = 0
    fallbacks: int = 0
    prompt_tokens: int = 0  # text tokens of the request's prompt (usage)
    # Called as each block of audio is decoded (the server charges it and may stop the work by raising).
    on_decoded: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def duration_ms(self) -> int:
        return samples_to_ms(self.samples)


@dataclass
class _Counter:
    info: RunInfo
    blocks: Iterable[np.ndarray]

    def __iter__(self) -> Iterator[np.ndarray]:
        for block in self.blocks:
            self.info.samples += len(block)
            if self.info.on_decoded is not None:
                self.info.on_decoded()
            yield block


@dataclass
class _Context:
    engine: Engine
    options: DecodeOptions
    info: RunInfo
    next_id: int = 0
    consumed_ms: int = 0  # how much of the last window its segments cover
    prompt_tokens: list[int] = field(default_factory=list)


def transcribe(
    source: AudioSource, engine: Engine, options: DecodeOptions, progress: ProgressCallback | None = None
) -> Transcript:
    info = RunInfo()
    segments = tuple(iter_segments(source, engine, options, info, progress))
    return Transcript(options.task, info.language or "en", info.duration_ms, segments)


def local_speech_chunks(source: AudioSource, info: RunInfo) -> Iterator[AudioChunk]:
    """Decode and cut into speech chunks here, streaming: memory holds one chunk, not the file."""
    return iter_speech_chunks(iter(_Counter(info, iter_audio(source))))


def samples_chunks(samples: np.ndarray) -> ChunkSource:
    """A chunk source over audio already in memory (a live turn, cut by its own VAD already): one chunk when it
    fits a window, else cut as a file is. Cut again, a short turn such as "ask not" lost its first word."""

    def chunks(_source: AudioSource, info: RunInfo) -> Iterator[AudioChunk]:
        if len(samples) > WINDOW_SAMPLES:
            return iter_speech_chunks(iter(_Counter(info, [samples])))
        info.samples += len(samples)
        return iter([AudioChunk(0, samples)])

    return chunks


def iter_segments(
    source: AudioSource,
    engine: Engine,
    options: DecodeOptions,
    info: RunInfo,
    progress: ProgressCallback | None = None,
    speech_chunks: ChunkSource = local_speech_chunks,
) -> Iterator[Segment]:
    """Segments in audio order as windows finish; `info` holds the language and duration. The batched
    strategy takes its speech chunks from `speech_chunks` (the server may cut them in other processes)."""
    _check_capabilities(engine, options)
    ctx = _Context(engine, options, info)
    if options.prompt:
        ctx.prompt_tokens = engine.tokenizer.encode(" " + options.prompt.strip())
        info.prompt_tokens = len(ctx.prompt_tokens)
    if not engine.multilingual:
        info.language = "en"
        if options.task == "translate" or options.language not in (None, "en"):
            wanted = "translate" if options.task == "translate" else f"transcribe {options.language!r}"
            raise UnsupportedFeatureError(
                f"model {engine.model_name} is English-only: it cannot {wanted}",
                param="language" if options.task == "transcribe" else "model",
            )
    elif options.language:
        info.language = options.language
    if options.strategy == "sequential":
        yield from _sequential(ctx, _Counter(info, iter_audio(source)), progress)
    else:
        yield from _batched(ctx, speech_chunks(source, info), progress)
    if progress:
        progress(info.duration_ms)


def _check_capabilities(engine: Engine, options: DecodeOptions) -> None:
    caps = engine.capabilities
    if options.word_timestamps and not caps.word_timestamps:
        raise UnsupportedFeatureError(
            f"the {engine.name} engine cannot compute word timestamps", param="timestamp_granularities[]"
        )
    if options.token_logprobs and not caps.token_logprobs:
        raise UnsupportedFeatureError(f"the {engine.name} engine cannot return logprobs", param="include[]")
    if options.beam_size > 1 and not caps.beam_search:
        raise UnsupportedFeatureError(f"the {engine.name} engine has no beam search", param="beam_size")


def _features(engine: Engine, samples: np.ndarray) -> np.ndarray | None:
    """Our log-mel of a window, or None for an engine that computes its own from the samples."""
    if not engine.capabilities.log_mel_input:
        return None
    features = log_mel_window(samples, engine.n_mels)
    return bf16_bits(features) if engine.capabilities.log_mel_bf16 else features


def _detect_language(ctx: _Context, features: np.ndarray | None, samples: np.ndarray) -> None:
    if ctx.info.language is None:
        ctx.info.language, ctx.info.language_probability = detect_language(
            ctx.engine, samples, features, ctx.options.languages
        )


def detect_language(
    engine: Engine, samples: np.ndarray, features: np.ndarray | None = None, candidates: tuple[str, ...] = ()
) -> tuple[str, float]:
    """The likeliest language of a window of audio (the first speech chunk, as transcription detects it) and its
    probability; `features`: the window's log-mel where already computed; `candidates`: the languages to choose
    among (all when empty)."""
    if not engine.capabilities.language_detection:
        raise UnsupportedFeatureError(f"the {engine.name} engine cannot detect the language", param="language")
    if features is None:
        features = _features(engine, samples)
    window = WindowInput(features, (), samples_to_ms(len(samples)), samples if _reads_samples(engine) else None)
    probs = engine.detect_language([window])[0]
    if candidates:
        probs = {code: prob for code, prob in probs.items() if code in candidates} or probs
    code, prob = max(probs.items(), key=lambda kv: kv[1])
    return code, prob


def _sot(ctx: _Context, timestamps: bool = True) -> tuple[int, ...]:
    return tuple(ctx.engine.tokenizer.sot_sequence(ctx.info.language, ctx.options.task, timestamps))


def _prompt(ctx: _Context, previous: Sequence[int]) -> tuple[int, ...]:
    if not previous:
        return _sot(ctx)
    return (ctx.engine.tokenizer.sot_prev, *previous[-MAX_PROMPT_TOKENS:], *_sot(ctx))


def _batched(ctx: _Context, chunks: Iterator[AudioChunk], progress: ProgressCallback | None) -> Iterator[Segment]:
    while group := list(islice(chunks, ctx.options.batch_size)):
        features = [_features(ctx.engine, c.samples) for c in group]
        _detect_language(ctx, features[0], group[0].samples)
        if not _reads_samples(ctx.engine):  # they wait only to cut a lost tail: in half the bytes
            group = [replace(c, samples=compact_samples(c.samples)) for c in group]
        decoded = _decode_chunks(ctx, group, features)  # may take the features (see there)
        # Whisper often stops before the last words of a full window; decode such tails again.
        tails = {i: t for i, (c, d) in enumerate(zip(group, decoded, strict=True)) if (t := _lost_tail(ctx, c, d))}
        tail_chunks = list(tails.values())
        tail_features = [_features(ctx.engine, c.samples) for c in tail_chunks]
        tail_decoded = dict(zip(tails, _decode_chunks(ctx, tail_chunks, tail_features), strict=True))
        tail_feature_of = dict(zip(tails, tail_features, strict=True))
        ordered: list[tuple[AudioChunk, np.ndarray | None, Decoded]] = []
        for i, chunk in enumerate(group):
            ordered.append((chunk, features[i], decoded[i]))
            if i in tails:
                ordered.append((tails[i], tail_feature_of[i], tail_decoded[i]))
        yield from _emit(ctx, [o[0] for o in ordered], [o[1] for o in ordered], [o[2] for o in ordered], True)
        if progress:
            progress(samples_to_ms(group[-1].end))


def _reads_samples(engine: Engine) -> bool:
    """Whether the engine is handed windows' samples: an engine that takes our log-mel and batches on its own
    (nothing packs windows in front of it) never reads them, so they neither travel to it nor, under load
    (hundreds of chunks waiting for vLLM), wait beside their log-mel as float32."""
    caps = engine.capabilities
    return not (caps.log_mel_input and caps.continuous_batching)


def _decode_chunks(
    ctx: _Context,
    chunks: Sequence[AudioChunk],
    features: list[np.ndarray | None],
    previous: Sequence[int] | None = None,
) -> list[Decoded]:
    """Each chunk's decode, prompted with `previous` text (the request's prompt when None). `features`: each
    chunk's log-mel (None for an engine that makes its own). An engine that keeps no samples is sent them
    once and the list's entries become None (words, which would read them again, are asked of no such engine)."""
    if not chunks:
        return []
    prompt = _prompt(ctx, ctx.prompt_tokens if previous is None else previous)
    with_samples = _reads_samples(ctx.engine)
    if with_samples or ctx.options.word_timestamps:
        windows: Windows = [
            WindowInput(f, prompt, samples_to_ms(len(c.samples)), c.samples if with_samples else None)
            for f, c in zip(features, chunks, strict=True)
        ]
    else:
        windows = _SentOnce(ctx.engine, chunks, prompt, features)
    return decode_with_fallback(ctx.engine, windows, ctx.options)


class _SentOnce:
    """Windows made as they are sent, for an engine that keeps no samples (vLLM): each takes its chunk's log-mel
    with it, made again from the chunk's samples for a retry, so a front-end process holds only the samples of
    its windows waiting in the engine (about 64 of them each, under load), not their log-mel too."""

    def __init__(
        self, engine: Engine, chunks: Sequence[AudioChunk], prompt: tuple[int, ...], features: list[np.ndarray | None]
    ) -> None:
        self._engine, self._chunks, self._prompt, self._features = engine, chunks, prompt, features

    def __len__(self) -> int:
        return len(self._chunks)

    def __getitem__(self, index: int, /) -> WindowInput:
        chunk = self._chunks[index]
        features, self._features[index] = self._features[index], None
        if features is None:
            features = _features(self._engine, as_float32(chunk.samples))
        return WindowInput(features, self._prompt, samples_to_ms(len(chunk.samples)))


def _lost_tail(ctx: _Context, chunk: AudioChunk, decoded: Decoded) -> AudioChunk | None:
    """The end of a chunk that holds speech the decode never reached, or None."""
    if decoded.is_silence(ctx.options):
        return None
    window_ms = samples_to_ms(len(chunk.samples))
    timed, _ = split_timestamps(decoded.generation.tokens, ctx.engine.tokenizer, window_ms, keep_tail=True)
    covered_ms = timed[-1].end_ms if timed else 0
    if window_ms - covered_ms < MIN_LOST_TAIL_MS:
        return None
    rest = as_float32(chunk.samples[covered_ms * SAMPLE_RATE // 1000 :])
    probs = chunk.speech_probs[-(-len(rest) // FRAME_SAMPLES) :] if chunk.speech_probs is not None else None
    tail = AudioChunk(chunk.start + len(chunk.samples) - len(rest), rest, probs)
    return tail if _speech_frames(tail).any() else None


def _sequential(ctx: _Context, blocks: Iterable[np.ndarray], progress: ProgressCallback | None) -> Iterator[Segment]:
    reader = WindowReader(iter(blocks))
    seek = 0
    previous = list(ctx.prompt_tokens)
    while (window := reader.window(seek)) is not None:
        window = replace(window, speech_probs=VadStream().feed(window.samples, final=True))
        if not _speech_frames(window).any():
            seek = window.end
            continue
        features = [_features(ctx.engine, window.samples)]
        _detect_language(ctx, features[0], window.samples)
        decoded = _decode_chunks(ctx, [window], features, previous)
        segments = list(_emit(ctx, [window], features, decoded, keep_tail=False))
        yield from segments
        consumed = ctx.consumed_ms * SAMPLE_RATE // 1000
        seek = window.start + consumed if consumed > 0 else window.end
        if ctx.options.condition_on_previous_text and decoded[0].temperature <= 0.5:
            previous.extend(t for s in segments for t in s.tokens)
        else:
            previous = list(ctx.prompt_tokens)  # a high-temperature decode is a poor prompt
        if progress:
            progress(samples_to_ms(seek))


def _emit(
    ctx: _Context,
    chunks: Sequence[AudioChunk],
    features: Sequence[np.ndarray | None],
    decoded: Sequence[Decoded],
    keep_tail: bool,
) -> Iterator[Segment]:
    tokenizer = ctx.engine.tokenizer
    per_window: list[list[TimedTokens]] = []
    ctx.info.windows += len(chunks)
    ctx.info.fallbacks += sum(1 for d in decoded if d.temperature > 0)
    for chunk, result in zip(chunks, decoded, strict=True):
        window_ms = samples_to_ms(len(chunk.samples))
        if result.is_silence(ctx.options):
            per_window.append([])
            ctx.consumed_ms = window_ms
            continue
        timed, ctx.consumed_ms = split_timestamps(result.generation.tokens, tokenizer, window_ms, keep_tail)
        speech = _speech_frames(chunk)
        per_window.append([t for t in timed if _overlaps_speech(speech, t)])
    words = _words(ctx, chunks, features, per_window) if ctx.options.word_timestamps else None
    for w, (chunk, result, timed) in enumerate(zip(chunks, decoded, per_window, strict=True)):
        offset_ms = samples_to_ms(chunk.start)
        logprobs = _logprobs(ctx, result) if ctx.options.token_logprobs else []
        for s, piece in enumerate(timed):
            segment = Segment(
                id=ctx.next_id,
                seek=chunk.start // HOP_LENGTH,
                start_ms=offset_ms + piece.start_ms,
                end_ms=offset_ms + piece.end_ms,
                text=tokenizer.decode(list(piece.text_tokens)),
                tokens=piece.tokens,
                temperature=result.temperature,
                avg_logprob=result.avg_logprob,
                compression_ratio=result.compression_ratio,
                no_speech_prob=result.generation.no_speech_prob or 0.0,  # None only where no format shows it
                words=tuple(words[w][s]) if words else (),
                logprobs=tuple(logprobs[piece.text_offset : piece.text_offset + len(piece.text_tokens)]),
            )
            ctx.next_id += 1
            yield segment


def _logprobs(ctx: _Context, result: Decoded) -> list[TokenLogprob]:
    """Log-probabilities of the window's text tokens, in order."""
    tokenizer = ctx.engine.tokenizer
    values = result.generation.token_logprobs or ()
    out = []
    for token, logprob in zip(result.generation.tokens, values, strict=False):
        if token < tokenizer.eot:
            text = tokenizer.decode([token])
            out.append(TokenLogprob(text, round(logprob, 6), tuple(text.encode("utf-8"))))
    return out


def _words(
    ctx: _Context,
    chunks: Sequence[AudioChunk],
    features: Sequence[np.ndarray | None],
    timed: Sequence[list[TimedTokens]],
) -> list[list[list[Word]]]:
    items, which = [], []
    for i, (chunk, pieces) in enumerate(zip(chunks, timed, strict=True)):
        text = tuple(t for p in pieces for t in p.text_tokens)
        if text:
            n_frames = min(len(chunk.samples) // HOP_LENGTH, WINDOW_SAMPLES // HOP_LENGTH)
            items.append(AlignInput(features[i], _sot(ctx), text, n_frames))
            which.append(i)
    alignments = dict(zip(which, ctx.engine.align(items), strict=True))
    out: list[list[list[Word]]] = []
    for i, (chunk, pieces) in enumerate(zip(chunks, timed, strict=True)):
        if i not in alignments:
            out.append([[] for _ in pieces])
            continue
        offset = samples_to_ms(chunk.start)
        spans = [SegmentSpan(p.text_tokens, offset + p.start_ms, offset + p.end_ms) for p in pieces]
        language = ctx.info.language or "en"
        out.append(list(words_for_window(ctx.engine.tokenizer, language, alignments[i], spans, offset)))
    return out


def _speech_frames(chunk: AudioChunk) -> np.ndarray:
    """Per VAD frame of the chunk, whether it holds speech; the chunker's probabilities where it kept them."""
    if chunk.speech_probs is not None:
        probs = chunk.speech_probs
    else:
        probs = VadStream().feed(as_float32(chunk.samples), final=True)
    return probs >= SPEECH_PROB


def _overlaps_speech(speech: np.ndarray, piece: TimedTokens) -> bool:
    """False for a segment over pure silence: Whisper hallucinates text there."""
    ms_per_frame = FRAME_SAMPLES * 1000 // SAMPLE_RATE
    first = piece.start_ms // ms_per_frame
    last = max(first + 1, -(-piece.end_ms // ms_per_frame))
    return bool(speech[first:last].any())
