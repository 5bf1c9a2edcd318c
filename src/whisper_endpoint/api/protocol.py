"""Request parsing and validation for the audio routes: OpenAI's form fields to DecodeOptions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from starlette.datastructures import FormData

from whisper_endpoint.decoding.languages import normalize_language
from whisper_endpoint.decoding.options import DEFAULT_TEMPERATURES, DecodeOptions, Strategy, Task, with_keywords
from whisper_endpoint.errors import InvalidRequestError
from whisper_endpoint.formats.render import RESPONSE_FORMATS

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt", "diarized_json"]
Granularity = Literal["segment", "word"]


@dataclass(frozen=True)
class AudioRequest:
    options: DecodeOptions
    response_format: ResponseFormat
    granularities: frozenset[str]
    include_logprobs: bool
    stream: bool
    diarize: bool  # speakers asked for: diarized_json, known speakers, or our `diarize` field


def _temperatures(value: float | None) -> tuple[float, ...]:
    # OpenAI: 0 (the default) lets the server raise the temperature by log-probability thresholds.
    if value is None or value == 0:
        return DEFAULT_TEMPERATURES
    if not 0 <= value <= 1:
        raise InvalidRequestError("temperature must be between 0 and 1", param="temperature")
    return (value, *(t for t in DEFAULT_TEMPERATURES if t > value))


def _chunking(form: FormData, value: str | None, default: Strategy) -> Strategy:
    """`auto`, a `server_vad` object (JSON, or the SDK's flattened chunking_strategy[type]), or none."""
    if value is None and "chunking_strategy[type]" in form:
        value = json.dumps({"type": form["chunking_strategy[type]"]})
    if value is None or value == "":
        return default
    if value == "auto":
        return "batched"
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict) or parsed.get("type") != "server_vad":
        raise InvalidRequestError(
            "chunking_strategy must be 'auto' or an object with type 'server_vad'", param="chunking_strategy"
        )
    return "batched"


def _language(value: str, param: str) -> str:
    code = normalize_language(value)
    if code is None:
        raise InvalidRequestError(f"unsupported language {value[:64]!r}; use an ISO-639-1 code", param=param)
    return code


def parse_audio_request(
    form: FormData,
    *,
    task: Task,
    default_strategy: Strategy,
    prompt: str | None,
    response_format: str | None,
    temperature: float | None,
    # Transcription-only fields; translations have none of them.
    language: str | None = None,
    granularities: list[str] | None = None,
    include: list[str] | None = None,
    stream: bool | None = None,
    chunking_strategy: str | None = None,
    languages: list[str] | None = None,
    keywords: list[str] | None = None,
    diarize: bool | None = None,
    known_speakers: bool = False,
) -> AudioRequest:
    fmt = response_format or "json"
    formats = RESPONSE_FORMATS if task == "transcribe" else RESPONSE_FORMATS[:-1]  # no speakers in translations
    if fmt not in formats:
        raise InvalidRequestError(f"response_format must be one of {', '.join(formats)}", param="response_format")
    speakers = fmt == "diarized_json" or known_speakers or bool(diarize)
    code = _language(language, "language") if language else None
    candidates = tuple(_language(code, "languages[]") for code in languages or [])
    grains = frozenset(granularities or ["segment"])
    unknown = grains - {"segment", "word"}
    if unknown:
        raise InvalidRequestError(
            "timestamp_granularities[] takes 'segment' and/or 'word'", param="timestamp_granularities[]"
        )
    # OpenAI accepts `segment` (the default) with any format; words need verbose_json to appear in.
    if "word" in grains and fmt != "verbose_json":
        raise InvalidRequestError(
            "timestamp_granularities[]=word requires response_format=verbose_json", param="timestamp_granularities[]"
        )
    includes = frozenset(include or [])
    if includes - {"logprobs"}:
        raise InvalidRequestError("include[] only takes 'logprobs'", param="include[]")
    if "logprobs" in includes and fmt != "json":
        raise InvalidRequestError("include[]=logprobs requires response_format=json", param="include[]")
    options = DecodeOptions(
        task=task,
        language=code,
        languages=candidates,
        prompt=with_keywords(prompt, keywords),
        temperatures=_temperatures(temperature),
        word_timestamps="word" in grains or speakers,  # words go to speakers by their timestamps
        token_logprobs="logprobs" in includes,
        strategy=_chunking(form, chunking_strategy, default_strategy),
        report_no_speech_prob=fmt == "verbose_json",
    )
    return AudioRequest(options, fmt, grains, "logprobs" in includes, bool(stream), speakers)  # type: ignore[arg-type]
