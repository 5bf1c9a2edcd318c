"""Live transcription's audio side: PCM in, turns out, and partial text that never takes a word back.

A live session receives little-endian 16-bit PCM (24 kHz as OpenAI's Realtime API sends, or 16 kHz), resamples
it to 16 kHz, scores each 32 ms frame with Silero VAD and cuts turns the way OpenAI's `server_vad` does: speech
starts where the probability first reaches the threshold (reported `prefix_padding_ms` earlier), and stops after
`silence_duration_ms` below it. While a turn is open its audio so far is decoded again at a bounded rate; a word
is sent only once two decodes in a row agree on it and on everything before it (local agreement, as
whisper_streaming does), so partial text only ever grows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import av
import numpy as np

from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.vad import FRAME_SAMPLES, VadStream

FRAME_MS = FRAME_SAMPLES * 1000 // SAMPLE_RATE  # 32
INPUT_RATES = (16_000, 24_000)  # Hz: OpenAI's pcm16 is 24 kHz mono; 16 kHz saves the resampling


@dataclass(frozen=True)
class TurnDetection:
    """OpenAI's `server_vad` settings (`None` in a session: the client commits turns itself)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


class PcmInput:
    """pcm16 bytes at `rate` to float32 samples at 16 kHz, streaming (FFmpeg's resampler keeps its state)."""

    def __init__(self, rate: int) -> None:
        if rate not in INPUT_RATES:
            raise ValueError(f"input audio rate {rate} Hz; this server takes {' or '.join(map(str, INPUT_RATES))}")
        self.rate = rate
        self._odd = b""  # a sample split across two appends
        self._resampler = (
            None if rate == SAMPLE_RATE else av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        )
        self._pts = 0

    def feed(self, data: bytes) -> np.ndarray:
        data, self._odd = self._odd + data, b""
        if len(data) % 2:
            data, self._odd = data[:-1], data[-1:]
        pcm = np.frombuffer(data, "<i2")
        if self._resampler is None or not len(pcm):
            return pcm.astype(np.float32) / 32768.0
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts = self.rate, self._pts
        self._pts += len(pcm)
        return _samples(self._resampler.resample(frame))


def _samples(frames: list[av.AudioFrame]) -> np.ndarray:
    if not frames:
        return np.zeros(0, np.float32)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32, copy=False)


@dataclass
class TurnEvent:
    kind: str  # "started" or "stopped"
    at_ms: int  # audio time of the session: the start with its padding, or the end of speech


@dataclass
class TurnDetector:
    """Speech starts and stops in a stream of 16 kHz samples, by Silero VAD's probability per 32 ms frame."""

    settings: TurnDetection
    vad: VadStream = field(default_factory=VadStream)
    frames: int = 0  # frames scored so far
    speaking: bool = False
    silent_frames: int = 0

    def feed(self, samples: np.ndarray) -> list[TurnEvent]:
        events = []
        needed = -(-self.settings.silence_duration_ms // FRAME_MS)  # whole frames of silence that end a turn
        for prob in self.vad.feed(samples):
            self.frames += 1
            if prob >= self.settings.threshold:
                self.silent_frames = 0
                if not self.speaking:
                    self.speaking = True
                    start = (self.frames - 1) * FRAME_MS - self.settings.prefix_padding_ms
                    events.append(TurnEvent("started", max(0, start)))
            elif self.speaking:
                self.silent_frames += 1
                if self.silent_frames >= needed:
                    self.speaking = False
                    events.append(TurnEvent("stopped", (self.frames - self.silent_frames) * FRAME_MS))
        return events


_WORD = re.compile(r"\S+\s*")


def words_of(text: str) -> list[str]:
    """Words with the spacing after each, so that joined they give the text back (leading spaces dropped)."""
    return _WORD.findall(text.lstrip())


def _same(a: str, b: str) -> bool:
    return a.strip().lower().strip(".,!?;:") == b.strip().lower().strip(".,!?;:")


@dataclass
class LocalAgreement:
    """Partial text of one turn: each new hypothesis (the turn so far, decoded again) sends the words it shares
    with the previous hypothesis beyond what was already sent. Sent words are never taken back."""

    sent: list[str] = field(default_factory=list)
    previous: list[str] = field(default_factory=list)

    def hypothesis(self, text: str) -> str:
        """The delta to send for this hypothesis (possibly empty)."""
        current = words_of(text)
        agreed = 0
        while agreed < min(len(current), len(self.previous)) and _same(current[agreed], self.previous[agreed]):
            agreed += 1
        self.previous = current
        if agreed <= len(self.sent) or not self._keeps_sent(current):
            return ""
        return self._send(current[len(self.sent) : agreed])

    def final(self, text: str) -> str:
        """The last delta of the turn: what the final text adds to what was sent, where it starts with it."""
        current = words_of(text)
        if len(current) < len(self.sent) or not self._keeps_sent(current):
            return ""  # the final text changed a sent word: the completed event carries it
        return self._send(current[len(self.sent) :])

    def _keeps_sent(self, current: list[str]) -> bool:
        return all(_same(a, b) for a, b in zip(self.sent, current, strict=False))

    def _send(self, new: list[str]) -> str:
        # Words one space apart: the deltas of a turn joined are its words joined by single spaces.
        delta = "".join((" " if self.sent or i else "") + word.strip() for i, word in enumerate(new))
        self.sent += new
        return delta
