"""Diarize one recording: speaker turns with names, from its audio and optional known speakers' references."""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from whisper_endpoint.diarization.attribution import NamedTurn
from whisper_endpoint.diarization.encoder import VoiceEncoder
from whisper_endpoint.diarization.speakers import (
    SAME_SPEAKER_SIMILARITY,
    cluster,
    embed_speech,
    speaker_turns,
)

MAX_KNOWN_SPEAKERS = 4  # OpenAI's limit for known_speaker_names[]
KNOWN_SIMILARITY = 0.5  # a cluster and a reference less alike than this are not paired


@dataclass(frozen=True)
class KnownSpeaker:
    name: str
    samples: np.ndarray  # 16 kHz mono float32, 2-10 s


@dataclass(frozen=True)
class Diarization:
    turns: tuple[NamedTurn, ...]
    speakers: tuple[str, ...]  # in order of first appearance


def letters(count: int) -> list[str]:
    """OpenAI's labels for unnamed speakers: A, B, ..., Z, AA, AB, ..."""
    labels = []
    for index in range(count):
        label = ""
        index += 1
        while index:
            index, rest = divmod(index - 1, 26)
            label = string.ascii_uppercase[rest] + label
        labels.append(label)
    return labels


class Diarizer:
    def __init__(self, encoder: VoiceEncoder) -> None:
        self.encoder = encoder

    def voiceprint(self, samples: np.ndarray) -> np.ndarray:
        """One unit-length embedding for a speaker's reference: the mean of its slices' embeddings."""
        embedded = embed_speech([samples], self.encoder)
        if len(embedded.embeddings) == 0:
            return np.zeros(embedded.embeddings.shape[1], np.float32)
        mean = embedded.embeddings.mean(axis=0)
        result: np.ndarray = mean / max(float(np.linalg.norm(mean)), 1e-12)
        return result

    def diarize(self, blocks: Iterable[np.ndarray], known: tuple[KnownSpeaker, ...] = ()) -> Diarization:
        embedded = embed_speech(blocks, self.encoder)
        labels = cluster(embedded.embeddings)
        if len(labels) == 0:
            return Diarization((), ())
        if known:
            names = self._known_names(embedded.embeddings, labels, known)
        else:
            label_of = letters(int(labels.max()) + 1)
            names = [label_of[k] for k in labels]
        speakers = list(dict.fromkeys(names))
        slice_speakers = np.array([speakers.index(name) for name in names], np.int64)
        turns = tuple(
            NamedTurn(t.start_ms, t.end_ms, speakers[t.speaker]) for t in speaker_turns(embedded, slice_speakers)
        )
        return Diarization(turns, tuple(dict.fromkeys(t.speaker for t in turns)))

    def _known_names(self, embeddings: np.ndarray, labels: np.ndarray, known: tuple[KnownSpeaker, ...]) -> list[str]:
        """A name per slice. Clusters and known speakers are paired one to one, most alike first (each pair at
        least KNOWN_SIMILARITY alike); a known speaker left without a cluster may have been merged into another
        voice's, so a slice moves to them when it resembles their reference more than its own cluster's (and
        as much as two slices of one voice do). Clusters left unnamed get letters."""
        prints = np.stack([self.voiceprint(k.samples) for k in known])
        n_clusters = int(labels.max()) + 1
        centroids = np.stack([embeddings[labels == k].mean(axis=0) for k in range(n_clusters)])
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        pairs = best_pairs(centroids @ prints.T, KNOWN_SIMILARITY)
        unpaired = [r for r in range(len(known)) if r not in pairs.values()]
        taken = {k.name for k in known}
        spare = iter(label for label in letters(n_clusters + len(known)) if label not in taken)
        cluster_names = [known[pairs[k]].name if k in pairs else next(spare) for k in range(n_clusters)]
        similarity = embeddings @ prints.T
        names = []
        for i, k in enumerate(labels):
            own = pairs.get(int(k))
            rival = max(unpaired, key=lambda r: similarity[i, r], default=None)
            if (
                rival is not None
                and similarity[i, rival] >= SAME_SPEAKER_SIMILARITY
                and (own is None or similarity[i, rival] > similarity[i, own])
            ):
                names.append(known[rival].name)
            else:
                names.append(cluster_names[k])
        return names


def best_pairs(similarity: np.ndarray, floor: float) -> dict[int, int]:
    """Row -> column pairs, each used once, of greatest total similarity, among pairs at least `floor` alike:
    a dynamic programme over the subsets of columns (known speakers: at most 4)."""
    n_rows, n_cols = similarity.shape
    best: dict[int, tuple[float, dict[int, int]]] = {0: (0.0, {})}
    for row in range(n_rows):
        for mask, (total, pairs) in list(best.items()):
            for col in range(n_cols):
                if mask >> col & 1 or similarity[row, col] < floor:
                    continue
                candidate = (total + float(similarity[row, col]), {**pairs, row: col})
                key = mask | 1 << col
                if key not in best or candidate[0] > best[key][0]:
                    best[key] = candidate
    return max(best.values(), key=lambda item: item[0])[1]
