"""Render a Transcript as text, json, verbose_json, srt or vtt, exactly as OpenAI's API does."""

from __future__ import annotations

import math
from typing import Any

from whisper_endpoint.decoding.languages import LANGUAGES
from whisper_endpoint.formats.transcript import Segment, SpeakerSegment, Transcript, Word

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "diarized_json")  # the last: transcriptions


def format_timestamp(ms: int, decimal: str = ",", always_hours: bool = True) -> str:
    """00:00:01,001 for 1001 ms (srt); vtt uses '.' as the decimal marker."""
    hours, rest = divmod(max(0, ms), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{seconds:02d}{decimal}{millis:03d}"


AUDIO_TOKENS_PER_S = 50  # Whisper's encoder: 1,500 positions per 30 s window
STREAM_SPEAKER = "A"  # the stream's segment events need a speaker; without diarization every segment is "A"


def usage(transcript: Transcript) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(transcript.duration_ms / 1000)}


def usage_tokens(transcript: Transcript, prompt_tokens: int) -> dict[str, Any]:
    """The stream's `transcript.text.done` usage, in tokens as OpenAI's spec requires there: the audio as the
    encoder positions it fills, the prompt's text tokens, and every token the decoder produced."""
    audio = math.ceil(transcript.duration_ms * AUDIO_TOKENS_PER_S / 1000)
    output = sum(len(s.tokens) for s in transcript.segments)
    return {
        "type": "tokens",
        "input_tokens": audio + prompt_tokens,
        "input_token_details": {"text_tokens": prompt_tokens, "audio_tokens": audio},
        "output_tokens": output,
        "total_tokens": audio + prompt_tokens + output,
    }


def languages(transcript: Transcript) -> list[dict[str, str]]:
    return [{"code": transcript.language}]


def _cue(text: str) -> str:
    """A cue's text: never an arrow that would read as a new cue's timing line, never a blank line."""
    return " ".join(text.replace("-->", "->").split())


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_text(transcript: Transcript) -> str:
    return transcript.text + "\n"


def _cues(transcript: Transcript, speakers: list[SpeakerSegment] | None) -> list[tuple[int, int, str, str | None]]:
    if speakers is None:
        return [(s.start_ms, s.end_ms, s.text, None) for s in transcript.segments]
    return [(s.start_ms, s.end_ms, s.text, s.speaker) for s in speakers]


def render_srt(transcript: Transcript, speakers: list[SpeakerSegment] | None = None) -> str:
    """SubRip cues; with speakers, one cue per speaker's stretch, its text after `NAME: `."""
    blocks = []
    for index, (start_ms, end_ms, text, speaker) in enumerate(_cues(transcript, speakers), start=1):
        start, end = format_timestamp(start_ms), format_timestamp(end_ms)
        prefix = f"{_cue(speaker)}: " if speaker else ""
        blocks.append(f"{index}\n{start} --> {end}\n{prefix}{_cue(text)}\n")
    return "\n".join(blocks) + ("\n" if blocks else "")


def render_vtt(transcript: Transcript, speakers: list[SpeakerSegment] | None = None) -> str:
    """WebVTT cues; with speakers, each cue's text in a voice span (`<v NAME>`), as WebVTT marks speakers."""
    blocks = ["WEBVTT\n"]
    for start_ms, end_ms, text, speaker in _cues(transcript, speakers):
        start = format_timestamp(start_ms, ".")
        end = format_timestamp(end_ms, ".")
        voice = f"<v {_vtt_escape(_cue(speaker))}>" if speaker else ""
        blocks.append(f"{start} --> {end}\n{voice}{_vtt_escape(_cue(text))}\n")
    return "\n".join(blocks) + "\n"


def render_json(transcript: Transcript, include_logprobs: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"text": transcript.text}
    if transcript.task == "transcribe":
        body["languages"] = languages(transcript)
    if include_logprobs:
        body["logprobs"] = [
            {"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.bytes)}
            for segment in transcript.segments
            for lp in segment.logprobs
        ]
    body["usage"] = usage(transcript)
    return body


def _seconds(ms: int) -> float:
    return round(ms / 1000, 3)


def segment_json(segment: Segment) -> dict[str, Any]:
    return {
        "id": segment.id,
        "seek": segment.seek,
        "start": _seconds(segment.start_ms),
        "end": _seconds(segment.end_ms),
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
    }


def word_json(word: Word) -> dict[str, Any]:
    return {"word": word.word.strip(), "start": _seconds(word.start_ms), "end": _seconds(word.end_ms)}


def render_verbose_json(
    transcript: Transcript, segments: bool = True, words: bool = False, speakers: list[str] | None = None
) -> dict[str, Any]:
    """OpenAI's shape: `words` only when asked; `["word"]` alone leaves out `segments`. `speakers`: one per
    segment, added to each as `speaker` (diarization asked for)."""
    body: dict[str, Any] = {
        "task": transcript.task,
        # A translation's text is English, and the spec says its language is.
        "language": "english"
        if transcript.task == "translate"
        else LANGUAGES.get(transcript.language, transcript.language),
        "duration": _seconds(transcript.duration_ms),
        "text": transcript.text,
    }
    if words:
        body["words"] = [word_json(w) for w in transcript.words]
    if segments:
        body["segments"] = [segment_json(s) for s in transcript.segments]
        for segment, speaker in zip(body["segments"], speakers or [], strict=False):
            segment["speaker"] = speaker
    if transcript.task == "transcribe":
        body["languages"] = languages(transcript)
    body["usage"] = usage(transcript)
    return body


def speaker_segment_json(index: int, segment: SpeakerSegment) -> dict[str, Any]:
    """OpenAI's `transcript.text.segment`: a diarized_json segment, and the stream's event of the same shape."""
    return {
        "type": "transcript.text.segment",
        "id": f"seg_{index}",
        "start": _seconds(segment.start_ms),
        "end": _seconds(segment.end_ms),
        "text": segment.text,
        "speaker": segment.speaker,
    }


def render_diarized_json(transcript: Transcript, speakers: list[SpeakerSegment]) -> dict[str, Any]:
    """OpenAI's TranscriptionDiarized: the text, and the segments with speaker labels."""
    return {
        "task": "transcribe",
        "duration": _seconds(transcript.duration_ms),
        "text": transcript.text,
        "segments": [speaker_segment_json(i, s) for i, s in enumerate(speakers)],
        "usage": usage(transcript),
    }


def render_format(
    transcript: Transcript,
    fmt: str,
    *,
    segments: bool = True,
    words: bool = False,
    include_logprobs: bool = False,
    stretches: list[SpeakerSegment] | None = None,
    segment_speakers: list[str] | None = None,
) -> dict[str, Any] | str:
    """The transcript in `fmt`: a JSON body for the json formats, text for the others. With speakers asked
    for, `stretches` (cut where the speaker changes) and `segment_speakers` (one per segment)."""
    if fmt == "text":
        return render_text(transcript)
    if fmt == "srt":
        return render_srt(transcript, stretches)
    if fmt == "vtt":
        return render_vtt(transcript, stretches)
    if fmt == "diarized_json":
        return render_diarized_json(transcript, stretches or [])
    if fmt == "verbose_json":
        return render_verbose_json(transcript, segments=segments, words=words, speakers=segment_speakers)
    return render_json(transcript, include_logprobs=include_logprobs)
