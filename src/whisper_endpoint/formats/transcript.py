"""The result model: frozen dataclasses with times as integer milliseconds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Word:
    word: str
    start_ms: int
    end_ms: int
    probability: float


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]


@dataclass(frozen=True)
class Segment:
    id: int
    seek: int  # mel frame (10 ms) where the window that produced it starts, as openai/whisper reports
    start_ms: int
    end_ms: int
    text: str
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: tuple[Word, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Transcript:
    task: str  # "transcribe" or "translate"
    language: str  # Whisper code, e.g. "en"
    duration_ms: int
    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        # The same text as the stream's deltas joined (api.routes): trailing spaces of a segment never count.
        return "".join(s.text.rstrip() for s in self.segments).strip()

    @property
    def words(self) -> tuple[Word, ...]:
        return tuple(w for s in self.segments for w in s.words)


@dataclass(frozen=True)
class SpeakerSegment:
    """A stretch of one speaker's words within one of Whisper's segments (diarized output)."""

    start_ms: int
    end_ms: int
    text: str
    speaker: str
