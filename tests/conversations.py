"""Conversations with known speakers, made from the shared corpus: LibriSpeech utterances of different readers
joined in turns, with pauses and, in some, 0.5 s of overlapped speech where one speaker starts before the other
ends. Each speaker also gets a reference cut from an utterance that no conversation uses (known speakers)."""

from __future__ import annotations

import random
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.datasets import Clip, clips

SAMPLE_RATE = 16_000
OVERLAP_S = 0.5
REFERENCE_S = 8.0  # known-speaker references must be 2-10 s
MAX_UTTERANCE_S = 14.0


@dataclass(frozen=True)
class Turn:
    speaker: str
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Conversation:
    name: str
    path: Path
    turns: tuple[Turn, ...]
    references: dict[str, Path]  # speaker -> a 2-10 s clip of them from an utterance not in `turns`

    @property
    def duration_s(self) -> float:
        return max(t.end_s for t in self.turns)


# (speakers, turns, overlapping) for each conversation; the speakers are picked by a seeded draw.
PLAN = ((2, 6, False), (2, 8, True), (3, 7, False), (3, 8, True), (4, 8, False), (4, 9, True))


def _speakers() -> dict[str, list[Clip]]:
    by_speaker: dict[str, list[Clip]] = {}
    for clip in clips("B_librispeech/test-clean/"):
        by_speaker.setdefault(clip.path.name.split("-")[0], []).append(clip)
    return {s: sorted(c, key=lambda c: c.path.name) for s, c in by_speaker.items() if len(c) >= 5}


def _load(path: Path) -> np.ndarray:
    from whisper_endpoint.audio.decode import AudioSource, load_audio

    return load_audio(AudioSource(path))


def _speech_span(samples: np.ndarray) -> tuple[int, int]:
    """Where an utterance's speech starts and ends (samples): its 10 ms frames within 35 dB of the loudest.
    LibriSpeech files hold up to half a second of silence at each end, which is no one's speech."""
    frame = SAMPLE_RATE // 100
    rms = np.sqrt(np.mean(samples[: len(samples) // frame * frame].reshape(-1, frame) ** 2, axis=1))
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (-35 / 20))
    return int(loud[0]) * frame, int(loud[-1] + 1) * frame


def _write(path: Path, samples: np.ndarray) -> None:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())


def build_conversations(folder: Path, seed: int = 7) -> list[Conversation]:
    """Six conversations (2, 3 and 4 speakers; half with overlaps), written as WAV files into `folder`."""
    rng = random.Random(seed)
    pool = _speakers()
    conversations = []
    for index, (n_speakers, n_turns, overlapping) in enumerate(PLAN):
        speakers = rng.sample(sorted(pool), n_speakers)
        utterances = {s: [c for c in pool[s] if c.duration_s <= MAX_UTTERANCE_S] for s in speakers}
        # The longest utterance of each speaker is kept out of the turns: its first seconds are the reference.
        held_out = {s: max(pool[s], key=lambda c: c.duration_s) for s in speakers}
        for s in speakers:
            utterances[s] = [c for c in utterances[s] if c != held_out[s]]
            rng.shuffle(utterances[s])
        audio = np.zeros(0, np.float32)
        turns = []
        for t in range(n_turns):
            speaker = (
                speakers[t % n_speakers]
                if t < n_speakers
                else rng.choice([s for s in speakers if s != turns[-1].speaker])
            )
            clip = utterances[speaker][t // n_speakers % len(utterances[speaker])]
            samples = _load(clip.path)
            if overlapping and t % 2 == 1:
                start = max(0, len(audio) - int(OVERLAP_S * SAMPLE_RATE))
            else:
                start = len(audio) + int(rng.uniform(0.3, 0.9) * SAMPLE_RATE)
            end = start + len(samples)
            if end > len(audio):
                audio = np.pad(audio, (0, end - len(audio)))
            audio[start:end] += samples
            head, tail = _speech_span(samples)
            turns.append(Turn(speaker, (start + head) / SAMPLE_RATE, (start + tail) / SAMPLE_RATE, clip.reference))
        name = f"conv{index + 1}-{n_speakers}spk{'-overlap' if overlapping else ''}"
        path = folder / f"{name}.wav"
        _write(path, np.pad(audio, (SAMPLE_RATE // 2, SAMPLE_RATE // 2)))
        shifted = tuple(Turn(t.speaker, t.start_s + 0.5, t.end_s + 0.5, t.text) for t in turns)
        references = {}
        for s in speakers:
            ref = folder / f"{name}-ref-{s}.wav"
            _write(ref, _load(held_out[s].path)[: int(REFERENCE_S * SAMPLE_RATE)])
            references[s] = ref
        conversations.append(Conversation(name, path, shifted, references))
    return conversations


@dataclass(frozen=True)
class Score:
    """Diarization error in seconds of scored reference speech (collars around reference boundaries excluded)."""

    speech_s: float
    missed_s: float
    false_alarm_s: float
    confusion_s: float

    @property
    def der(self) -> float:
        return (self.missed_s + self.false_alarm_s + self.confusion_s) / self.speech_s if self.speech_s else 0.0

    def __add__(self, other: Score) -> Score:
        return Score(
            self.speech_s + other.speech_s,
            self.missed_s + other.missed_s,
            self.false_alarm_s + other.false_alarm_s,
            self.confusion_s + other.confusion_s,
        )

    def percentages(self) -> dict[str, float]:
        """The error and its parts as percentages of the scored speech, as benchmark rows report them."""
        share = 100 / self.speech_s if self.speech_s else 0.0
        return {
            "der_pct": round(100 * self.der, 2),
            "missed_pct": round(share * self.missed_s, 2),
            "false_alarm_pct": round(share * self.false_alarm_s, 2),
            "confusion_pct": round(share * self.confusion_s, 2),
        }


NO_SCORE = Score(0.0, 0.0, 0.0, 0.0)


FRAME_S = 0.01
COLLAR_S = 0.25


def score(reference: tuple[Turn, ...], hypothesis: list[tuple[float, float, str]], collar_s: float = COLLAR_S) -> Score:
    """DER as NIST's md-eval scores it, on 10 ms frames: hypothesis speakers mapped one-to-one onto reference
    speakers to maximise agreement, overlapped reference speech counting once per speaker, and `collar_s` either
    side of every reference turn's start and end left out of the scoring."""
    end_s = max([t.end_s for t in reference] + [e for _, e, _ in hypothesis]) + 1
    n = int(end_s / FRAME_S)
    ref_speakers = sorted({t.speaker for t in reference})
    hyp_speakers = sorted({s for _, _, s in hypothesis})
    ref = np.zeros((len(ref_speakers), n), bool)
    hyp = np.zeros((len(hyp_speakers), n), bool)
    scored = np.ones(n, bool)
    for t in reference:
        ref[ref_speakers.index(t.speaker), int(t.start_s / FRAME_S) : int(t.end_s / FRAME_S)] = True
        for edge in (t.start_s, t.end_s):
            scored[max(0, int((edge - collar_s) / FRAME_S)) : int((edge + collar_s) / FRAME_S)] = False
    for start, end, speaker in hypothesis:
        hyp[hyp_speakers.index(speaker), int(start / FRAME_S) : int(end / FRAME_S)] = True
    ref, hyp = ref[:, scored], hyp[:, scored]
    agreement = (ref[:, None, :] & hyp[None, :, :]).sum(axis=2)  # [ref speaker, hyp speaker] frames
    best = _best_mapping(agreement)
    n_ref, n_hyp = ref.sum(axis=0), hyp.sum(axis=0)
    speech = int(n_ref.sum())
    missed = int(np.maximum(n_ref - n_hyp, 0).sum())
    false_alarm = int(np.maximum(n_hyp - n_ref, 0).sum())
    confusion = int(np.minimum(n_ref, n_hyp).sum()) - best
    return Score(speech * FRAME_S, missed * FRAME_S, false_alarm * FRAME_S, confusion * FRAME_S)


def _best_mapping(agreement: np.ndarray) -> int:
    """The most frames a one-to-one map of hypothesis onto reference speakers agrees on: a dynamic programme
    over the subsets of reference speakers (a few), one hypothesis speaker at a time."""
    n_ref = agreement.shape[0]
    best = np.full(1 << n_ref, -1, np.int64)
    best[0] = 0
    for column in agreement.T:
        for mask in range((1 << n_ref) - 1, -1, -1):  # descending: each hypothesis speaker used at most once
            if best[mask] < 0:
                continue
            for r in range(n_ref):
                if not mask >> r & 1:
                    best[mask | 1 << r] = max(best[mask | 1 << r], best[mask] + int(column[r]))
    return int(best.max())
