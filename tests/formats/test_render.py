from __future__ import annotations

from pathlib import Path

from whisper_endpoint.formats.render import format_timestamp, render_srt, render_verbose_json, render_vtt
from whisper_endpoint.formats.transcript import Segment, Transcript, Word

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _segment(i: int, start: int, end: int, text: str, words: tuple[Word, ...] = ()) -> Segment:
    return Segment(i, 0, start, end, text, (50364,), 0.0, -0.2, 1.3, 0.01, words)


TRANSCRIPT = Transcript(
    "transcribe",
    "en",
    3_725_500,
    (
        _segment(0, 1001, 4_500, " And so my fellow Americans,", (Word(" And", 1001, 1400, 0.9),)),
        _segment(1, 4_500, 9_999, " ask not what your country can do for you."),
        _segment(2, 3_600_000, 3_725_499, " Late in the second hour."),
    ),
)


def test_timestamps_are_exact_milliseconds() -> None:
    assert format_timestamp(1001) == "00:00:01,001"
    assert format_timestamp(3_725_499, ".") == "01:02:05.499"


def test_srt_matches_golden() -> None:
    assert render_srt(TRANSCRIPT) == (GOLDEN / "transcript.srt").read_text()


def test_vtt_matches_golden() -> None:
    assert render_vtt(TRANSCRIPT) == (GOLDEN / "transcript.vtt").read_text()


def test_verbose_json_follows_openai_quirks() -> None:
    both = render_verbose_json(TRANSCRIPT, segments=True, words=True)
    assert both["language"] == "english" and both["duration"] == 3725.5
    assert both["usage"] == {"type": "duration", "seconds": 3726}
    assert both["words"] == [{"word": " And", "start": 1.001, "end": 1.4}]
    words_only = render_verbose_json(TRANSCRIPT, segments=False, words=True)
    assert "segments" not in words_only and "words" in words_only
    segments_only = render_verbose_json(TRANSCRIPT)
    assert "words" not in segments_only and len(segments_only["segments"]) == 3
