"""Words to speakers: each word goes to the speaker whose turns cover most of it, and a segment is split where
its words change speaker. Pure functions over the transcript and the turns."""

from __future__ import annotations

from dataclasses import dataclass

from whisper_endpoint.formats.transcript import Segment, SpeakerSegment, Transcript, Word


@dataclass(frozen=True)
class NamedTurn:
    start_ms: int
    end_ms: int
    speaker: str


def speaker_at(turns: list[NamedTurn], start_ms: int, end_ms: int) -> str | None:
    """The speaker whose turns overlap [start, end) most; else the nearest turn's; None without turns."""
    if not turns:
        return None
    overlaps: dict[str, int] = {}
    for turn in turns:
        overlap = min(end_ms, turn.end_ms) - max(start_ms, turn.start_ms)
        if overlap > 0:
            overlaps[turn.speaker] = overlaps.get(turn.speaker, 0) + overlap
    if overlaps:
        return max(overlaps, key=lambda speaker: overlaps[speaker])
    middle = (start_ms + end_ms) // 2
    nearest = min(turns, key=lambda t: max(t.start_ms - middle, middle - t.end_ms))
    return nearest.speaker


def _split(segment: Segment, turns: list[NamedTurn], fallback: str) -> list[SpeakerSegment]:
    if not segment.words:
        speaker = speaker_at(turns, segment.start_ms, segment.end_ms) or fallback
        return [SpeakerSegment(segment.start_ms, segment.end_ms, segment.text.strip(), speaker)]
    pieces: list[tuple[str, list[Word]]] = []
    for word in segment.words:
        speaker = speaker_at(turns, word.start_ms, word.end_ms) or fallback
        if pieces and pieces[-1][0] == speaker:
            pieces[-1][1].append(word)
        else:
            pieces.append((speaker, [word]))
    return [
        SpeakerSegment(words[0].start_ms, words[-1].end_ms, "".join(w.word for w in words).strip(), speaker)
        for speaker, words in pieces
    ]


@dataclass(frozen=True)
class Attribution:
    stretches: list[SpeakerSegment]  # every segment cut where its words change speaker (diarized_json, srt, vtt)
    segment_speakers: list[str]  # one speaker per Whisper segment, the one who says most of it (verbose_json)


def attribute(transcript: Transcript, turns: list[NamedTurn], fallback: str = "A") -> Attribution:
    """Words to speakers by their timestamps, in one pass over the segments; `fallback` where no one spoke."""
    stretches: list[SpeakerSegment] = []
    labels = []
    for segment in transcript.segments:
        pieces = _split(segment, turns, fallback)
        spoken: dict[str, int] = {}
        for piece in pieces:
            spoken[piece.speaker] = spoken.get(piece.speaker, 0) + max(1, piece.end_ms - piece.start_ms)
        labels.append(max(spoken, key=lambda s: spoken[s]) if spoken else fallback)
        stretches += [piece for piece in pieces if piece.text]
    return Attribution(stretches, labels)
