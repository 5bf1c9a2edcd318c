"""Words to speakers by their timestamps, and segments split where the speaker changes."""

from __future__ import annotations

from whisper_endpoint.diarization.attribution import NamedTurn, attribute, speaker_at
from whisper_endpoint.formats.transcript import Segment, Transcript, Word


def _segment(index: int, words: list[tuple[str, int, int]], text: str | None = None) -> Segment:
    ws = tuple(Word(w, s, e, 0.9) for w, s, e in words)
    start = ws[0].start_ms if ws else 0
    end = ws[-1].end_ms if ws else 1000
    return Segment(index, 0, start, end, text if text is not None else "".join(w.word for w in ws), (), 0, 0, 1, 0, ws)


TURNS = [NamedTurn(0, 2000, "A"), NamedTurn(2100, 4000, "B"), NamedTurn(4500, 6000, "A")]


def test_a_segment_is_cut_where_its_words_change_speaker() -> None:
    segment = _segment(0, [(" Hello", 100, 500), (" there.", 600, 1900), (" Hi", 2000, 2600), (" you.", 2700, 3000)])
    pieces = attribute(Transcript("transcribe", "en", 6000, (segment,)), TURNS).stretches
    assert [(p.speaker, p.text, p.start_ms, p.end_ms) for p in pieces] == [
        ("A", "Hello there.", 100, 1900),
        ("B", "Hi you.", 2000, 3000),
    ]


def test_a_word_goes_to_the_speaker_covering_most_of_it() -> None:
    assert speaker_at(TURNS, 1800, 2500) == "B"  # 200 ms of A, 400 ms of B
    assert speaker_at(TURNS, 4100, 4300) == "B"  # in a gap: the nearest turn (B ends 100 ms before)
    assert speaker_at(TURNS, 4400, 4450) == "A"
    assert speaker_at([], 0, 100) is None


def test_segments_without_words_take_their_span_and_verbose_json_takes_the_majority() -> None:
    wordless = _segment(0, [], text=" No words here.")
    spoken = _segment(1, [(" One", 1500, 1900), (" two", 2200, 2500), (" three", 2600, 3900)])
    transcript = Transcript("transcribe", "en", 6000, (wordless, spoken))
    assert [(p.speaker, p.text) for p in attribute(transcript, TURNS).stretches] == [
        ("A", "No words here."),
        ("A", "One"),
        ("B", "two three"),
    ]
    assert attribute(transcript, TURNS).segment_speakers == ["A", "B"]
    assert attribute(transcript, []).segment_speakers == ["A", "A"]  # no one heard: the fallback label
