"""Who spoke when: speech found by the VAD, embedded every 0.4 s, the embeddings clustered into speakers.

Audio streams through in blocks (memory: the embeddings, 1 KiB per 0.4 s of speech, and a 10 ms speech mask).
Each 1.6 s slice of speech gets one embedding; slices are grouped by average-linkage clustering of their cosine
similarities, stopping when no two groups are alike enough to be one voice. Every 10 ms of speech then takes the
speaker of the nearest slice, and a speaker's turns are joined across short pauses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.features import HOP_LENGTH, N_FFT
from whisper_endpoint.audio.vad import FRAME_SAMPLES as VAD_FRAME_SAMPLES
from whisper_endpoint.audio.vad import VadStream
from whisper_endpoint.diarization.encoder import (
    EMBEDDING_SIZE,
    N_MELS,
    SLICE_FRAMES,
    VoiceEncoder,
    frame_power,
    loudness_gain,
    mel_power,
)

FRAME_MS = 1000 * HOP_LENGTH // SAMPLE_RATE  # 10 ms: the resolution of turns
SLICE_HOP_FRAMES = 40  # a slice every 0.4 s
MIN_LAST_SLICE = SLICE_FRAMES * 3 // 4  # the audio's last, shorter slice is embedded if at least this long
MIN_SPEECH_IN_SLICE = 0.5  # a slice with less speech than this is not embedded
SPEECH_THRESHOLD = 0.5  # VAD probability
EMBED_BATCH = 64  # slices per encoder call
MAX_CLUSTERED_SLICES = 1200  # more are subsampled for clustering, then each goes to its nearest speaker
SAME_SPEAKER_SIMILARITY = 0.6  # clusters whose average cosine similarity is below this are different voices
MIN_SPEAKER_SLICES = 3  # a voice heard in fewer slices (1.2 s of speech) is folded into the nearest other
JOIN_PAUSE_MS = 600  # one speaker's turns closer than this are one turn
MIN_TURN_MS = 200


@dataclass(frozen=True)
class SpeakerTurn:
    start_ms: int
    end_ms: int
    speaker: int  # cluster index, in order of first appearance


@dataclass(frozen=True)
class SpeechEmbeddings:
    """Slices of speech and the 10 ms speech mask of a whole recording."""

    centers: np.ndarray  # [n] mel frame at the middle of each slice
    embeddings: np.ndarray  # [n, 256]
    speech: np.ndarray  # [frames] bool


class _Slicer:
    """Streaming front end: 10 ms frames (40 mel bands and the frame's power) and the VAD's speech mask, cut
    into 1.6 s slices every 0.4 s; frames are kept only until the last slice that needs them is cut."""

    def __init__(self) -> None:
        self.vad = VadStream()
        self.probs: list[np.ndarray] = []
        self.tail = np.zeros(N_FFT // 2, np.float32)  # frame i is centred on sample 160 i, as the encoder's
        self.frames = np.zeros((0, N_MELS + 1), np.float32)  # from frame `first` on
        self.first = 0
        self.n_frames = 0
        self.speech = np.zeros(0, bool)

    def feed(self, samples: np.ndarray, final: bool) -> None:
        self.probs.append(self.vad.feed(samples, final=final))
        if final:
            samples = np.zeros(N_FFT // 2, np.float32)  # the last frames are centred on the last samples too
        buffer = np.concatenate([self.tail, samples])
        count = max(0, (len(buffer) - N_FFT) // HOP_LENGTH + 1)
        if count:
            used = buffer[: (count - 1) * HOP_LENGTH + N_FFT]
            new = np.column_stack([mel_power(used, centered=False), frame_power(used)]).astype(np.float32)
            self.frames = np.concatenate([self.frames, new])
            self.tail = buffer[count * HOP_LENGTH :]
            self.n_frames += count
        self.probs = [np.concatenate(self.probs)]
        self.speech = _speech_mask(self.probs[0], self.n_frames)

    def slices(self, final: bool) -> Iterator[tuple[int, np.ndarray]]:
        """(centre frame, mel slice at training loudness) for each slice now complete and mostly speech."""
        start = self.first
        while start + SLICE_FRAMES <= self.n_frames or (final and start < self.n_frames):
            frames = self.frames[start - self.first : start - self.first + SLICE_FRAMES]
            voiced = self.speech[start : start + len(frames)]
            long_enough = len(frames) >= MIN_LAST_SLICE or start == 0
            if long_enough and voiced.mean() >= MIN_SPEECH_IN_SLICE:
                mel = frames[:, :N_MELS] * loudness_gain(float(frames[voiced, N_MELS].mean()))
                yield start + SLICE_FRAMES // 2, np.pad(mel, ((0, SLICE_FRAMES - len(mel)), (0, 0)))
            start += SLICE_HOP_FRAMES
        self.frames = self.frames[start - self.first :]
        self.first = start


def embed_speech(blocks: Iterable[np.ndarray], encoder: VoiceEncoder) -> SpeechEmbeddings:
    """Stream 16 kHz blocks through the VAD and the mel front end; embed each slice that is mostly speech,
    brought to the encoder's training loudness by the power of its speech frames."""
    slicer = _Slicer()
    centers: list[int] = []
    embeddings: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    for block, final in _with_end(blocks):
        slicer.feed(block, final)
        for center, mel in slicer.slices(final):
            centers.append(center)
            pending.append(mel)
            if len(pending) == EMBED_BATCH:
                embeddings.append(encoder.embed_mels(np.stack(pending)))
                pending.clear()
    if pending:
        embeddings.append(encoder.embed_mels(np.stack(pending)))
    return SpeechEmbeddings(
        np.array(centers, np.int64),
        np.concatenate(embeddings) if embeddings else np.zeros((0, EMBEDDING_SIZE), np.float32),
        slicer.speech,
    )


def _with_end(blocks: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, bool]]:
    for block in blocks:
        yield block, False
    yield np.zeros(0, np.float32), True


def _speech_mask(probs: np.ndarray, n_frames: int) -> np.ndarray:
    """The VAD's 32 ms decisions as 10 ms mel frames."""
    frame_starts = np.arange(n_frames) * HOP_LENGTH
    index = np.minimum(frame_starts // VAD_FRAME_SAMPLES, max(len(probs) - 1, 0))
    if len(probs) == 0:
        return np.zeros(n_frames, bool)
    result: np.ndarray = probs[index] >= SPEECH_THRESHOLD
    return result


def cluster(embeddings: np.ndarray, threshold: float = SAME_SPEAKER_SIMILARITY) -> np.ndarray:
    """Average-linkage agglomerative clustering on cosine similarity: a label per row, 0 for the first voice."""
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, np.int64)
    if n > MAX_CLUSTERED_SLICES:
        sample = np.linspace(0, n - 1, MAX_CLUSTERED_SLICES).astype(np.int64)
        labels = cluster(embeddings[sample], threshold)
        centroids = np.stack([embeddings[sample][labels == k].mean(axis=0) for k in range(labels.max() + 1)])
        return _first_appearance_order(np.argmax(embeddings @ centroids.T, axis=1))
    similarity = (embeddings @ embeddings.T).astype(np.float64)
    sizes = np.ones(n)
    members = np.arange(n)
    alive = np.ones(n, bool)
    np.fill_diagonal(similarity, -np.inf)
    while alive.sum() > 1:
        flat = int(np.argmax(similarity))
        a, b = divmod(flat, n)
        if similarity[a, b] < threshold:
            break
        # Average linkage: the merged group's similarity to each other is the size-weighted mean of the two.
        merged = (similarity[a] * sizes[a] + similarity[b] * sizes[b]) / (sizes[a] + sizes[b])
        similarity[a, :] = merged
        similarity[:, a] = merged
        similarity[a, a] = -np.inf
        similarity[b, :] = -np.inf
        similarity[:, b] = -np.inf
        sizes[a] += sizes[b]
        alive[b] = False
        members[members == b] = a
    return _first_appearance_order(_absorb_small(embeddings, members))


def _absorb_small(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A cluster of fewer than MIN_SPEAKER_SLICES slices (a cough, a slice across a change of speaker) joins the
    larger cluster whose centroid is nearest, when there is one."""
    ids, counts = np.unique(labels, return_counts=True)
    large = ids[counts >= MIN_SPEAKER_SLICES]
    if len(large) == 0 or len(large) == len(ids):
        return labels
    centroids = np.stack([embeddings[labels == k].mean(axis=0) for k in large])
    small = ~np.isin(labels, large)
    result = labels.copy()
    result[small] = large[np.argmax(embeddings[small] @ centroids.T, axis=1)]
    return result


def _first_appearance_order(labels: np.ndarray) -> np.ndarray:
    _, first = np.unique(labels, return_index=True)
    order = labels[np.sort(first)]
    remap = {int(old): new for new, old in enumerate(order)}
    return np.array([remap[int(x)] for x in labels], np.int64)


def speaker_turns(speech: SpeechEmbeddings, labels: np.ndarray) -> list[SpeakerTurn]:
    """Every speech frame takes the label of the nearest embedded slice; runs become turns, a speaker's turns
    closer than JOIN_PAUSE_MS are joined, and turns shorter than MIN_TURN_MS are dropped."""
    frames = np.flatnonzero(speech.speech)
    if len(frames) == 0 or len(labels) == 0:
        return []
    nearest = np.clip(np.searchsorted(speech.centers, frames), 1, len(speech.centers) - 1)
    left = speech.centers[nearest - 1]
    right = speech.centers[np.minimum(nearest, len(speech.centers) - 1)]
    pick = np.where(np.abs(frames - left) <= np.abs(right - frames), nearest - 1, nearest)
    if len(speech.centers) == 1:
        pick = np.zeros(len(frames), np.int64)
    frame_labels = labels[pick]
    turns: list[SpeakerTurn] = []
    run_start = 0
    for i in range(1, len(frames) + 1):
        if i == len(frames) or frames[i] != frames[i - 1] + 1 or frame_labels[i] != frame_labels[run_start]:
            start_ms, end_ms = int(frames[run_start]) * FRAME_MS, (int(frames[i - 1]) + 1) * FRAME_MS
            speaker = int(frame_labels[run_start])
            if turns and turns[-1].speaker == speaker and start_ms - turns[-1].end_ms < JOIN_PAUSE_MS:
                turns[-1] = SpeakerTurn(turns[-1].start_ms, end_ms, speaker)
            else:
                turns.append(SpeakerTurn(start_ms, end_ms, speaker))
            run_start = i
    return [t for t in turns if t.end_ms - t.start_ms >= MIN_TURN_MS]
