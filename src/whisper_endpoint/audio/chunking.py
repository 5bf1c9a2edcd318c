"""Cut a stream of audio into speech chunks of at most 30 s at silences, keeping absolute offsets.

Streaming: memory holds the chunk being built (<= 30 s) and one decoded block, never the whole file. Also
openai/whisper's moving 30 s window (`WindowReader`), for the sequential strategy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.features import HOP_LENGTH, WINDOW_SAMPLES
from whisper_endpoint.audio.vad import FRAME_SAMPLES, VadStream


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5  # speech probability that starts speech
    neg_threshold: float = 0.35  # below this, speech may be ending
    min_silence_ms: int = 160  # a pause this long ends a speech span
    min_speech_ms: int = 100  # shorter bursts (clicks) are dropped
    speech_pad_ms: int = 200  # context kept on both sides of speech
    split_silence_ms: int = 98  # shortest pause to split at when a span reaches the maximum
    max_chunk_samples: int = WINDOW_SAMPLES


PCM16_FULL_SCALE = 32768  # float samples in [-1, 1) as 16-bit integers


def compact_samples(samples: np.ndarray) -> np.ndarray:
    """Float samples as 16-bit PCM, in half the bytes: exact for audio decoded from a 16-bit source (FLAC, WAV,
    the usual upload), otherwise rounded to 16 bits as a 16-bit file would have been. Audio with a sample
    outside 16 bits' range stays float32 (clipping would change more than rounding)."""
    if samples.size and np.abs(samples).max() > (PCM16_FULL_SCALE - 1) / PCM16_FULL_SCALE:
        return samples
    pcm: np.ndarray = np.rint(samples * PCM16_FULL_SCALE).astype(np.int16)
    return pcm


def as_float32(samples: np.ndarray) -> np.ndarray:
    """Samples as float32, from either form."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / PCM16_FULL_SCALE
    return samples


@dataclass(frozen=True)
class AudioChunk:
    """Audio from `start` (absolute sample offset in the file) for len(samples) samples, and where
    known, the VAD's speech probability per FRAME_SAMPLES frame from `start` (so it is not run twice). The
    samples are float32, or 16-bit PCM (`compact_samples`) while a chunk whose log-mel is made waits for its decode."""

    start: int
    samples: np.ndarray
    speech_probs: np.ndarray | None = None

    @property
    def end(self) -> int:
        return self.start + len(self.samples)


@dataclass(frozen=True)
class Span:
    start: int
    end: int


class _Segmenter:
    """Silero's speech-timestamp state machine over frame probabilities, fed incrementally."""

    def __init__(self, options: VadOptions) -> None:
        self.o = options
        ms = SAMPLE_RATE // 1000
        self.min_silence = options.min_silence_ms * ms
        self.split_silence = options.split_silence_ms * ms
        self.min_speech = options.min_speech_ms * ms
        self.pad = options.speech_pad_ms * ms
        self.max_speech = options.max_chunk_samples - 2 * self.pad - FRAME_SAMPLES
        self.frame = 0
        self.start: int | None = None  # start of the open speech span
        self.temp_end = 0  # where the current pause began
        self.prev_end = 0  # the last pause long enough to split a too-long span at ...
        self.next_start = 0  # ... and where speech resumed after it

    def feed(self, probs: np.ndarray) -> list[Span]:
        closed: list[Span] = []
        for p in probs:
            pos = self.frame * FRAME_SAMPLES
            self.frame += 1
            if p >= self.o.threshold and self.temp_end:
                self.temp_end = 0
                if self.next_start < self.prev_end:
                    self.next_start = pos
            if p >= self.o.threshold and self.start is None:
                self.start = pos
                continue
            if self.start is None:
                continue
            if pos - self.start > self.max_speech:
                if self.prev_end:
                    closed.append(Span(self.start, self.prev_end))
                    self.start = None if self.next_start < self.prev_end else self.next_start
                else:
                    closed.append(Span(self.start, pos))
                    self.start = None
                self.prev_end = self.next_start = self.temp_end = 0
                continue
            if p < self.o.neg_threshold:
                if not self.temp_end:
                    self.temp_end = pos
                if pos - self.temp_end > self.split_silence:
                    self.prev_end = self.temp_end
                if pos - self.temp_end >= self.min_silence:
                    closed.append(Span(self.start, self.temp_end))
                    self.start = None
                    self.prev_end = self.next_start = self.temp_end = 0
        return [s for s in closed if s.end - s.start >= self.min_speech]

    def finish(self, total: int) -> list[Span]:
        if self.start is None:
            return []
        span = Span(self.start, total)
        self.start = None
        return [span] if span.end - span.start >= self.min_speech else []


class _Buffer:
    """The tail of the stream from absolute offset `base`."""

    def __init__(self) -> None:
        self.base = 0
        self.parts: list[np.ndarray] = []
        self.size = 0

    @property
    def end(self) -> int:
        return self.base + self.size

    def append(self, block: np.ndarray) -> None:
        self.parts.append(block)
        self.size += len(block)

    def slice(self, start: int, end: int) -> np.ndarray:
        joined = np.concatenate(self.parts) if len(self.parts) != 1 else self.parts[0]
        self.parts = [joined]
        return joined[max(0, start - self.base) : max(0, end - self.base)].copy()

    def drop_before(self, offset: int) -> None:
        cut = offset - self.base
        if cut <= 0:
            return
        joined = np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)
        self.parts = [joined[cut:]]
        self.size = len(self.parts[0])
        self.base = offset if cut <= len(joined) else self.base + len(joined)


class _FrameProbs:
    """VAD probabilities of the stream's frames from frame `base` on."""

    def __init__(self) -> None:
        self.base = 0
        self.probs = np.zeros(0, np.float32)
        self.pending: list[np.ndarray] = []

    def append(self, probs: np.ndarray) -> None:
        self.pending.append(probs)

    def _join(self) -> None:
        if self.pending:
            self.probs = np.concatenate([self.probs, *self.pending])
            self.pending = []

    def for_samples(self, start: int, n_samples: int) -> np.ndarray:
        """One probability per frame of the audio from sample `start` (frames rounded to the stream's grid)."""
        self._join()
        first = start // FRAME_SAMPLES - self.base
        n_frames = -(-n_samples // FRAME_SAMPLES)
        out = self.probs[max(0, first) : max(0, first + n_frames)]
        return np.pad(out, (0, n_frames - len(out)))  # frames past the end of the stream: silence

    def drop_before(self, sample: int) -> None:
        self._join()
        cut = sample // FRAME_SAMPLES - self.base
        if cut > 0:
            self.probs, self.base = self.probs[cut:], self.base + cut


def iter_speech_chunks(blocks: Iterator[np.ndarray], options: VadOptions | None = None) -> Iterator[AudioChunk]:
    """Speech chunks of at most `max_chunk_samples`, in order, each with its absolute start."""
    o = options or VadOptions()
    vad, segmenter, buffer, frames = VadStream(), _Segmenter(o), _Buffer(), _FrameProbs()
    pad = segmenter.pad
    pending: list[Span] = []  # padded spans of the chunk being built
    last_span: Span | None = None  # held back until we know the gap to the next one
    prev_end = 0

    def add(span: Span, next_start: int | None) -> Iterator[AudioChunk]:
        nonlocal prev_end
        start = max(span.start - pad, (prev_end + span.start) // 2 if prev_end else 0, prev_end)
        end = span.end + pad if next_start is None else min(span.end + pad, (span.end + next_start) // 2)
        end = min(end, buffer.end)
        prev_end = span.end
        if pending and end - pending[0].start > o.max_chunk_samples:
            yield chunk()
            pending.clear()
        pending.append(Span(start, end))

    def chunk() -> AudioChunk:
        first, last = pending[0].start, pending[-1].end
        return AudioChunk(first, buffer.slice(first, last), frames.for_samples(first, last - first))

    for block in blocks:
        buffer.append(block)
        probs = vad.feed(block)
        frames.append(probs)
        for span in segmenter.feed(probs):
            if last_span is not None:
                yield from add(last_span, span.start)
            last_span = span
        # Keep every sample a future chunk may still start at; drop the rest.
        keep = [buffer.end - pad - FRAME_SAMPLES]
        keep += [pending[0].start] if pending else []
        keep += [last_span.start - pad] if last_span else []
        keep += [segmenter.start - pad] if segmenter.start is not None else []
        buffer.drop_before(max(0, min(keep)))
        frames.drop_before(max(0, min(keep)))
    frames.append(vad.feed(np.zeros(0, np.float32), final=True))  # the padded last frame opens no span worth keeping
    final = segmenter.finish(buffer.end)
    for span in final:
        if last_span is not None:
            yield from add(last_span, span.start)
        last_span = span
    if last_span is not None:
        yield from add(last_span, None)
    if pending:
        yield chunk()


class WindowReader:
    """30 s windows at any seek position over a stream of blocks, holding at most one window plus a block."""

    def __init__(self, blocks: Iterator[np.ndarray]) -> None:
        self.blocks = blocks
        self.base = 0
        self.buffer = np.zeros(0, np.float32)
        self.exhausted = False

    def window(self, seek: int) -> AudioChunk | None:
        while not self.exhausted and self.base + len(self.buffer) < seek + WINDOW_SAMPLES:
            block = next(self.blocks, None)
            if block is None:
                self.exhausted = True
            else:
                self.buffer = np.concatenate([self.buffer, block])
        drop = max(0, seek - self.base)
        self.buffer, self.base = self.buffer[drop:], self.base + drop
        samples = self.buffer[:WINDOW_SAMPLES]
        # Whisper stops once less than one mel frame of audio is left.
        if len(samples) < HOP_LENGTH:
            return None
        return AudioChunk(self.base, samples.copy())
