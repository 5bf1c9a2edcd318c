from __future__ import annotations

from pathlib import Path

from whisper_endpoint.formats.render import (
    format_timestamp,
    render_json,
    render_srt,
    render_verbose_json,
    render_vtt,
    usage_tokens,
)
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
    assert both["words"] == [{"word": "And", "start": 1.001, "end": 1.4}]  # OpenAI's words have no leading space
    assert both["languages"] == [{"code": "en"}]
    words_only = render_verbose_json(TRANSCRIPT, segments=False, words=True)
    assert "segments" not in words_only and "words" in words_only
    segments_only = render_verbose_json(TRANSCRIPT)
    assert "words" not in segments_only and len(segments_only["segments"]) == 3


def test_translation_reports_english_and_no_detected_languages() -> None:
    german = Transcript("translate", "de", 1000, (_segment(0, 0, 1000, " Hello."),))
    verbose = render_verbose_json(german)
    assert verbose["language"] == "english" and "languages" not in verbose
    assert "languages" not in render_json(german)
    assert render_json(TRANSCRIPT)["languages"] == [{"code": "en"}]


def test_cue_text_cannot_forge_cues_or_markup() -> None:
    crafted = Transcript(
        "transcribe", "en", 2000, (_segment(0, 0, 2000, " a --> b\n\n99\n00:00:00,000 --> 00:00:09,000 <b>&</b>"),)
    )
    srt, vtt = render_srt(crafted), render_vtt(crafted)
    assert srt.count("-->") == 1 and vtt.count("-->") == 1  # only the cue's own timing line
    assert "\n\n99" not in srt  # no blank line inside a cue
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in vtt and "<b>" not in vtt


def test_stream_usage_counts_audio_prompt_and_output_tokens() -> None:
    used = usage_tokens(TRANSCRIPT, prompt_tokens=7)
    audio = 3726 * 50 - 25  # 3,725.5 s at 50 encoder positions a second
    assert used == {
        "type": "tokens",
        "input_tokens": audio + 7,
        "input_token_details": {"text_tokens": 7, "audio_tokens": audio},
        "output_tokens": 3,
        "total_tokens": audio + 7 + 3,
    }


def test_speakers_in_srt_vtt_verbose_json_and_diarized_json() -> None:
    from whisper_endpoint.formats.render import render_diarized_json
    from whisper_endpoint.formats.transcript import SpeakerSegment

    stretches = [
        SpeakerSegment(1001, 4_500, "And so my fellow Americans,", "A"),
        SpeakerSegment(4_500, 9_999, "ask not <what> --> you", "Ana"),
    ]
    srt = render_srt(TRANSCRIPT, stretches)
    assert srt.startswith("1\n00:00:01,001 --> 00:00:04,500\nA: And so my fellow Americans,\n\n2\n")
    assert "Ana: ask not <what> -> you" in srt
    vtt = render_vtt(TRANSCRIPT, stretches)
    assert "00:00:04.500 --> 00:00:09.999\n<v Ana>ask not &lt;what&gt; -&gt; you\n" in vtt
    verbose = render_verbose_json(TRANSCRIPT, speakers=["A", "Ana", "A"])
    assert [s["speaker"] for s in verbose["segments"]] == ["A", "Ana", "A"]
    assert "speaker" not in render_verbose_json(TRANSCRIPT)["segments"][0]
    body = render_diarized_json(TRANSCRIPT, stretches)
    assert body["task"] == "transcribe" and body["duration"] == 3725.5 and body["text"] == TRANSCRIPT.text
    assert body["segments"][1] == {
        "type": "transcript.text.segment",
        "id": "seg_1",
        "start": 4.5,
        "end": 9.999,
        "text": "ask not <what> --> you",
        "speaker": "Ana",
    }
    assert body["usage"] == {"type": "duration", "seconds": 3726}
